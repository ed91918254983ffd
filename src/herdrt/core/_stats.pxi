# Online statistics: Welford / Chan et al., and a DDSketch-style quantile sketch.
#
# The compiled twin of the statistics in ``_pure.py``. Per-sample arithmetic is written in the same
# order as the twin, so ``update``, ``merge`` and every sketch bucket come out bit for bit the same;
# ``update_many`` on a buffer of doubles takes a faster, chunked route whose figures agree within
# float rounding. Every C-level name here starts with ``_st`` (this file shares a module with the
# other fragments of ``_fast.pyx``).

cimport cython
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.object cimport Py_TYPE
from libc.math cimport ceil, log, pow, sqrt, INFINITY, NAN
from libc.stdlib cimport free, realloc
from libc.string cimport memmove, memset
from libc.stdint cimport int64_t

# Magnitudes below the smallest normal double (zero and subnormals) count in the zero bucket.
cdef double _ST_TINY = 2.2250738585072014e-308
cdef enum:
    # Samples per chunk in OnlineStats.update_many (8 KiB of doubles: the second pass reads L1).
    _ST_CHUNK = 1024
    # Buffers at least this long are summarised without the GIL.
    _ST_NOGIL_MIN = 16384
# Bucket indices are int64 kept within +-2**61, so that index arithmetic cannot overflow.
# (The widest legitimate range, at a relative accuracy of 1e-15, is about +-3.6e17.)
cdef int64_t _ST_INDEX_LIMIT = 1LL << 61
# Largest max_bins: a store is a dense array, so max_bins bounds its memory (8 MiB). At this
# size a store spans the whole double range for any relative accuracy above 0.07%.
cdef Py_ssize_t _ST_MAX_BINS = 1 << 20
cdef int64_t _ST_INT64_MAX = 0x7FFFFFFFFFFFFFFF


cdef inline bint _st_finite(double x) noexcept nogil:
    return x - x == 0.0  # False for NaN and +-inf (as the twin)


cdef inline double _st_as_double(object x) except? -1.0:
    # float(x), as the twin does (so a str such as "2.5" is accepted there and here alike)
    if PyFloat_CheckExact(x):
        return PyFloat_AS_DOUBLE(x)
    return float(x)


# ---------------------------------------------------------------------------------------------
# OnlineStats
# ---------------------------------------------------------------------------------------------

cdef struct _StMoments:
    int64_t n
    double mean
    double m2
    double mn
    double mx
    double sum
    int64_t skipped


cdef inline void _st_moments_clear(_StMoments* s) noexcept nogil:
    s.n = 0
    s.mean = 0.0
    s.m2 = 0.0
    s.mn = INFINITY
    s.mx = -INFINITY
    s.sum = 0.0
    s.skipped = 0


cdef inline void _st_welford(_StMoments* s, double x) noexcept nogil:
    # Same operations in the same order as _pure.OnlineStats.update.
    cdef double delta
    if not _st_finite(x):
        s.skipped += 1
        return
    s.n += 1
    delta = x - s.mean
    s.mean += delta / <double>s.n
    s.m2 += delta * (x - s.mean)
    s.sum += x
    if x < s.mn:
        s.mn = x
    if x > s.mx:
        s.mx = x


cdef inline void _st_chan(_StMoments* a, const _StMoments* b) noexcept nogil:
    # Same operations in the same order as _pure.OnlineStats.merge (Chan et al.).
    # b's fields are read before a is written, so a may be b.
    cdef int64_t na = a.n, nb = b.n, n
    cdef double delta, bmean = b.mean, bm2 = b.m2, bmn = b.mn, bmx = b.mx, bsum = b.sum
    a.skipped += b.skipped
    if nb == 0:
        return
    if na == 0:
        a.n = nb
        a.mean = bmean
        a.m2 = bm2
        a.mn = bmn
        a.mx = bmx
        a.sum = bsum
        return
    n = na + nb
    delta = bmean - a.mean
    a.mean += delta * <double>nb / <double>n
    a.m2 += bm2 + delta * delta * <double>na * <double>nb / <double>n
    a.n = n
    a.sum += bsum
    if bmn < a.mn:
        a.mn = bmn
    if bmx > a.mx:
        a.mx = bmx


