/*
 * _msgpack.h -- the msgpack reader and writer behind herdrt's compiled framing (_framing.pxi).
 *
 * The reader walks one frame body and builds the Python objects directly with the C API; the
 * writer packs Python objects into a growable byte buffer. Both are held to msgpack-python's own
 * behaviour: the reader to msgpack.unpackb(body, raw=False, strict_map_key=True) (same values, same
 * types, an error wherever unpackb raises), the writer to msgpack.packb(obj, use_bin_type=True)
 * (same bytes). The writer reports anything unusual as a failure (-1 with a Python exception set)
 * and its caller then lets msgpack.packb raise its own exact error.
 *
 * Every name here starts with hfr_ (herdrt framing): the header is compiled into the one _fast
 * module together with the other fragments of the core.
 */
#ifndef HERDRT_FRAMING_MSGPACK_H
#define HERDRT_FRAMING_MSGPACK_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define HFR_LIKELY(x) __builtin_expect(!!(x), 1)
#define HFR_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define HFR_LIKELY(x) (x)
#define HFR_UNLIKELY(x) (x)
#endif

/* msgpack's C unpacker keeps a stack of 1024 open containers: starting any container (even an
 * empty one) while 1024 are open is its StackError. Containers at depth 0..1023 are fine. */
#define HFR_MAX_DEPTH 1024
/* msgpack's Packer raises "recursion limit exceeded." for an object nested deeper than 1024. */
#define HFR_PACK_MAX_LEVEL 1024

/* ------------------------------------------------------------------------------------------- */
/* Big-endian loads and stores (compilers turn these shift patterns into one bswap).            */
/* ------------------------------------------------------------------------------------------- */

static inline uint16_t hfr_load16(const unsigned char *p) {
    return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}
static inline uint32_t hfr_load32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint64_t hfr_load64(const unsigned char *p) {
    return ((uint64_t)hfr_load32(p) << 32) | hfr_load32(p + 4);
}
static inline void hfr_store16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static inline void hfr_store32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void hfr_store64(unsigned char *p, uint64_t v) {
    hfr_store32(p, (uint32_t)(v >> 32));
    hfr_store32(p + 4, (uint32_t)v);
}

/* ------------------------------------------------------------------------------------------- */
/* Short-string cache: the map keys of an application's messages (a record's "client", "time" */
/* ...) repeat from message to message, so a key whose bytes match a cached entry reuses that */
/* str (and its cached hash) instead of decoding and allocating a new one. (Envelopes are      */
/* arrays since protocol 2; this pays off on dict bodies.) Direct-mapped, replace on miss.     */
/* ------------------------------------------------------------------------------------------- */

#define HFR_KC_SLOTS 256 /* power of two */
#define HFR_KC_MAXLEN 24

typedef struct {
    PyObject *str; /* owned reference, or NULL */
    uint32_t len;
    unsigned char bytes[HFR_KC_MAXLEN];
} hfr_kc_entry;

typedef struct {
    hfr_kc_entry e[HFR_KC_SLOTS];
} hfr_keycache;

static void hfr_kc_init(hfr_keycache *kc) { memset(kc, 0, sizeof(*kc)); }

static void hfr_kc_clear(hfr_keycache *kc) {
    for (int i = 0; i < HFR_KC_SLOTS; i++) Py_CLEAR(kc->e[i].str);
}

static inline PyObject *hfr_kc_str(hfr_keycache *kc, const unsigned char *p, uint32_t n) {
    if (n > HFR_KC_MAXLEN) return PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    uint32_t h = 2166136261u ^ n; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    hfr_kc_entry *e = &kc->e[(h ^ (h >> 16)) & (HFR_KC_SLOTS - 1)];
    if (e->str != NULL && e->len == n) {
        uint32_t i = 0; /* short: a plain loop beats a call to memcmp */
        while (i < n && e->bytes[i] == p[i]) i++;
        if (i == n) {
            Py_INCREF(e->str);
            return e->str;
        }
    }
    /* Strict UTF-8, exactly as unpackb(raw=False): invalid bytes are a UnicodeDecodeError. */
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    if (s == NULL) return NULL;
    Py_INCREF(s);
    Py_XSETREF(e->str, s);
    e->len = n;
    memcpy(e->bytes, p, n);
    return s;
}

/* ------------------------------------------------------------------------------------------- */
/* Reader                                                                                      */
/* ------------------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;     /* next byte */
    const unsigned char *end;   /* one past the body */
    const unsigned char *start; /* the body, for offsets in messages */
    hfr_keycache *kc;
} hfr_reader;

