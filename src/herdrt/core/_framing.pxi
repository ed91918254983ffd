# Framing, compiled: a 4-byte big-endian unsigned length, then one msgpack body.
#
# The twin is herdrt._pure (encode_frame, encode_frames, FrameDecoder); results are identical, down
# to the types of decoded values and the class of every error. The speed comes from _msgpack.h:
# frame bodies are walked in C and the objects built with the C API, bodies are decoded straight
# from the caller's buffer when no partial frame is pending, and short strings come from a
# per-decoder cache. bench/bench_unpack.py holds it to msgpack-python's C unpacker called per
# frame from this same framing in Cython: that takes 2.0-2.4x the time, small or large bodies.
# Module-level names here carry a _fr_ prefix: this fragment shares one module with the others.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject, Py_DECREF
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

import msgpack as _fr_msgpack

from herdrt.errors import FrameError, FrameTooLarge

cdef extern from "_msgpack.h":
    ctypedef struct hfr_keycache:
        pass
    ctypedef struct hfr_wbuf:
        unsigned char *buf
        size_t len
    void hfr_kc_init(hfr_keycache *kc) noexcept
    void hfr_kc_clear(hfr_keycache *kc) noexcept
    int hfr_setup(object ext_type, object timestamp) except -1
    # NULL with an exception set on a bad body (handled by FrameDecoder._bad_body)
    PyObject *hfr_unpack(hfr_keycache *kc, const unsigned char *body, Py_ssize_t n,
                         Py_ssize_t *used) noexcept
    void hfr_w_init(hfr_wbuf *w, unsigned char *stack, size_t cap) noexcept
    void hfr_w_free(hfr_wbuf *w) noexcept
    int hfr_w_bytes(hfr_wbuf *w, const void *data, size_t n) except -1
    # < 0 with an exception set: the caller lets msgpack.packb decide (and raise its own error)
    int hfr_pack_frame(hfr_wbuf *w, object o) noexcept
    uint32_t hfr_load32(const unsigned char *p) noexcept

hfr_setup(_fr_msgpack.ExtType, _fr_msgpack.Timestamp)

#: Default limit on a frame's body, in bytes (1 MiB).
DEFAULT_MAX_FRAME_SIZE = 1 << 20

cdef Py_ssize_t _FR_MAX_LENGTH = 0xFFFFFFFF
# Past this, a decoder's partial-frame buffer is released once it empties (a one-off large frame
# should not pin its memory for the life of the link).
cdef Py_ssize_t _FR_KEEP_BUFFER = 256 * 1024


cdef bytes _fr_slow_frame(obj):
    # The pure twin's path, for what the C packer refused: msgpack raises its own exact error
    # (TypeError, OverflowError, ValueError ...), or encodes what the C packer would not.
    body = _fr_msgpack.packb(obj, use_bin_type=True)
    if len(body) > _FR_MAX_LENGTH:
        raise FrameTooLarge(f"message encodes to {len(body)} bytes; a frame holds at most {_FR_MAX_LENGTH}")
    return len(body).to_bytes(4, "big") + body


def encode_frame(obj):
    """Encode one message as a frame: 4-byte big-endian body length, then the msgpack body.

    The body is byte for byte ``msgpack.packb(obj, use_bin_type=True)``. Raises ``TypeError`` for
    a value msgpack cannot carry (only None, bool, int, float, str, bytes, list/tuple, dict and
    msgpack ``ExtType``/``Timestamp`` travel)."""
    cdef unsigned char stack[512]
    cdef hfr_wbuf w
    hfr_w_init(&w, stack, sizeof(stack))
    try:
        if hfr_pack_frame(&w, obj) < 0:
            PyErr_Clear()
            return _fr_slow_frame(obj)
        return PyBytes_FromStringAndSize(<char *>w.buf, <Py_ssize_t>w.len)
    finally:
        hfr_w_free(&w)