@cython.cdivision(True)
cdef void _st_chunk(_StMoments* acc, const double* p, Py_ssize_t m) noexcept nogil:
    # Fold m (<= _ST_CHUNK) samples into acc. Two passes over data that stays in L1, each with four
    # independent accumulators so the adds pipeline: (1) sum, min, max; (2) deviations from the
    # chunk mean. Then one Chan merge. A non-finite sample (or a sum that overflows) shows up as a
    # non-finite chunk sum; such a chunk goes sample by sample through Welford instead.
    cdef Py_ssize_t i, m4 = m & ~(<Py_ssize_t>3)
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef double lo0 = INFINITY, lo1 = INFINITY, lo2 = INFINITY, lo3 = INFINITY
    cdef double hi0 = -INFINITY, hi1 = -INFINITY, hi2 = -INFINITY, hi3 = -INFINITY
    cdef double x0, x1, x2, x3, total, cmean, d0, d1, d2, d3
    cdef double e0 = 0.0, e1 = 0.0, e2 = 0.0, e3 = 0.0
    cdef double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0
    cdef double dev, sq
    cdef _StMoments chunk
    if m <= 0:
        return
    i = 0
    while i < m4:
        x0 = p[i]
        x1 = p[i + 1]
        x2 = p[i + 2]
        x3 = p[i + 3]
        s0 += x0
        s1 += x1
        s2 += x2
        s3 += x3
        lo0 = x0 if x0 < lo0 else lo0
        lo1 = x1 if x1 < lo1 else lo1
        lo2 = x2 if x2 < lo2 else lo2
        lo3 = x3 if x3 < lo3 else lo3
        hi0 = x0 if x0 > hi0 else hi0
        hi1 = x1 if x1 > hi1 else hi1
        hi2 = x2 if x2 > hi2 else hi2
        hi3 = x3 if x3 > hi3 else hi3
        i += 4
    while i < m:
        x0 = p[i]
        s0 += x0
        lo0 = x0 if x0 < lo0 else lo0
        hi0 = x0 if x0 > hi0 else hi0
        i += 1
    total = (s0 + s1) + (s2 + s3)
    if not _st_finite(total):
        for i in range(m):
            _st_welford(acc, p[i])
        return
    cmean = total / <double>m
    i = 0
    while i < m4:
        d0 = p[i] - cmean
        d1 = p[i + 1] - cmean
        d2 = p[i + 2] - cmean
        d3 = p[i + 3] - cmean
        e0 += d0
        e1 += d1
        e2 += d2
        e3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
        i += 4
    while i < m:
        d0 = p[i] - cmean
        e0 += d0
        q0 += d0 * d0
        i += 1
    # The rounding error of cmean is corrected to first order: sum(x - c)^2 - (sum(x - c))^2 / m
    # is the exact squared deviation from the true mean, whatever c is.
    dev = (e0 + e1) + (e2 + e3)
    sq = (q0 + q1) + (q2 + q3) - dev * dev / <double>m
    chunk.n = m
    chunk.mean = cmean + dev / <double>m
    chunk.m2 = 0.0 if sq < 0.0 else sq  # rounding can leave a hair below 0; NaN/inf pass
    chunk.mn = lo0 if lo0 < lo1 else lo1
    if lo2 < chunk.mn:
        chunk.mn = lo2
    if lo3 < chunk.mn:
        chunk.mn = lo3
    chunk.mx = hi0 if hi0 > hi1 else hi1
    if hi2 > chunk.mx:
        chunk.mx = hi2
    if hi3 > chunk.mx:
        chunk.mx = hi3
    chunk.sum = total
    chunk.skipped = 0
    _st_chan(acc, &chunk)