/* msgpack.ExtType and msgpack.Timestamp, set once by hfr_setup(). */
static PyObject *hfr_ExtType = NULL;
static PyObject *hfr_Timestamp = NULL;

/* The ints -32..255 (every fixint and uint8), made once: no call into CPython for the commonest
 * values. Ints are immutable, so sharing them is invisible. */
#define HFR_INT_MIN (-32)
#define HFR_INT_MAX 255
static PyObject *hfr_ints[HFR_INT_MAX - HFR_INT_MIN + 1];

static inline PyObject *hfr_small_int(long v) {
    PyObject *o = hfr_ints[v - HFR_INT_MIN];
    Py_INCREF(o);
    return o;
}

static int hfr_setup(PyObject *ext_type, PyObject *timestamp) {
    for (long v = HFR_INT_MIN; v <= HFR_INT_MAX; v++) {
        if (hfr_ints[v - HFR_INT_MIN] == NULL) {
            hfr_ints[v - HFR_INT_MIN] = PyLong_FromLong(v);
            if (hfr_ints[v - HFR_INT_MIN] == NULL) return -1;
        }
    }
    Py_INCREF(ext_type);
    Py_XSETREF(hfr_ExtType, ext_type);
    Py_INCREF(timestamp);
    Py_XSETREF(hfr_Timestamp, timestamp);
    return 0;
}

#define HFR_OFFSET(r) ((Py_ssize_t)((r)->p - (r)->start))
#define HFR_LEFT(r) ((size_t)((r)->end - (r)->p))

static PyObject *hfr_truncated(hfr_reader *r, const char *what, size_t need) {
    PyErr_Format(PyExc_ValueError, "truncated %s at offset %zd: needs %zu bytes, %zu left", what,
                 HFR_OFFSET(r), need, HFR_LEFT(r));
    return NULL;
}

/* The msgpack family a leading byte belongs to, for error messages. */
static const char *hfr_family(unsigned int b) {
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3)) return "int";
    if (b <= 0x8f || b == 0xde || b == 0xdf) return "map";
    if (b <= 0x9f || b == 0xdc || b == 0xdd) return "array";
    if (b <= 0xbf || (b >= 0xd9 && b <= 0xdb)) return "str";
    switch (b) {
    case 0xc0: return "nil";
    case 0xc2: case 0xc3: return "bool";
    case 0xc4: case 0xc5: case 0xc6: return "bin";
    case 0xca: case 0xcb: return "float";
    case 0xc1: return "never-used byte 0xc1";
    default: return "ext";
    }
}

static PyObject *hfr_read(hfr_reader *r, int depth);