def encode_frames(objs, max_size=None):
    """Encode a batch of messages into one buffer of consecutive frames (one write per batch).

    With ``max_size``, raises ``FrameTooLarge`` (naming the message's index and size) if any
    message's body would be longer than ``max_size`` bytes, the limit of the peer's decoder:
    nothing is returned then, so the caller can split or drop that message."""
    cdef unsigned char stack[4096]
    cdef hfr_wbuf w
    cdef bytes frame
    cdef size_t start, body
    cdef size_t limit = <size_t>_FR_MAX_LENGTH
    cdef Py_ssize_t i = 0
    if max_size is not None:
        if not 0 < max_size <= _FR_MAX_LENGTH:
            raise ValueError(f"max_size must be between 1 and {_FR_MAX_LENGTH}, not {max_size}")
        limit = <size_t>max_size
    hfr_w_init(&w, stack, sizeof(stack))
    try:
        for obj in objs:
            start = w.len
            if hfr_pack_frame(&w, obj) < 0:
                PyErr_Clear()
                frame = _fr_slow_frame(obj)
                hfr_w_bytes(&w, <const char *>frame, len(frame))
            body = w.len - start - 4
            if body > limit:
                raise FrameTooLarge(f"message {i} encodes to {body} bytes, over the frame limit of {limit}")
            i += 1
        return PyBytes_FromStringAndSize(<char *>w.buf, <Py_ssize_t>w.len)
    finally:
        hfr_w_free(&w)


cdef int _fr_pending_error() except -1:
    # Returns -1 to Cython with the exception hfr_unpack left set, so try/except can see it.
    return -1


