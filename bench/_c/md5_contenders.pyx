# cython: language_level=3, boundscheck=False, wraparound=False
"""Bench-only (never shipped): MD5 of short keys through each candidate C path, from Cython.

Built at benchmark time by ``bench/_cbuild.py`` (linked with libcrypto; ``herd_md5.h``, the
hand-written MD5 the core used to carry, sits next to this file). Every contender runs the same
loop over a list of bytes keys and folds the four digest words into a checksum, so only the hash
call differs; ``digest(name, key)`` returns the 16 digest bytes for the correctness check.
``Ring`` is the core's ``HashRing.lookup`` with the MD5 of one's choosing.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

cdef extern from "herd_md5.h" nogil:
    void herd_md5(const void* data, size_t size, uint32_t* out)

cdef extern from *:
    """
    #define OPENSSL_SUPPRESS_DEPRECATED 1  /* MD5(), MD5_*: deprecated since OpenSSL 3.0, still present */
    #include <openssl/evp.h>
    #include <openssl/md5.h>
    """
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties) nogil
    void EVP_MD_free(EVP_MD *md) nogil
    EVP_MD_CTX *EVP_MD_CTX_new() nogil
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx) nogil
    int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const void *params) nogil
    int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl) nogil
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt) nogil
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s) nogil
    int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
                   const EVP_MD *type, ENGINE *impl) nogil
    unsigned char *MD5(const unsigned char *d, size_t n, unsigned char *md) nogil
    ctypedef struct MD5_CTX:
        pass
    int MD5_Init(MD5_CTX *c) nogil
    int MD5_Update(MD5_CTX *c, const void *data, size_t n) nogil
    int MD5_Final(unsigned char *md, MD5_CTX *c) nogil


cdef EVP_MD *_md = EVP_MD_fetch(NULL, b"MD5", NULL)  # fetched once, as a core would
cdef EVP_MD_CTX *_ctx = EVP_MD_CTX_new()             # one context, reused for every key
if _md == NULL or _ctx == NULL:
    raise RuntimeError("OpenSSL: no MD5 (EVP_MD_fetch) or no EVP_MD_CTX")


# The ways to hash: each fills out[0..3] with the digest words (little-endian), as herd_md5.

cdef inline int _h_herd(const char *p, size_t n, uint32_t *out) except -1:
    herd_md5(p, n, out)
    return 0


cdef inline int _h_evp(const char *p, size_t n, uint32_t *out) except -1:
    cdef unsigned int size
    if (EVP_DigestInit_ex2(_ctx, _md, NULL) != 1 or EVP_DigestUpdate(_ctx, p, n) != 1
            or EVP_DigestFinal_ex(_ctx, <unsigned char *>out, &size) != 1):
        raise RuntimeError("OpenSSL EVP MD5 failed")
    return 0


cdef inline int _h_evp_init_ex(const char *p, size_t n, uint32_t *out) except -1:
    cdef unsigned int size
    if (EVP_DigestInit_ex(_ctx, _md, NULL) != 1 or EVP_DigestUpdate(_ctx, p, n) != 1
            or EVP_DigestFinal_ex(_ctx, <unsigned char *>out, &size) != 1):
        raise RuntimeError("OpenSSL EVP MD5 failed")
    return 0


cdef inline int _h_evp_digest(const char *p, size_t n, uint32_t *out) except -1:
    cdef unsigned int size
    if EVP_Digest(p, n, <unsigned char *>out, &size, _md, NULL) != 1:
        raise RuntimeError("OpenSSL EVP_Digest MD5 failed")
    return 0


cdef inline int _h_md5(const char *p, size_t n, uint32_t *out) except -1:
    MD5(<const unsigned char *>p, n, <unsigned char *>out)
    return 0

cdef inline int _h_md5_ctx(const char *p, size_t n, uint32_t *out) except -1:
    cdef MD5_CTX c
    MD5_Init(&c)
    MD5_Update(&c, p, n)
    MD5_Final(<unsigned char *>out, &c)
    return 0

# (On a little-endian host the 16 digest bytes *are* the four words, so casting out to bytes is
# exact there; the check against hashlib below would catch a big-endian host.)


ctypedef int (*hash_fn)(const char *, size_t, uint32_t *) except -1

cdef hash_fn _pick(str name) except NULL:
    if name == "herd_md5":
        return _h_herd
    if name == "evp":
        return _h_evp
    if name == "evp-init_ex":
        return _h_evp_init_ex
    if name == "evp-digest":
        return _h_evp_digest
    if name == "MD5":
        return _h_md5
    if name == "MD5_Init":
        return _h_md5_ctx
    raise ValueError(name)


NAMES = ("herd_md5", "MD5", "MD5_Init", "evp", "evp-init_ex", "evp-digest")


# The loops are spelled out per contender (not through a function pointer) so the compiler can
# inline herd_md5 as the core does.

def loop_herd_md5(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_herd(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


def loop_evp(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_evp(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


def loop_evp_init_ex(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_evp_init_ex(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


def loop_evp_digest(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_evp_digest(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


def loop_MD5(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_md5(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


def loop_MD5_Init(list keys):
    cdef uint32_t w[4]
    cdef uint64_t acc = 0
    for key in keys:
        _h_md5_ctx(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
        acc += w[0] ^ w[1] ^ w[2] ^ w[3]
    return acc


LOOPS = {"herd_md5": loop_herd_md5, "MD5": loop_MD5, "MD5_Init": loop_MD5_Init, "evp": loop_evp,
         "evp-init_ex": loop_evp_init_ex, "evp-digest": loop_evp_digest}


def digest(str name, bytes key):
    """The 16 digest bytes of key through contender ``name``."""
    cdef uint32_t w[4]
    _pick(name)(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), w)
    return PyBytes_FromStringAndSize(<char *>w, 16)


# End to end: a ring lookup as the core's HashRing.lookup does it (str key -> cached UTF-8 -> MD5
# -> branchless lower bound over the sorted points), with the MD5 of the contender's choosing.
# The continuum comes from the reference ring's points(), so every variant owns keys identically.

cdef enum:
    H_HERD, H_EVP, H_MD5, H_MD5_CTX


cdef class Ring:
    cdef uint32_t *_points
    cdef uint32_t *_owners
    cdef Py_ssize_t _n
    cdef tuple _names
    cdef int _how

    def __cinit__(self):
        self._points = self._owners = NULL

    def __init__(self, points, nodes, str how):
        cdef Py_ssize_t i
        index = {node: i for i, node in enumerate(nodes)}
        self._names = tuple(nodes)
        self._n = len(points)
        self._points = <uint32_t *>PyMem_Malloc(self._n * sizeof(uint32_t))
        self._owners = <uint32_t *>PyMem_Malloc(self._n * sizeof(uint32_t))
        if self._points == NULL or self._owners == NULL:
            raise MemoryError()
        for i, (point, node) in enumerate(points):
            self._points[i] = point
            self._owners[i] = index[node]
        self._how = {"herd_md5": H_HERD, "evp": H_EVP, "MD5": H_MD5, "MD5_Init": H_MD5_CTX}[how]

    def __dealloc__(self):
        PyMem_Free(self._points)
        PyMem_Free(self._owners)

    def lookup(self, key):
        cdef const char *data
        cdef Py_ssize_t size, half, n = self._n, i
        cdef uint32_t w[4]
        cdef uint32_t h
        cdef const uint32_t *pts = self._points
        if PyUnicode_Check(key):
            data = PyUnicode_AsUTF8AndSize(key, &size)
        elif PyBytes_Check(key):
            data = PyBytes_AS_STRING(key)
            size = PyBytes_GET_SIZE(key)
        else:
            raise TypeError(type(key).__name__)
        if self._how == H_HERD:
            _h_herd(data, size, w)
        elif self._how == H_EVP:
            _h_evp(data, size, w)
        elif self._how == H_MD5:
            _h_md5(data, size, w)
        else:
            _h_md5_ctx(data, size, w)
        h = w[0]
        while n > 1:
            half = n >> 1
            pts = pts + half if pts[half] < h else pts
            n -= half
        i = (pts - self._points) + (pts[0] < h)
        return self._names[self._owners[0 if i == self._n else i]]