static PyObject *hfr_read_array(hfr_reader *r, size_t n, int depth) {
    if (HFR_UNLIKELY(depth >= HFR_MAX_DEPTH)) {
        PyErr_Format(PyExc_ValueError, "nesting deeper than %d containers at offset %zd",
                     HFR_MAX_DEPTH, HFR_OFFSET(r));
        return NULL;
    }
    /* Every item takes at least one byte: refuse an impossible count before allocating. */
    if (HFR_UNLIKELY(n > HFR_LEFT(r))) {
        PyErr_Format(PyExc_ValueError, "array header at offset %zd claims %zu items, only %zu bytes left",
                     HFR_OFFSET(r), n, HFR_LEFT(r));
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *item = hfr_read(r, depth + 1);
        if (item == NULL) {
            Py_DECREF(list); /* unset slots are NULL; list_dealloc skips them */
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

/* A map key: only str and bin are allowed (strict_map_key), so anything else fails at once. */
static PyObject *hfr_read_key(hfr_reader *r) {
    if (HFR_UNLIKELY(r->p >= r->end)) return hfr_truncated(r, "map key", 1);
    unsigned int b = *r->p;
    size_t n, hdr;
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
        hdr = 1;
    } else if (b == 0xd9 || b == 0xc4) {
        if (HFR_LEFT(r) < 2) return hfr_truncated(r, "map key header", 2);
        n = r->p[1];
        hdr = 2;
    } else if (b == 0xda || b == 0xc5) {
        if (HFR_LEFT(r) < 3) return hfr_truncated(r, "map key header", 3);
        n = hfr_load16(r->p + 1);
        hdr = 3;
    } else if (b == 0xdb || b == 0xc6) {
        if (HFR_LEFT(r) < 5) return hfr_truncated(r, "map key header", 5);
        n = hfr_load32(r->p + 1);
        hdr = 5;
    } else {
        PyErr_Format(PyExc_ValueError,
                     "map key at offset %zd is %s; only str and bytes keys are allowed (strict_map_key)",
                     HFR_OFFSET(r), hfr_family(b));
        return NULL;
    }
    if (HFR_UNLIKELY(HFR_LEFT(r) - hdr < n)) return hfr_truncated(r, "map key", hdr + n);
    const unsigned char *s = r->p + hdr;
    PyObject *key;
    if (b >= 0xc4 && b <= 0xc6)
        key = PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n);
    else
        key = hfr_kc_str(r->kc, s, (uint32_t)n);
    if (key != NULL) r->p = s + n;
    return key;
}

static PyObject *hfr_read_map(hfr_reader *r, size_t n, int depth) {
    if (HFR_UNLIKELY(depth >= HFR_MAX_DEPTH)) {
        PyErr_Format(PyExc_ValueError, "nesting deeper than %d containers at offset %zd",
                     HFR_MAX_DEPTH, HFR_OFFSET(r));
        return NULL;
    }
    /* Every pair takes at least two bytes. */
    if (HFR_UNLIKELY(n > HFR_LEFT(r) / 2)) {
        PyErr_Format(PyExc_ValueError, "map header at offset %zd claims %zu pairs, only %zu bytes left",
                     HFR_OFFSET(r), n, HFR_LEFT(r));
        return NULL;
    }
#if PY_VERSION_HEX < 0x030D0000
    PyObject *dict = PyDict_New();
#else
    PyObject *dict = PyDict_New();
#endif
    if (dict == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *key = hfr_read_key(r);
        if (key == NULL) goto fail;
        PyObject *value = hfr_read(r, depth + 1);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int rc = PyDict_SetItem(dict, key, value); /* a repeated key: the last one wins */
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0) goto fail;
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

static PyObject *hfr_read_ext(hfr_reader *r, size_t n, size_t hdr) {
    /* hdr bytes of header, then the type byte, then n bytes of data */
    if (HFR_UNLIKELY(HFR_LEFT(r) < hdr + 1 + n)) return hfr_truncated(r, "ext", hdr + 1 + n);
    int code = (int)(signed char)r->p[hdr];
    const unsigned char *d = r->p + hdr + 1;
    PyObject *obj;
    if (code == -1) { /* the timestamp extension */
        long long sec;
        unsigned long ns;
        if (n == 4) {
            sec = (long long)hfr_load32(d);
            ns = 0;
        } else if (n == 8) {
            uint64_t v = hfr_load64(d);
            ns = (unsigned long)(v >> 34);
            sec = (long long)(v & 0x3ffffffffULL);
        } else if (n == 12) {
            ns = hfr_load32(d);
            sec = (long long)hfr_load64(d + 4);
        } else {
            PyErr_Format(PyExc_ValueError, "invalid timestamp at offset %zd: %zu bytes of data (4, 8 or 12 expected)",
                         HFR_OFFSET(r), n);
            return NULL;
        }
        obj = PyObject_CallFunction(hfr_Timestamp, "Lk", sec, ns); /* validates nanoseconds */
    } else {
        PyObject *data = PyBytes_FromStringAndSize((const char *)d, (Py_ssize_t)n);
        if (data == NULL) return NULL;
        obj = PyObject_CallFunction(hfr_ExtType, "iN", code, data); /* refuses negative codes, as unpackb */
    }
    if (obj != NULL) r->p = d + n;
    return obj;
}

static inline PyObject *hfr_read_str(hfr_reader *r, size_t n, size_t hdr) {
    if (HFR_UNLIKELY(HFR_LEFT(r) - hdr < n)) return hfr_truncated(r, "str", hdr + n);
    const unsigned char *s = r->p + hdr;
    PyObject *obj = n <= 8 ? hfr_kc_str(r->kc, s, (uint32_t)n)
                           : PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, NULL);
    if (obj != NULL) r->p = s + n;
    return obj;
}

static inline PyObject *hfr_read_bin(hfr_reader *r, size_t n, size_t hdr) {
    if (HFR_UNLIKELY(HFR_LEFT(r) - hdr < n)) return hfr_truncated(r, "bin", hdr + n);
    PyObject *obj = PyBytes_FromStringAndSize((const char *)r->p + hdr, (Py_ssize_t)n);
    if (obj != NULL) r->p += hdr + n;
    return obj;
}

/* Read one value at r->p; on success r->p is just past it. NULL with an exception on error. */
static PyObject *hfr_read(hfr_reader *r, int depth) {
    if (HFR_UNLIKELY(r->p >= r->end)) return hfr_truncated(r, "value", 1);
    const unsigned char *p = r->p;
    unsigned int b = *p;
    size_t left = HFR_LEFT(r);

    if (b <= 0x7f) { /* positive fixint */
        r->p++;
        return hfr_small_int((long)b);
    }
    if (b >= 0xe0) { /* negative fixint */
        r->p++;
        return hfr_small_int((long)(signed char)b);
    }
    if (b <= 0x8f) {
        r->p++;
        return hfr_read_map(r, b & 0x0f, depth);
    }
    if (b <= 0x9f) {
        r->p++;
        return hfr_read_array(r, b & 0x0f, depth);
    }
    if (b <= 0xbf) return hfr_read_str(r, b & 0x1f, 1);

    /* 0xc0..0xdf: the header's extra bytes, checked once */
    static const unsigned char extra[32] = {
        /* c0 nil, c1 -, c2 false, c3 true */ 0, 0, 0, 0,
        /* c4 c5 c6 bin */ 1, 2, 4,
        /* c7 c8 c9 ext */ 1, 2, 4,
        /* ca cb float */ 4, 8,
        /* cc cd ce cf uint */ 1, 2, 4, 8,
        /* d0 d1 d2 d3 int */ 1, 2, 4, 8,
        /* d4..d8 fixext: type byte read later */ 0, 0, 0, 0, 0,
        /* d9 da db str */ 1, 2, 4,
        /* dc dd array */ 2, 4,
        /* de df map */ 2, 4};
    size_t need = 1 + extra[b - 0xc0];
    if (HFR_UNLIKELY(left < need)) return hfr_truncated(r, hfr_family(b), need);
    const unsigned char *q = p + 1;
    switch (b) {
    case 0xc0: r->p++; Py_RETURN_NONE;
    case 0xc2: r->p++; Py_RETURN_FALSE;
    case 0xc3: r->p++; Py_RETURN_TRUE;
    case 0xc4: return hfr_read_bin(r, q[0], 2);
    case 0xc5: return hfr_read_bin(r, hfr_load16(q), 3);
    case 0xc6: return hfr_read_bin(r, hfr_load32(q), 5);
    case 0xc7: return hfr_read_ext(r, q[0], 2);
    case 0xc8: return hfr_read_ext(r, hfr_load16(q), 3);
    case 0xc9: return hfr_read_ext(r, hfr_load32(q), 5);
    case 0xca: {
        uint32_t bits = hfr_load32(q);
        float f;
        memcpy(&f, &bits, 4);
        r->p += 5;
        return PyFloat_FromDouble((double)f);
    }
    case 0xcb: {
        uint64_t bits = hfr_load64(q);
        double d;
        memcpy(&d, &bits, 8);
        r->p += 9;
        return PyFloat_FromDouble(d);
    }
    case 0xcc: r->p += 2; return hfr_small_int((long)q[0]);
    case 0xcd: r->p += 3; return PyLong_FromLong((long)hfr_load16(q));
    case 0xce: r->p += 5; return PyLong_FromUnsignedLong((unsigned long)hfr_load32(q));
    case 0xcf: r->p += 9; return PyLong_FromUnsignedLongLong((unsigned long long)hfr_load64(q));
    case 0xd0: r->p += 2; return PyLong_FromLong((long)(signed char)q[0]);
    case 0xd1: r->p += 3; return PyLong_FromLong((long)(int16_t)hfr_load16(q));
    case 0xd2: r->p += 5; return PyLong_FromLong((long)(int32_t)hfr_load32(q));
    case 0xd3: r->p += 9; return PyLong_FromLongLong((long long)(int64_t)hfr_load64(q));
    case 0xd4: return hfr_read_ext(r, 1, 1);
    case 0xd5: return hfr_read_ext(r, 2, 1);
    case 0xd6: return hfr_read_ext(r, 4, 1);
    case 0xd7: return hfr_read_ext(r, 8, 1);
    case 0xd8: return hfr_read_ext(r, 16, 1);
    case 0xd9: return hfr_read_str(r, q[0], 2);
    case 0xda: return hfr_read_str(r, hfr_load16(q), 3);
    case 0xdb: return hfr_read_str(r, hfr_load32(q), 5);
    case 0xdc: r->p += 3; return hfr_read_array(r, hfr_load16(q), depth);
    case 0xdd: r->p += 5; return hfr_read_array(r, hfr_load32(q), depth);
    case 0xde: r->p += 3; return hfr_read_map(r, hfr_load16(q), depth);
    case 0xdf: r->p += 5; return hfr_read_map(r, hfr_load32(q), depth);
    default: /* 0xc1 */
        PyErr_Format(PyExc_ValueError, "byte 0x%02x at offset %zd is not a msgpack type", b, HFR_OFFSET(r));
        return NULL;
    }
}

/* Decode the one value at the start of body[0:n]; *used is set to the bytes it took. */
static PyObject *hfr_unpack(hfr_keycache *kc, const unsigned char *body, Py_ssize_t n, Py_ssize_t *used) {
    hfr_reader r;
    r.p = body;
    r.start = body;
    r.end = body + n;
    r.kc = kc;
    PyObject *obj = hfr_read(&r, 0);
    if (obj != NULL) *used = (Py_ssize_t)(r.p - body);
    return obj;
}

/* ------------------------------------------------------------------------------------------- */
/* Writer                                                                                      */
/* ------------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *buf; /* == stack until it outgrows it, then heap (PyMem) */
    size_t len;
    size_t cap;
    unsigned char *stack; /* caller's initial storage */
} hfr_wbuf;