cdef class FrameDecoder:
    """Streaming decoder of length-prefixed msgpack frames.

    ``feed(data)`` returns every message completed by ``data`` (possibly none) and keeps a partial
    frame for the next call, however the stream is split. A length prefix over ``max_frame_size``
    raises :class:`FrameTooLarge` from the header alone; a body that is not exactly one valid
    msgpack value raises :class:`FrameError`. Either way the messages decoded earlier in the same
    call are on the exception as ``exc.messages`` (nothing good is lost), and the decoder refuses
    all further input: the stream can no longer be trusted. ``close()`` raises :class:`FrameError`
    if the stream ended inside a frame.

    Each body decodes exactly as ``msgpack.unpackb(body, raw=False, strict_map_key=True)``.
    """

    cdef uint32_t _max          # the limit, as compared with length prefixes
    cdef object _max_obj        # the limit as given (what max_frame_size returns)
    cdef unsigned char *_buf    # the start of a frame not yet complete
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef object _failed         # None, or why the decoder refuses input
    cdef bint _busy             # inside feed(): the buffers must not move under the C reader
    cdef hfr_keycache _kc

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._failed = None
        self._busy = False
        hfr_kc_init(&self._kc)

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if not 0 < max_frame_size <= _FR_MAX_LENGTH:
            raise ValueError(f"max_frame_size must be between 1 and {_FR_MAX_LENGTH}, not {max_frame_size}")
        self._max_obj = max_frame_size
        self._max = int(max_frame_size)  # lengths are integers: length > 100.5 iff length > 100

    def __dealloc__(self):
        PyMem_Free(self._buf)
        hfr_kc_clear(&self._kc)

    @property
    def max_frame_size(self):
        """The largest frame body accepted, in bytes."""
        return self._max_obj

    @property
    def buffered(self):
        """Bytes held back: the start of a frame not yet complete."""
        return self._len

    def feed(self, data):
        """Add bytes from the stream; return the messages they complete, in order."""
        cdef Py_buffer view
        if self._failed is not None:
            raise FrameError(f"decoder refuses input after an earlier error: {self._failed}")
        self._check_idle()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        self._busy = True
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            self._busy = False
            PyBuffer_Release(&view)

    def close(self):
        """End of stream: raise :class:`FrameError` if it stopped inside a frame."""
        if self._failed is not None:
            return
        self._check_idle()
        if self._len:
            self._failed = f"stream ended inside a frame ({self._len} bytes buffered)"
            self._drop()
            raise FrameError(self._failed)
        self._failed = "decoder is closed"

    cdef int _check_idle(self) except -1:
        # Python code can run mid-feed (msgpack's ExtType and Timestamp constructors), and with it
        # another thread: neither may feed or close this decoder until the feed in progress ends.
        if self._busy:
            raise RuntimeError("FrameDecoder used while a feed() on it is in progress")
        return 0

    cdef list _feed(self, const unsigned char *data, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t pos = 0, take, need
        cdef uint32_t length
        if self._len:
            # finish the pending frame from the front of data
            if self._len < 4:
                take = min(4 - self._len, n)
                self._append(data, take)
                pos = take
                if self._len < 4:
                    return out
            length = hfr_load32(self._buf)
            if length > self._max:
                self._too_large(length, out)
            need = 4 + <Py_ssize_t>length - self._len
            take = min(need, n - pos)
            self._append(data + pos, take)
            pos += take
            if take < need:
                return out
            self._decode(self._buf + 4, length, out)
            self._len = 0
            if self._cap > _FR_KEEP_BUFFER:
                self._drop()
        # then every whole frame straight from the caller's buffer
        while n - pos >= 4:
            length = hfr_load32(data + pos)
            if length > self._max:
                self._too_large(length, out)
            if <Py_ssize_t>length > n - pos - 4:
                break
            self._decode(data + pos + 4, length, out)
            pos += 4 + <Py_ssize_t>length
        if pos < n:
            self._append(data + pos, n - pos)  # only the tail is copied
        return out

    cdef inline int _decode(self, const unsigned char *body, Py_ssize_t length, list out) except -1:
        cdef Py_ssize_t used = 0
        cdef PyObject *obj
        if length == 0:
            return self._fail(FrameError("frame body is empty (0 bytes); a frame holds one msgpack value"), out)
        obj = hfr_unpack(&self._kc, body, length, &used)
        if obj == NULL:
            return self._bad_body(length, out)
        if used != length:
            Py_DECREF(<object>obj)
            return self._fail(
                FrameError(f"frame body of {length} bytes holds one message and {length - used} trailing bytes"),
                out,
            )
        PyList_Append(out, <object>obj)
        Py_DECREF(<object>obj)
        return 0

    cdef int _bad_body(self, Py_ssize_t length, list out) except -1:
        try:
            _fr_pending_error()
        except (ValueError, TypeError) as exc:  # malformed, truncated, bad UTF-8, bad key, too deep ...
            return self._fail(FrameError(f"frame body of {length} bytes is not valid msgpack: {exc}"), out)
        except BaseException as exc:  # e.g. MemoryError: no verdict on the bytes, but the stream is lost
            self._failed = f"{type(exc).__name__} while decoding a frame body"
            self._drop()
            raise
        return -1  # not reached

    cdef int _too_large(self, uint32_t length, list out) except -1:
        return self._fail(FrameTooLarge(f"frame length {length} is over the limit of {self._max_obj} bytes"), out)

    cdef int _fail(self, exc, list out) except -1:
        self._failed = str(exc)
        self._drop()
        exc.messages = out
        raise exc

    cdef int _append(self, const unsigned char *data, Py_ssize_t k) except -1:
        cdef Py_ssize_t want = self._len + k, cap
        cdef unsigned char *nb
        if want > self._cap:
            cap = max(want, 2 * self._cap, 256)
            nb = <unsigned char *>PyMem_Realloc(self._buf, cap)
            if nb == NULL:
                raise MemoryError()
            self._buf = nb
            self._cap = cap
        memcpy(self._buf + self._len, data, k)
        self._len = want
        return 0

    cdef void _drop(self) noexcept:
        PyMem_Free(self._buf)
        self._buf = NULL
        self._len = 0
        self._cap = 0