cdef void _st_summarise(_StMoments* acc, const double[:] view) noexcept nogil:
    # acc (cleared by the caller) := the moments of every sample of view, chunk by chunk.
    cdef Py_ssize_t n = view.shape[0], start = 0, m, j
    cdef Py_ssize_t stride = view.strides[0]
    cdef double tmp[_ST_CHUNK]
    cdef const char* base
    if n == 0:
        return
    base = <const char*>&view[0]
    while start < n:
        m = n - start
        if m > _ST_CHUNK:
            m = _ST_CHUNK
        if stride == sizeof(double):
            _st_chunk(acc, <const double*>base + start, m)
        else:  # strided (e.g. a sliced memoryview): gather the chunk first
            for j in range(m):
                tmp[j] = (<const double*>(base + (start + j) * stride))[0]
            _st_chunk(acc, tmp, m)
        start += m


cdef inline object _st_double_view(object samples):
    # A 1-D typed memoryview of doubles over samples, or None when samples is no such buffer.
    cdef const double[:] view
    if not PyObject_CheckBuffer(samples):
        return None
    try:
        view = samples
    except (ValueError, TypeError, BufferError):  # another item type, or not 1-D
        return None
    return view


@cython.auto_pickle(False)
cdef class OnlineStats:
    """Count, mean, variance, min, max and sum of a stream, in O(1) memory (Welford's algorithm).

    Mergeable (Chan et al.): ``a.merge(b)`` equals one ``OnlineStats`` fed both streams, so
    per-actor stats merge into per-node and herd-wide views. Non-finite samples (NaN, +-inf) are
    not folded in — one NaN would poison every later figure — but counted in ``skipped``. With no
    samples, ``mean``, ``variance``, ``stddev``, ``min`` and ``max`` are NaN.

    Compiled twin of ``herdrt._pure.OnlineStats``: seven C numbers, no Python objects. Not
    picklable; ``to_dict()`` / ``from_dict()`` is the wire form.
    """

    cdef _StMoments _s

    def __cinit__(self):
        _st_moments_clear(&self._s)

    def reset(self):
        """Forget every sample."""
        _st_moments_clear(&self._s)

    def update(self, x):
        """Add one sample."""
        _st_welford(&self._s, _st_as_double(x))

    def update_many(self, samples):
        """Add every sample of an iterable of numbers or a buffer of doubles (e.g. ``array('d')``).

        A 1-D buffer of doubles is read in place through the buffer protocol, in chunks (results
        agree with one ``update`` per sample within float rounding); anything else is iterated.
        """
        cdef const double[:] view
        cdef _StMoments acc
        if isinstance(samples, memoryview) and samples.format != "d":
            raise TypeError(f"update_many needs a buffer of doubles (format 'd'), not {samples.format!r}")
        got = _st_double_view(samples)
        if got is None:
            for x in samples:
                _st_welford(&self._s, _st_as_double(x))
            return
        view = got
        _st_moments_clear(&acc)
        if view.shape[0] >= _ST_NOGIL_MIN:
            with nogil:
                _st_summarise(&acc, view)
        else:
            _st_summarise(&acc, view)
        _st_chan(&self._s, &acc)

    def merge(self, OnlineStats other not None):
        """Fold ``other`` into this one (in place); returns ``self``."""
        _st_chan(&self._s, &other._s)
        return self

    def copy(self):
        """An independent copy."""
        cdef OnlineStats twin = OnlineStats.__new__(OnlineStats)
        twin._s = self._s
        return twin

    @property
    def count(self):
        return self._s.n

    @property
    def skipped(self):
        """Non-finite samples that were refused."""
        return self._s.skipped

    @property
    def mean(self):
        return self._s.mean if self._s.n else NAN

    @property
    def variance(self):
        """Population variance."""
        return self._s.m2 / <double>self._s.n if self._s.n else NAN

    @property
    def sample_variance(self):
        """Sample (Bessel-corrected) variance; NaN below two samples."""
        return self._s.m2 / <double>(self._s.n - 1) if self._s.n > 1 else NAN

    @property
    def stddev(self):
        """Population standard deviation."""
        return sqrt(self._s.m2 / <double>self._s.n) if self._s.n else NAN

    @property
    def min(self):
        return self._s.mn if self._s.n else NAN

    @property
    def max(self):
        return self._s.mx if self._s.n else NAN

    @property
    def sum(self):
        return self._s.sum

    def to_dict(self):
        """The state as a plain dict (msgpack-ready); ``from_dict`` restores it exactly."""
        return {
            "count": self._s.n,
            "mean": self._s.mean,
            "m2": self._s.m2,
            "min": self._s.mn,
            "max": self._s.mx,
            "sum": self._s.sum,
            "skipped": self._s.skipped,
        }

    @classmethod
    def from_dict(cls, state):
        """Rebuild from ``to_dict()`` output (e.g. received from another node)."""
        cdef OnlineStats self
        try:
            n, skipped = state["count"], state["skipped"]
            floats = [float(state[k]) for k in ("mean", "m2", "min", "max", "sum")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an OnlineStats state: {exc!r}") from None
        if not isinstance(n, int) or n < 0 or not isinstance(skipped, int) or skipped < 0:
            raise ValueError("OnlineStats state: count and skipped must be non-negative integers")
        if n > _ST_INT64_MAX or skipped > _ST_INT64_MAX:
            raise ValueError("OnlineStats state: count and skipped must fit in 64 bits")
        self = cls()
        self._s.n = n
        self._s.skipped = skipped
        self._s.mean, self._s.m2, self._s.mn, self._s.mx, self._s.sum = floats
        return self

    def __repr__(self):
        return (
            f"OnlineStats(count={self.count}, mean={self.mean:.6g}, stddev={self.stddev:.6g}, "
            f"min={self.min:.6g}, max={self.max:.6g})"
        )


# ---------------------------------------------------------------------------------------------
# QuantileSketch
# ---------------------------------------------------------------------------------------------

cdef struct _StStore:
    # A dense window of bucket counts: bins[k] counts bucket base + k, for k in [0, cap).
    # Buckets present (count > 0) lie in [lo, hi]; lo > hi means the store is empty. cap grows
    # (realloc) as the buckets spread, up to max_bins: collapsing keeps hi - lo < max_bins.
    int64_t* bins
    Py_ssize_t cap
    int64_t base
    int64_t lo
    int64_t hi


cdef inline void _st_store_init(_StStore* s) noexcept nogil:
    s.bins = NULL
    s.cap = 0
    s.base = 0
    s.lo = 1
    s.hi = 0


cdef inline void _st_store_free(_StStore* s) noexcept nogil:
    free(s.bins)
    _st_store_init(s)


cdef int _st_store_cover(_StStore* s, int64_t lo, int64_t hi, Py_ssize_t max_bins) except -1 nogil:
    # Make the window cover [lo, hi] (hi - lo < max_bins; [lo, hi] holds every present bucket),
    # moving the counts along. Leaves slack on the side the store grows towards.
    cdef Py_ssize_t need, cap, old_off, new_off, span
    cdef int64_t base
    cdef int64_t* bins
    if s.cap and lo >= s.base and hi < s.base + s.cap:
        return 0
    need = <Py_ssize_t>(hi - lo + 1)
    cap = s.cap
    if need > cap:
        cap = 2 * cap
        if cap < 16:
            cap = 16
        if cap < need:
            cap = need
        if cap > max_bins:
            cap = max_bins
    if not s.cap or hi >= s.base + s.cap:
        base = lo
    else:
        base = hi - cap + 1
    bins = s.bins
    if cap != s.cap:
        bins = <int64_t*>realloc(s.bins, cap * sizeof(int64_t))
        if bins == NULL:
            with gil:
                raise MemoryError()
        s.bins = bins
    if s.lo <= s.hi:
        old_off = <Py_ssize_t>(s.lo - s.base)
        new_off = <Py_ssize_t>(s.lo - base)
        span = <Py_ssize_t>(s.hi - s.lo + 1)
        memmove(bins + new_off, bins + old_off, span * sizeof(int64_t))
        memset(bins, 0, new_off * sizeof(int64_t))
        memset(bins + new_off + span, 0, (cap - new_off - span) * sizeof(int64_t))
    else:
        memset(bins, 0, cap * sizeof(int64_t))
    s.cap = cap
    s.base = base
    return 0


cdef int _st_store_put(_StStore* s, int64_t index, int64_t count, Py_ssize_t max_bins) except -1 nogil:
    # _pure.QuantileSketch._store: add count at index; a new highest bucket folds every bucket
    # below top - max_bins + 1 into that one, and lower indexes land there too.
    cdef int64_t top, floor, total, j, last
    if s.lo > s.hi:
        _st_store_cover(s, index, index, max_bins)
        s.bins[index - s.base] += count
        s.lo = index
        s.hi = index
        return 0
    top = s.hi
    if index > top:
        top = index
        floor = top - max_bins + 1
        if s.lo < floor:
            total = 0
            last = floor - 1 if floor - 1 < s.hi else s.hi
            j = s.lo
            while j <= last:
                total += s.bins[j - s.base]
                s.bins[j - s.base] = 0
                j += 1
            if floor > s.hi:  # every bucket folded: only the total is left, at floor
                s.lo = 1
                s.hi = 0
                _st_store_cover(s, floor, floor, max_bins)
                s.lo = floor
                s.hi = floor
            else:
                s.lo = floor
            s.bins[floor - s.base] += total
    floor = top - max_bins + 1
    if index < floor:
        index = floor
    if index < s.lo:
        _st_store_cover(s, index, s.hi, max_bins)
        s.lo = index
    elif index > s.hi:
        _st_store_cover(s, s.lo, index, max_bins)
        s.hi = index
    s.bins[index - s.base] += count
    return 0


cdef inline int64_t _st_store_at(const _StStore* s, int64_t index) noexcept nogil:
    return s.bins[index - s.base]


cdef list _st_store_pairs(const _StStore* s):
    cdef int64_t i
    cdef list out = []
    if s.lo <= s.hi:
        for i in range(s.lo, s.hi + 1):
            if s.bins[i - s.base]:
                out.append([i, s.bins[i - s.base]])
    return out


cdef int _st_store_merge(_StStore* dst, const _StStore* src, Py_ssize_t max_bins) except -1 nogil:
    # _pure merge: every bucket of src, in ascending order, through _st_store_put.
    cdef int64_t i, c
    if src.lo > src.hi:
        return 0
    i = src.lo
    while i <= src.hi:
        c = src.bins[i - src.base]
        if c:
            _st_store_put(dst, i, c, max_bins)
        i += 1
    return 0


cdef int _st_store_copy(_StStore* dst, const _StStore* src) except -1:
    _st_store_free(dst)
    if src.cap:
        dst.bins = <int64_t*>realloc(NULL, src.cap * sizeof(int64_t))
        if dst.bins == NULL:
            raise MemoryError()
        memmove(dst.bins, src.bins, src.cap * sizeof(int64_t))
    dst.cap = src.cap
    dst.base = src.base
    dst.lo = src.lo
    dst.hi = src.hi
    return 0


cdef int _st_bad_index(double r, double lg) except -1 with gil:
    # The twin's error for a ratio log(x) / lg that is no integer bucket index: lg is 0 when
    # relative_accuracy is so small that gamma rounds to 1; otherwise what math.ceil raises.
    if lg == 0.0:
        raise ZeroDivisionError("float division by zero")
    if r != r:
        raise ValueError("cannot convert float NaN to integer")
    raise OverflowError("bucket index out of range (relative_accuracy too small for this sample?)")


@cython.auto_pickle(False)
cdef class QuantileSketch:
    """A mergeable quantile sketch with bounded relative error (DDSketch-style log buckets).

    A value ``x > 0`` falls in bucket ``ceil(log(x) / log(gamma))`` with
    ``gamma = (1 + a) / (1 - a)`` for relative accuracy ``a`` (default 1%); negative values use the
    same buckets of ``-x`` in a second store; zero (and subnormals) are counted apart. Each store
    keeps at most ``max_bins`` consecutive buckets ending at the highest one seen; lower ones fold
    into its lowest bucket (so only the smallest magnitudes can lose accuracy). ``quantile(q)``
    returns a value within relative error ``a`` of the true ``q``-quantile (rank ``q * (n - 1)``,
    lower), clamped to the exact min and max (which ``q`` = 0 and 1 return). Non-finite samples are
    skipped and counted.

    Compiled twin of ``herdrt._pure.QuantileSketch`` (identical buckets and quantiles). Each store
    is a dense window of counts that grows as the buckets spread, up to ``max_bins`` entries
    (``sys.getsizeof`` counts it); ``max_bins`` is at most 2**20.
    """

    cdef double _a
    cdef double _gamma
    cdef double _lg
    cdef Py_ssize_t _max_bins
    cdef _StStore _pos
    cdef _StStore _neg
    cdef int64_t _zero
    cdef int64_t _n
    cdef double _min
    cdef double _max
    cdef int64_t _skipped

    def __cinit__(self):
        _st_store_init(&self._pos)
        _st_store_init(&self._neg)

    def __init__(self, double relative_accuracy=0.01, Py_ssize_t max_bins=2048):
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), not {relative_accuracy}")
        if max_bins < 1:
            raise ValueError(f"max_bins must be positive, not {max_bins}")
        if max_bins > _ST_MAX_BINS:
            raise ValueError(f"max_bins must be at most {_ST_MAX_BINS}, not {max_bins}")
        self._a = relative_accuracy
        self._gamma = (1.0 + self._a) / (1.0 - self._a)
        self._lg = log(self._gamma)
        self._max_bins = max_bins
        _st_store_free(&self._pos)
        _st_store_free(&self._neg)
        self._zero = 0
        self._n = 0
        self._min = INFINITY
        self._max = -INFINITY
        self._skipped = 0

    def __dealloc__(self):
        _st_store_free(&self._pos)
        _st_store_free(&self._neg)

    @property
    def relative_accuracy(self):
        return self._a

    @property
    def count(self):
        return self._n

    @property
    def skipped(self):
        return self._skipped

    cdef inline int64_t _index(self, double magnitude) except? -1 nogil:
        cdef double r = ceil(log(magnitude) / self._lg)
        if not (-<double>_ST_INDEX_LIMIT < r < <double>_ST_INDEX_LIMIT):
            _st_bad_index(r, self._lg)
        return <int64_t>r

    cdef int _add(self, double x) except -1 nogil:
        if not _st_finite(x):
            self._skipped += 1
            return 0
        if x >= _ST_TINY:
            _st_store_put(&self._pos, self._index(x), 1, self._max_bins)
        elif x <= -_ST_TINY:
            _st_store_put(&self._neg, self._index(-x), 1, self._max_bins)
        else:
            self._zero += 1
        self._n += 1
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x
        return 0

    def add(self, x):
        """Add one sample."""
        self._add(_st_as_double(x))

    def add_many(self, samples):
        """Add every sample of an iterable or buffer of doubles (a 1-D buffer is read in place)."""
        cdef const double[:] view
        cdef Py_ssize_t i
        got = _st_double_view(samples)
        if got is None:
            for x in samples:
                self._add(_st_as_double(x))
            return
        view = got
        for i in range(view.shape[0]):
            self._add(view[i])

    cdef inline double _value(self, int64_t index) noexcept nogil:
        return 2.0 * pow(self._gamma, <double>index) / (self._gamma + 1.0)

    def quantile(self, double q):
        """The ``q``-quantile (0 <= q <= 1), e.g. 0.5, 0.9, 0.99; NaN when empty."""
        cdef double rank, value
        cdef int64_t seen = 0, i
        cdef bint done = False
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile needs 0 <= q <= 1, not {q}")
        if self._n == 0:
            return NAN
        if q == 0.0:
            return self._min
        if q == 1.0:
            return self._max
        rank = q * <double>(self._n - 1)
        value = self._max
        if self._neg.lo <= self._neg.hi:
            i = self._neg.hi
            while i >= self._neg.lo:
                seen += _st_store_at(&self._neg, i)
                if seen > rank:
                    value = -self._value(i)
                    done = True
                    break
                i -= 1
        if not done:
            seen += self._zero
            if seen > rank:
                value = 0.0
                done = True
        if not done and self._pos.lo <= self._pos.hi:
            i = self._pos.lo
            while i <= self._pos.hi:
                seen += _st_store_at(&self._pos, i)
                if seen > rank:
                    value = self._value(i)
                    break
                i += 1
        # min(max(value, min), max) as Python evaluates it
        if self._min > value:
            value = self._min
        if self._max < value:
            value = self._max
        return value

    def merge(self, QuantileSketch other not None):
        """Fold ``other`` (same accuracy and bins) into this sketch, in place; returns ``self``."""
        cdef QuantileSketch src = other
        if other._a != self._a or other._max_bins != self._max_bins:
            raise ValueError("can only merge sketches with the same relative_accuracy and max_bins")
        if other is self:
            src = QuantileSketch.__new__(QuantileSketch)
            src._a, src._max_bins = other._a, other._max_bins
            _st_store_copy(&src._pos, &other._pos)
            _st_store_copy(&src._neg, &other._neg)
            src._zero, src._n, src._skipped = other._zero, other._n, other._skipped
            src._min, src._max = other._min, other._max
        _st_store_merge(&self._pos, &src._pos, self._max_bins)
        _st_store_merge(&self._neg, &src._neg, self._max_bins)
        self._zero += src._zero
        self._n += src._n
        self._skipped += src._skipped
        if src._min < self._min:
            self._min = src._min
        if src._max > self._max:
            self._max = src._max
        return self

    def to_dict(self):
        """Plain dict state (msgpack-ready; bucket maps as sorted ``[index, count]`` pairs)."""
        return {
            "relative_accuracy": self._a,
            "max_bins": self._max_bins,
            "pos": _st_store_pairs(&self._pos),
            "neg": _st_store_pairs(&self._neg),
            "zero": self._zero,
            "count": self._n,
            "min": self._min,
            "max": self._max,
            "skipped": self._skipped,
        }

    @classmethod
    def from_dict(cls, state):
        """Rebuild from ``to_dict()`` output.

        Stricter than a plain read (this state arrives from other nodes): bucket counts must be
        positive, ``zero``, ``count`` and ``skipped`` non-negative, all within 64 bits, and bucket
        indexes within +-2**61.
        """
        cdef QuantileSketch self
        try:
            self = cls(state["relative_accuracy"], state["max_bins"])
            for i, c in state["pos"]:
                self._put_checked(&self._pos, int(i), int(c))
            for i, c in state["neg"]:
                self._put_checked(&self._neg, int(i), int(c))
            self._zero = _st_nonneg(int(state["zero"]), "zero")
            self._n = _st_nonneg(int(state["count"]), "count")
            self._min = float(state["min"])
            self._max = float(state["max"])
            self._skipped = _st_nonneg(int(state["skipped"]), "skipped")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"not a QuantileSketch state: {exc!r}") from None
        return self

    cdef int _put_checked(self, _StStore* store, object index, object count) except -1:
        if count < 1:
            raise ValueError(f"bucket {index} has count {count}; counts must be positive")
        if not -_ST_INDEX_LIMIT <= index <= _ST_INDEX_LIMIT:
            raise ValueError(f"bucket index {index} is out of range")
        _st_store_put(store, index, count, self._max_bins)
        return 0

    def __sizeof__(self):
        # the object and both dense stores (what max_bins bounds)
        return Py_TYPE(self).tp_basicsize + <Py_ssize_t>((self._pos.cap + self._neg.cap) * sizeof(int64_t))

    def __repr__(self):
        return f"QuantileSketch(count={self._n}, p50={self.quantile(0.5):.6g}, p99={self.quantile(0.99):.6g})"


cdef int64_t _st_nonneg(object value, str name) except? -1:
    if value < 0:
        raise ValueError(f"{name} must be non-negative, not {value}")
    return value
