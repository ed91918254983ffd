# Hash ring, md5_shard and jump_hash: the compiled twins of the ones in _pure.py (same results,
# same errors). MD5 is OpenSSL's (libcrypto, which the core links for its records anyway):
# MD5_Init/Update/Final on a stack context. bench/bench_md5.py measured it against the hand-written
# C MD5 this file used to carry: a tie (0.97-1.00x its time on an 8-40 byte key, 0.93-0.94x at
# 100 bytes; lookups 0.98-1.00x). EVP with the MD5 fetched once and a reused context takes about
# 1.8x the time per short key (1.5x per lookup), hashlib 6x. The MD5_* calls have been deprecated
# since OpenSSL 3.0 but are still there (3.0 here; the 3.5 manual lists them); an OpenSSL built
# without deprecated APIs would need the EVP path, and its cost, instead.
#
# The ring is two parallel C arrays sorted by point: ``_points`` (uint32) and ``_owners``
# (index into the ``_names`` tuple, the nodes in insertion order). A lookup is one MD5 and one
# binary search; PROTOCOL.md ("Hash ring") pins the algorithm down for other languages.

from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_Check
from cpython.bytes cimport PyBytes_Check, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

from herdrt.errors import EmptyRingError as _EmptyRingError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

cdef extern from *:
    """
    /* Before any OpenSSL header: the MD5_* calls are deprecated (not removed) since OpenSSL 3.0. */
    #define OPENSSL_SUPPRESS_DEPRECATED 1
    #include <openssl/md5.h>

    /* The MD5 digest of data[0:len] as four words, each read little-endian from the digest:
     * word 0 is the ketama key hash, words 0..3 are the 4 ketama points of a digest.
     * MD5_Init/Update/Final on a stack context rather than the one-shot MD5(), which also wipes
     * the context afterwards: a few percent per short key (bench/bench_md5.py). */
    static inline void herd_md5(const void *data, size_t len, uint32_t out[4]) {
        MD5_CTX c;
        MD5_Init(&c);
        MD5_Update(&c, data, len);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        MD5_Final((unsigned char *)out, &c); /* the digest is the four words, as they are */
    #else
        unsigned char d[16];
        int k;
        MD5_Final(d, &c);
        for (k = 0; k < 4; k++)
            out[k] = (uint32_t)d[4 * k] | ((uint32_t)d[4 * k + 1] << 8)
                     | ((uint32_t)d[4 * k + 2] << 16) | ((uint32_t)d[4 * k + 3] << 24);
    #endif
    }

    static inline uint32_t herd_bswap32(uint32_t v) {
        return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
    }

    /* The digest read as a big-endian 128-bit integer, modulo n (n >= 1). */
    static inline uint64_t herd_md5_mod(const uint32_t w[4], uint64_t n) {
        /* Byte 0 of the digest is the most significant: it is the low byte of word 0. */
        uint64_t hi = ((uint64_t)herd_bswap32(w[0]) << 32) | herd_bswap32(w[1]);
        uint64_t lo = ((uint64_t)herd_bswap32(w[2]) << 32) | herd_bswap32(w[3]);
    #if defined(__SIZEOF_INT128__)
        unsigned __int128 v = ((unsigned __int128)hi << 64) | lo;
        return (uint64_t)(v % n);
    #else
        /* No 128-bit integers: bit by bit, r = (2r + bit) mod n, never overflowing 64 bits. */
        uint64_t r = 0;
        uint32_t limbs[4];
        int i, bit;
        limbs[0] = (uint32_t)(hi >> 32); limbs[1] = (uint32_t)hi;
        limbs[2] = (uint32_t)(lo >> 32); limbs[3] = (uint32_t)lo;
        for (i = 0; i < 4; i++) {
            for (bit = 31; bit >= 0; bit--) {
                uint64_t b = (limbs[i] >> bit) & 1u;
                r = (r >= n - r) ? r - (n - r) : r + r;
                if (b) r = (r >= n - 1) ? r - (n - 1) : r + 1;
            }
        }
        return r;
    #endif
    }
    """
    void herd_md5(const void* data, size_t size, uint32_t* out) nogil
    uint64_t herd_md5_mod(const uint32_t* words, uint64_t n) nogil

_RING_U64 = (1 << 64) - 1