static inline void hfr_w_init(hfr_wbuf *w, unsigned char *stack, size_t cap) {
    w->buf = stack;
    w->stack = stack;
    w->len = 0;
    w->cap = cap;
}

static inline void hfr_w_free(hfr_wbuf *w) {
    if (w->buf != w->stack) PyMem_Free(w->buf);
    w->buf = w->stack;
    w->len = 0;
}

static int hfr_w_grow(hfr_wbuf *w, size_t extra) {
    size_t want = w->len + extra;
    if (want < w->len) { /* overflow */
        PyErr_NoMemory();
        return -1;
    }
    size_t cap = w->cap * 2;
    if (cap < want) cap = want;
    unsigned char *nb;
    if (w->buf == w->stack) {
        nb = (unsigned char *)PyMem_Malloc(cap);
        if (nb != NULL) memcpy(nb, w->buf, w->len);
    } else {
        nb = (unsigned char *)PyMem_Realloc(w->buf, cap);
    }
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = nb;
    w->cap = cap;
    return 0;
}

static inline int hfr_w_reserve(hfr_wbuf *w, size_t extra) {
    if (HFR_LIKELY(w->cap - w->len >= extra)) return 0;
    return hfr_w_grow(w, extra);
}

static inline int hfr_w_bytes(hfr_wbuf *w, const void *data, size_t n) {
    if (hfr_w_reserve(w, n) < 0) return -1;
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    return 0;
}

/* A header of one type byte and an 8/16/32-bit length: the smallest form msgpack would choose. */
static inline int hfr_w_sized(hfr_wbuf *w, size_t n, unsigned int fix, size_t fixmax,
                              unsigned int t8, unsigned int t16, unsigned int t32, const char *what) {
    if (HFR_UNLIKELY(n > 0xffffffffu)) {
        PyErr_Format(PyExc_ValueError, "%s is too large", what);
        return -1;
    }
    if (hfr_w_reserve(w, 5) < 0) return -1;
    unsigned char *o = w->buf + w->len;
    if (n <= fixmax) {
        o[0] = (unsigned char)(fix | n);
        w->len += 1;
    } else if (t8 && n <= 0xff) {
        o[0] = (unsigned char)t8;
        o[1] = (unsigned char)n;
        w->len += 2;
    } else if (n <= 0xffff) {
        o[0] = (unsigned char)t16;
        hfr_store16(o + 1, (uint16_t)n);
        w->len += 3;
    } else {
        o[0] = (unsigned char)t32;
        hfr_store32(o + 1, (uint32_t)n);
        w->len += 5;
    }
    return 0;
}

#define hfr_w_str_hdr(w, n) hfr_w_sized((w), (n), 0xa0, 31, 0xd9, 0xda, 0xdb, "str")
#define hfr_w_array_hdr(w, n) hfr_w_sized((w), (n), 0x90, 15, 0, 0xdc, 0xdd, "list")
#define hfr_w_map_hdr(w, n) hfr_w_sized((w), (n), 0x80, 15, 0, 0xde, 0xdf, "dict")