cdef int _ring_md5(object key, uint32_t* out) except -1:
    """MD5 of a key (str as UTF-8, or any bytes-like) into the 4 digest words."""
    cdef const char* data
    cdef Py_ssize_t size
    cdef Py_buffer view
    if PyUnicode_Check(key):
        data = PyUnicode_AsUTF8AndSize(key, &size)  # cached UTF-8: no copy for ASCII / repeats
        herd_md5(data, <size_t>size, out)
        return 0
    if PyBytes_Check(key):
        herd_md5(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), out)
        return 0
    if isinstance(key, (bytearray, memoryview)):
        try:
            PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
        except BufferError:
            # A non-C-contiguous memoryview: hash what bytes() gives, as the twin does.
            key = bytes(key)
            herd_md5(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), out)
            return 0
        try:
            herd_md5(view.buf, <size_t>view.len, out)
        finally:
            PyBuffer_Release(&view)
        return 0
    raise TypeError(f"hash keys must be str or bytes, not {type(key).__name__}")


cdef bytes _ring_digest_bytes(const uint32_t* w):
    """The 16 digest bytes (each state word little-endian), as hashlib's digest()."""
    cdef unsigned char digest[16]
    cdef int k
    for k in range(4):
        digest[4 * k] = <unsigned char>w[k]
        digest[4 * k + 1] = <unsigned char>(w[k] >> 8)
        digest[4 * k + 2] = <unsigned char>(w[k] >> 16)
        digest[4 * k + 3] = <unsigned char>(w[k] >> 24)
    return PyBytes_FromStringAndSize(<char*>digest, 16)


def _md5_digest(key):
    """Test-only: the 16-byte MD5 digest of a key as the ring computes it (hashlib is the oracle)."""
    cdef uint32_t w[4]
    _ring_md5(key, w)
    return _ring_digest_bytes(w)


def md5_shard(key, n):
    """The textbook shard: the key's MD5 digest read as a big-endian 128-bit integer, modulo ``n``."""
    cdef uint32_t w[4]
    cdef long long small = 0
    cdef int overflow = 1
    if PyLong_CheckExact(n):
        small = PyLong_AsLongLongAndOverflow(n, &overflow)
    if overflow == 0 and small >= 1:  # the common case, with no Python arithmetic at all
        _ring_md5(key, w)
        return herd_md5_mod(w, <uint64_t>small)
    if n < 1:
        raise ValueError(f"md5_shard needs n >= 1, not {n}")
    # Any other n (past 63 bits, or not a plain int): Python arithmetic, exactly as the twin.
    _ring_md5(key, w)
    return int.from_bytes(_ring_digest_bytes(w), "big") % n


cdef object _ring_jump_generic(object key, object n):
    # The twin's loop on Python numbers: for keys that are not plain ints, or n past 32 bits.
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & _RING_U64
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


def jump_hash(key, n):
    """Jump consistent hash (Lamping & Veach, 2014): bucket in ``range(n)`` of a 64-bit key."""
    cdef uint64_t k
    cdef long long nn = 0
    cdef int64_t b, j
    cdef int overflow = 1
    if PyLong_CheckExact(n):
        nn = PyLong_AsLongLongAndOverflow(n, &overflow)
    # Fast path for the algorithm's own domain (32-bit bucket counts) and plain int keys: then
    # b < 2^32 and j <= (b + 1) * 2^31 < 2^63, so the double -> int64 conversion cannot overflow.
    # The double arithmetic is the twin's: (b + 1) and (key >> 33) + 1 convert to double exactly,
    # then one divide and one multiply, each correctly rounded as in Python.
    if overflow == 0 and 1 <= nn <= 0xFFFFFFFF and PyLong_CheckExact(key):
        try:
            k = PyLong_AsUnsignedLongLong(key)
        except OverflowError:
            raise OverflowError(f"jump_hash key must be an unsigned 64-bit integer, not {key}") from None
        b = -1
        j = 0
        while j < nn:
            b = j
            k = k * 2862933555777941757ULL + 1
            j = <int64_t>(<double>(b + 1) * (2147483648.0 / <double>((k >> 33) + 1)))
        return b
    if n < 1:
        raise ValueError(f"jump_hash needs n >= 1, not {n}")
    if not 0 <= key <= _RING_U64:
        raise OverflowError(f"jump_hash key must be an unsigned 64-bit integer, not {key}")
    return _ring_jump_generic(key, n)