/* bin has no fix form, so it gets its own writer (header and data). */
static inline int hfr_w_bin(hfr_wbuf *w, const void *data, size_t n) {
    if (HFR_UNLIKELY(n > 0xffffffffu)) {
        PyErr_SetString(PyExc_ValueError, "bytes object is too large");
        return -1;
    }
    if (hfr_w_reserve(w, 5 + n) < 0) return -1;
    unsigned char *o = w->buf + w->len;
    if (n <= 0xff) {
        o[0] = 0xc4;
        o[1] = (unsigned char)n;
        w->len += 2;
    } else if (n <= 0xffff) {
        o[0] = 0xc5;
        hfr_store16(o + 1, (uint16_t)n);
        w->len += 3;
    } else {
        o[0] = 0xc6;
        hfr_store32(o + 1, (uint32_t)n);
        w->len += 5;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    return 0;
}

static inline int hfr_w_str(hfr_wbuf *w, const char *s, size_t n) {
    if (hfr_w_str_hdr(w, n) < 0) return -1;
    return hfr_w_bytes(w, s, n);
}

/* An unsigned value in its smallest form (msgpack: fixint, uint8, uint16, uint32, uint64). */
static inline int hfr_w_uint(hfr_wbuf *w, uint64_t v) {
    if (hfr_w_reserve(w, 9) < 0) return -1;
    unsigned char *o = w->buf + w->len;
    if (v < 0x80) {
        o[0] = (unsigned char)v;
        w->len += 1;
    } else if (v <= 0xff) {
        o[0] = 0xcc;
        o[1] = (unsigned char)v;
        w->len += 2;
    } else if (v <= 0xffff) {
        o[0] = 0xcd;
        hfr_store16(o + 1, (uint16_t)v);
        w->len += 3;
    } else if (v <= 0xffffffffu) {
        o[0] = 0xce;
        hfr_store32(o + 1, (uint32_t)v);
        w->len += 5;
    } else {
        o[0] = 0xcf;
        hfr_store64(o + 1, v);
        w->len += 9;
    }
    return 0;
}

/* A negative value in its smallest form (negative fixint, int8, int16, int32, int64). */
static inline int hfr_w_neg(hfr_wbuf *w, int64_t v) {
    if (hfr_w_reserve(w, 9) < 0) return -1;
    unsigned char *o = w->buf + w->len;
    if (v >= -32) {
        o[0] = (unsigned char)(int8_t)v;
        w->len += 1;
    } else if (v >= -128) {
        o[0] = 0xd0;
        o[1] = (unsigned char)(int8_t)v;
        w->len += 2;
    } else if (v >= -32768) {
        o[0] = 0xd1;
        hfr_store16(o + 1, (uint16_t)(int16_t)v);
        w->len += 3;
    } else if (v >= -2147483648LL) {
        o[0] = 0xd2;
        hfr_store32(o + 1, (uint32_t)(int32_t)v);
        w->len += 5;
    } else {
        o[0] = 0xd3;
        hfr_store64(o + 1, (uint64_t)v);
        w->len += 9;
    }
    return 0;
}

static inline int hfr_w_int(hfr_wbuf *w, PyObject *o) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (HFR_LIKELY(overflow == 0)) {
        if (v == -1 && PyErr_Occurred()) return -1;
        return v >= 0 ? hfr_w_uint(w, (uint64_t)v) : hfr_w_neg(w, (int64_t)v);
    }
    if (overflow > 0) { /* above int64: uint64 if it fits */
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        return hfr_w_uint(w, (uint64_t)u);
    }
    PyErr_SetString(PyExc_OverflowError, "Integer value out of range");
    return -1;
}

static inline int hfr_w_double(hfr_wbuf *w, double d) {
    if (hfr_w_reserve(w, 9) < 0) return -1;
    uint64_t bits;
    memcpy(&bits, &d, 8);
    w->buf[w->len] = 0xcb;
    hfr_store64(w->buf + w->len + 1, bits);
    w->len += 9;
    return 0;
}

static int hfr_w_ext(hfr_wbuf *w, int code, const void *data, size_t n) {
    if (HFR_UNLIKELY(n > 0xffffffffu)) {
        PyErr_SetString(PyExc_ValueError, "EXT data is too large");
        return -1;
    }
    if (hfr_w_reserve(w, 6 + n) < 0) return -1;
    unsigned char *o = w->buf + w->len;
    size_t h;
    switch (n) {
    case 1: o[0] = 0xd4; h = 1; break;
    case 2: o[0] = 0xd5; h = 1; break;
    case 4: o[0] = 0xd6; h = 1; break;
    case 8: o[0] = 0xd7; h = 1; break;
    case 16: o[0] = 0xd8; h = 1; break;
    default:
        if (n <= 0xff) {
            o[0] = 0xc7;
            o[1] = (unsigned char)n;
            h = 2;
        } else if (n <= 0xffff) {
            o[0] = 0xc8;
            hfr_store16(o + 1, (uint16_t)n);
            h = 3;
        } else {
            o[0] = 0xc9;
            hfr_store32(o + 1, (uint32_t)n);
            h = 5;
        }
    }
    o[h] = (unsigned char)(signed char)code;
    memcpy(o + h + 1, data, n);
    w->len += h + 1 + n;
    return 0;
}

/* Timestamp in the smallest of the three forms of the msgpack spec (as msgpack's packer). */
static int hfr_w_timestamp(hfr_wbuf *w, PyObject *o) {
    PyObject *s = PyObject_GetAttrString(o, "seconds");
    if (s == NULL) return -1;
    long long sec = PyLong_AsLongLong(s);
    Py_DECREF(s);
    if (sec == -1 && PyErr_Occurred()) return -1;
    PyObject *ns_obj = PyObject_GetAttrString(o, "nanoseconds");
    if (ns_obj == NULL) return -1;
    unsigned long ns = PyLong_AsUnsignedLong(ns_obj);
    Py_DECREF(ns_obj);
    if (ns == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (ns > 0xffffffffUL) {
        PyErr_SetString(PyExc_OverflowError, "timestamp nanoseconds out of range");
        return -1;
    }
    unsigned char data[12];
    if ((sec >> 34) == 0) {
        uint64_t v = ((uint64_t)ns << 34) | (uint64_t)sec;
        if ((v & 0xffffffff00000000ULL) == 0) {
            hfr_store32(data, (uint32_t)v);
            return hfr_w_ext(w, -1, data, 4);
        }
        hfr_store64(data, v);
        return hfr_w_ext(w, -1, data, 8);
    }
    hfr_store32(data, (uint32_t)ns);
    hfr_store64(data + 4, (uint64_t)sec);
    return hfr_w_ext(w, -1, data, 12);
}

static int hfr_pack(hfr_wbuf *w, PyObject *o, int level);

static int hfr_pack_seq(hfr_wbuf *w, PyObject *o, int level) {
    Py_ssize_t n = Py_SIZE(o);
    if (hfr_w_array_hdr(w, (size_t)n) < 0) return -1;
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) {
        PyObject **items = PySequence_Fast_ITEMS(o);
        for (Py_ssize_t i = 0; i < n; i++) {
            /* a list can shrink under us only through Python code run by the packing itself */
            if (HFR_UNLIKELY(Py_SIZE(o) != n)) goto changed;
            PyObject *item = items[i];
            Py_INCREF(item);
            int rc = hfr_pack(w, item, level + 1);
            Py_DECREF(item);
            if (rc < 0) return -1;
            items = PySequence_Fast_ITEMS(o); /* a list may have been reallocated */
        }
        return 0;
    }
    /* subclasses: the header says len(o), the items come from iterating it (as msgpack does) */
    PyObject *it = PyObject_GetIter(o);
    if (it == NULL) return -1;
    Py_ssize_t count = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int rc = hfr_pack(w, item, level + 1);
        Py_DECREF(item);
        count++;
        if (rc < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return -1;
    if (count != n) goto changed;
    return 0;
changed:
    PyErr_SetString(PyExc_RuntimeError, "sequence changed size while being packed");
    return -1;
}

static int hfr_pack_dict(hfr_wbuf *w, PyObject *o, int level) {
    if (PyDict_CheckExact(o)) {
        Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0, count = 0;
        PyObject *k, *v;
        if (hfr_w_map_hdr(w, (size_t)n) < 0) return -1;
        while (PyDict_Next(o, &pos, &k, &v)) {
            Py_INCREF(k);
            Py_INCREF(v);
            int rc = hfr_pack(w, k, level + 1);
            if (rc == 0) rc = hfr_pack(w, v, level + 1);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0) return -1;
            count++;
            if (HFR_UNLIKELY(PyDict_GET_SIZE(o) != n)) break;
        }
        if (count != n) {
            PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
            return -1;
        }
        return 0;
    }
    /* dict subclasses: len(o), then the pairs of o.items() */
    Py_ssize_t n = PyObject_Size(o);
    if (n < 0) return -1;
    if (hfr_w_map_hdr(w, (size_t)n) < 0) return -1;
    PyObject *items = PyMapping_Items(o);
    if (items == NULL) return -1;
    Py_ssize_t m = PyList_GET_SIZE(items);
    int rc = 0;
    if (m != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict items() disagrees with len()");
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < m; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "dict items() must give (key, value) pairs");
            rc = -1;
            break;
        }
        rc = hfr_pack(w, PyTuple_GET_ITEM(pair, 0), level + 1);
        if (rc == 0) rc = hfr_pack(w, PyTuple_GET_ITEM(pair, 1), level + 1);
    }
    Py_DECREF(items);
    return rc;
}