cdef int _ring_cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0]
    cdef uint64_t y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef class HashRing:
    """A ketama-compatible consistent-hash ring over MD5 (as libketama and memcached clients).

    Each node gets ``vnodes`` points (scaled by its weight; ``vnodes`` is a multiple of 4): for
    ``i`` in ``range(vnodes // 4 * len(nodes) * weight // total_weight)`` the MD5 digest of
    ``f"{node}-{i}"`` gives 4 points, each 4 digest bytes read little-endian. A key's hash is the
    first 4 bytes of its MD5 digest, little-endian; its owner is the node of the first point at or
    after the hash, wrapping around. Where two nodes draw the same point, the node whose name
    sorts first (by UTF-8 bytes) keeps it. ``PROTOCOL.md`` pins this down for other languages.
    """

    cdef uint32_t* _points
    cdef uint32_t* _owners  # parallel to _points: index into _names
    cdef Py_ssize_t _npoints
    cdef Py_ssize_t _vnodes
    cdef dict _weights      # node -> weight, in insertion order
    cdef tuple _names       # the nodes when the ring was last built, in insertion order

    def __cinit__(self):
        self._points = NULL
        self._owners = NULL
        self._npoints = 0
        self._weights = {}
        self._names = ()

    def __dealloc__(self):
        PyMem_Free(self._points)
        PyMem_Free(self._owners)

    def __init__(self, nodes=(), vnodes=160, weights=None):
        if vnodes < 4 or vnodes % 4:
            raise ValueError(f"vnodes must be a positive multiple of 4, not {vnodes}")
        self._vnodes = vnodes
        self._weights = {}
        weights = dict(weights or {})
        for node in nodes:
            self._check_new(node, weights.get(node, 1))
            self._weights[node] = weights.pop(node, 1)
        if weights:
            raise ValueError(f"weights name nodes that are not on the ring: {sorted(weights)}")
        self._rebuild()

    cdef _check_new(self, node, weight):
        if not isinstance(node, str):
            raise TypeError(f"ring node names must be str, not {type(node).__name__}")
        if node in self._weights:
            raise ValueError(f"node {node!r} is already on the ring")
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"node {node!r}: weight must be a positive integer, not {weight!r}")

    cdef _rebuild(self):
        """Recompute the continuum from ``_weights``; the ring is unchanged if this raises."""
        cdef tuple names = tuple(self._weights)
        cdef Py_ssize_t n = len(names)
        cdef Py_ssize_t idx, r, i, m, total_points, count, name_len, digits, kept
        cdef uint32_t* rank = NULL
        cdef uint32_t* by_rank = NULL
        cdef uint64_t* keys = NULL
        cdef uint32_t* points = NULL
        cdef uint32_t* owners = NULL
        cdef Py_ssize_t* counts = NULL
        cdef char* buf = NULL
        cdef const char* utf8
        cdef uint32_t w[4]
        cdef uint32_t point
        cdef char tmp[24]
        cdef int k
        cdef Py_ssize_t v

        if n == 0:
            PyMem_Free(self._points)
            PyMem_Free(self._owners)
            self._points = self._owners = NULL
            self._npoints = 0
            self._names = names
            return
        # Digests per node: the integer formula of libketama, in Python ints (weights are unbounded).
        total = sum(self._weights.values())
        per_node = self._vnodes // 4
        py_counts = [per_node * n * self._weights[node] // total for node in names]
        # Tie rule: on equal points the node whose UTF-8 name sorts first wins, so each point is
        # sorted as (point << 32 | rank of its node's UTF-8 name) and the first of a run is kept.
        encoded = [node.encode("utf-8") for node in names]
        order = sorted(range(n), key=encoded.__getitem__)
        try:
            rank = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
            by_rank = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
            counts = <Py_ssize_t*>PyMem_Malloc(n * sizeof(Py_ssize_t))
            if rank == NULL or by_rank == NULL or counts == NULL:
                raise MemoryError()
            total_points = 0
            for r in range(n):
                idx = order[r]
                rank[idx] = <uint32_t>r
                by_rank[r] = <uint32_t>idx
            for idx in range(n):
                counts[idx] = py_counts[idx]
                total_points += 4 * counts[idx]
            keys = <uint64_t*>PyMem_Malloc(max(total_points, 1) * sizeof(uint64_t))
            if keys == NULL:
                raise MemoryError()
            m = 0
            for idx in range(n):
                utf8 = PyBytes_AS_STRING(encoded[idx])
                name_len = PyBytes_GET_SIZE(encoded[idx])
                buf = <char*>PyMem_Malloc(name_len + 24)
                if buf == NULL:
                    raise MemoryError()
                memcpy(buf, utf8, name_len)
                buf[name_len] = b'-'
                for i in range(counts[idx]):
                    # "<node>-<i>" with i in decimal: write the digits backwards, then copy them.
                    digits = 0
                    v = i
                    while True:
                        tmp[digits] = <char>(48 + v % 10)
                        digits += 1
                        v //= 10
                        if v == 0:
                            break
                    for r in range(digits):
                        buf[name_len + 1 + r] = tmp[digits - 1 - r]
                    herd_md5(buf, <size_t>(name_len + 1 + digits), w)
                    for k in range(4):
                        keys[m] = (<uint64_t>w[k] << 32) | rank[idx]
                        m += 1
                PyMem_Free(buf)
                buf = NULL
            qsort(keys, <size_t>total_points, sizeof(uint64_t), _ring_cmp_u64)
            points = <uint32_t*>PyMem_Malloc(max(total_points, 1) * sizeof(uint32_t))
            owners = <uint32_t*>PyMem_Malloc(max(total_points, 1) * sizeof(uint32_t))
            if points == NULL or owners == NULL:
                raise MemoryError()
            kept = 0
            for i in range(total_points):
                point = <uint32_t>(keys[i] >> 32)
                if kept and points[kept - 1] == point:
                    continue  # tie: the first name in byte order already holds this point
                points[kept] = point
                owners[kept] = by_rank[<uint32_t>keys[i]]
                kept += 1
        except BaseException:
            PyMem_Free(points)
            PyMem_Free(owners)
            raise
        finally:
            PyMem_Free(rank)
            PyMem_Free(by_rank)
            PyMem_Free(counts)
            PyMem_Free(keys)
            PyMem_Free(buf)
        PyMem_Free(self._points)
        PyMem_Free(self._owners)
        self._points = points
        self._owners = owners
        self._npoints = kept
        self._names = names

    cdef inline Py_ssize_t _index(self, object key) except -1:
        cdef uint32_t w[4]
        cdef uint32_t h
        cdef const uint32_t* pts = self._points
        cdef Py_ssize_t n = self._npoints, half, i
        if n == 0:
            raise _EmptyRingError("the hash ring has no nodes; add one before looking up keys")
        _ring_md5(key, w)
        h = w[0]  # first 4 digest bytes, little-endian
        # Branchless lower bound (the first point >= h): everything before pts stays < h and the
        # answer stays within [pts, pts + n]; the select compiles to a cmov, not a branch that
        # a random hash would mispredict half the time.
        while n > 1:
            half = n >> 1
            pts = pts + half if pts[half] < h else pts
            n -= half
        i = (pts - self._points) + (pts[0] < h)
        return 0 if i == self._npoints else i

    def lookup(self, key):
        """The node that owns ``key`` (str or bytes)."""
        cdef Py_ssize_t i = self._index(key)
        return self._names[self._owners[i]]

    def lookup_n(self, key, n):
        """Up to ``n`` distinct nodes for ``key`` in ring order, the owner first (for replicas)."""
        cdef Py_ssize_t want, i, step, size, nnodes, got = 0
        cdef uint32_t idx
        cdef char small[64]
        cdef char* seen = small
        if n < 0:
            raise ValueError(f"lookup_n needs n >= 0, not {n}")
        nnodes = len(self._weights)
        want = min(n, nnodes)
        if want == 0:
            return []
        i = self._index(key)
        size = self._npoints
        found = []
        if nnodes > 64:
            seen = <char*>PyMem_Malloc(nnodes)
            if seen == NULL:
                raise MemoryError()
        try:
            for step in range(nnodes):
                seen[step] = 0
            for step in range(size):
                idx = self._owners[i]
                i += 1
                if i == size:
                    i = 0
                if not seen[idx]:
                    seen[idx] = 1
                    found.append(self._names[idx])
                    got += 1
                    if got == want:
                        break
        finally:
            if seen != small:
                PyMem_Free(seen)
        return found

    def add(self, node, weight=1):
        """Add ``node`` with an integer ``weight`` (its share relative to the others)."""
        self._check_new(node, weight)
        self._weights[node] = weight
        try:
            self._rebuild()
        except BaseException:
            del self._weights[node]  # e.g. a name that cannot be UTF-8 encoded: leave the ring as it was
            raise

    def remove(self, node):
        """Remove ``node``; its keys move to the nodes that follow its points."""
        if node not in self._weights:
            raise KeyError(f"node {node!r} is not on the ring (nodes: {sorted(self._weights)})")
        weight = self._weights.pop(node)
        try:
            self._rebuild()
        except BaseException:
            self._weights[node] = weight  # (insertion order changes; only on MemoryError)
            raise

    @property
    def nodes(self):
        """The nodes, in the order they were added."""
        return list(self._weights)

    @property
    def vnodes(self):
        """Points per node at weight 1 (on equal weights, exactly the points of each node)."""
        return self._vnodes

    def weight(self, node):
        """The weight of ``node``."""
        return self._weights[node]

    def points(self):
        """The whole continuum as sorted ``(point, node)`` pairs (for inspection and test vectors)."""
        cdef Py_ssize_t i
        out = PyList_New(self._npoints)
        for i in range(self._npoints):
            pair = (self._points[i], self._names[self._owners[i]])
            Py_INCREF(pair)
            PyList_SET_ITEM(out, i, pair)
        return out

    def __len__(self):
        return len(self._weights)

    def __contains__(self, node):
        return node in self._weights

    def __repr__(self):
        return f"HashRing({self.nodes!r}, vnodes={self._vnodes})"

    def __reduce__(self):
        return (type(self), (list(self._weights), self._vnodes, dict(self._weights)))