static int hfr_pack_exttype(hfr_wbuf *w, PyObject *o) {
    PyObject *code_obj = PyObject_GetAttrString(o, "code");
    if (code_obj == NULL) return -1;
    long code = PyLong_AsLong(code_obj);
    Py_DECREF(code_obj);
    if (code == -1 && PyErr_Occurred()) return -1;
    PyObject *data = PyObject_GetAttrString(o, "data");
    if (data == NULL) return -1;
    int rc;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "ExtType data must be bytes");
        rc = -1;
    } else {
        rc = hfr_w_ext(w, (int)(signed char)code, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    }
    Py_DECREF(data);
    return rc;
}

/* Pack o (at nesting level `level`, 0 for the message itself). The type tests run in msgpack's
 * order (strict_types=False), with the exact common types first as a fast path. */
static int hfr_pack(hfr_wbuf *w, PyObject *o, int level) {
    if (HFR_UNLIKELY(level > HFR_PACK_MAX_LEVEL)) {
        PyErr_SetString(PyExc_ValueError, "recursion limit exceeded.");
        return -1;
    }
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type) {
        if (PyUnicode_IS_COMPACT_ASCII(o))
            return hfr_w_str(w, (const char *)PyUnicode_DATA(o), (size_t)PyUnicode_GET_LENGTH(o));
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) return -1;
        return hfr_w_str(w, s, (size_t)n);
    }
    if (t == &PyLong_Type) return hfr_w_int(w, o);
    if (t == &PyDict_Type) return hfr_pack_dict(w, o, level);
    if (t == &PyList_Type || t == &PyTuple_Type) return hfr_pack_seq(w, o, level);
    if (t == &PyFloat_Type) return hfr_w_double(w, PyFloat_AS_DOUBLE(o));
    if (t == &PyBytes_Type) return hfr_w_bin(w, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));

    /* the general path, in msgpack's order */
    if (o == Py_None || o == Py_True || o == Py_False) {
        if (hfr_w_reserve(w, 1) < 0) return -1;
        w->buf[w->len++] = o == Py_None ? 0xc0 : (o == Py_True ? 0xc3 : 0xc2);
        return 0;
    }
    if (PyLong_Check(o)) return hfr_w_int(w, o);
    if (PyFloat_Check(o)) return hfr_w_double(w, PyFloat_AS_DOUBLE(o));
    if (PyBytes_Check(o)) return hfr_w_bin(w, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
    if (PyByteArray_Check(o)) return hfr_w_bin(w, PyByteArray_AS_STRING(o), (size_t)PyByteArray_GET_SIZE(o));
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) return -1;
        return hfr_w_str(w, s, (size_t)n);
    }
    if (PyDict_Check(o)) return hfr_pack_dict(w, o, level);
    int is_ext = PyObject_IsInstance(o, hfr_ExtType); /* before tuples: ExtType is a namedtuple */
    if (is_ext < 0) return -1;
    if (is_ext) return hfr_pack_exttype(w, o);
    if ((PyObject *)t == hfr_Timestamp) return hfr_w_timestamp(w, o);
    if (PyTuple_Check(o) || PyList_Check(o)) return hfr_pack_seq(w, o, level);
    if (PyMemoryView_Check(o)) {
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) return -1;
        int rc = hfr_w_bin(w, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return rc;
    }
    PyErr_Format(PyExc_TypeError, "can not serialize '%.200s' object", t->tp_name);
    return -1;
}

/* Append one frame (4-byte length, then the body) for o. -1 with an exception on failure, the
 * buffer then holding exactly what it held before. */
static int hfr_pack_frame(hfr_wbuf *w, PyObject *o) {
    size_t start = w->len;
    if (hfr_w_reserve(w, 4) < 0) return -1;
    w->len += 4;
    if (hfr_pack(w, o, 0) < 0) {
        w->len = start;
        return -1;
    }
    size_t body = w->len - start - 4;
    if (HFR_UNLIKELY(body > 0xffffffffu)) {
        w->len = start;
        return -2; /* the caller raises FrameTooLarge */
    }
    hfr_store32(w->buf + start, (uint32_t)body);
    return 0;
}

#endif /* HERDRT_FRAMING_MSGPACK_H */
