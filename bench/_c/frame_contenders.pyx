# cython: language_level=3, boundscheck=False, wraparound=False
"""Bench-only (never shipped): the core's framing with msgpack-python's C unpacker per body.

Built at benchmark time by ``bench/_cbuild.py``. ``Splitter`` splits the stream exactly as the
core's ``FrameDecoder`` does (whole frames straight from the caller's buffer, only a partial tail
copied, the length checked against the limit from the header alone) and hands each body to
msgpack's C extension instead of the core's ``_msgpack.h`` reader. The subclasses differ only in
how a body reaches msgpack:

* ``UnpackbBytes``: ``msgpack.unpackb(body, raw=False, strict_map_key=True)`` on a bytes copy;
* ``UnpackbView``: the same on a read-only memoryview of the caller's buffer (no copy);
* ``UnpackerFeed``: one ``msgpack.Unpacker(raw=False, strict_map_key=True)`` per decoder, each
  body fed to it, then ``unpack()`` and ``tell()`` (a body must be exactly one value).

unpackb is called through ``PyObject_Vectorcall`` with prebuilt keyword names: the cheapest way
Python code (or Cython) can call it. A bad body is a ``FrameError`` as in the core.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

import msgpack

from herdrt.errors import FrameError, FrameTooLarge

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ
    object PyObject_Vectorcall(object callable, PyObject **args, size_t nargsf, PyObject *kwnames)


cdef inline uint32_t _load32(const unsigned char *p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef object _unpackb = msgpack.unpackb
cdef tuple _kwnames = ("raw", "strict_map_key")
cdef object _false = False
cdef object _true = True


cdef inline object _call_unpackb(object body):
    cdef PyObject *args[3]
    args[0] = <PyObject *>body
    args[1] = <PyObject *>_false
    args[2] = <PyObject *>_true
    return PyObject_Vectorcall(_unpackb, args, 1, <PyObject *>_kwnames)


cdef class Splitter:
    cdef uint32_t _max
    cdef unsigned char *_buf
    cdef Py_ssize_t _len, _cap

    def __cinit__(self):
        self._buf = NULL
        self._len = self._cap = 0

    def __init__(self, max_frame_size=1 << 20):
        self._max = max_frame_size

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef object _body(self, const unsigned char *p, Py_ssize_t n):
        raise NotImplementedError

    def feed(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def close(self):
        if self._len:
            raise FrameError(f"stream ended inside a frame ({self._len} bytes buffered)")

    cdef list _feed(self, const unsigned char *data, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t pos = 0, take, need
        cdef uint32_t length
        if self._len:
            if self._len < 4:
                take = min(4 - self._len, n)
                self._append(data, take)
                pos = take
                if self._len < 4:
                    return out
            length = _load32(self._buf)
            if length > self._max:
                raise FrameTooLarge(f"frame length {length} is over the limit of {self._max} bytes")
            need = 4 + <Py_ssize_t>length - self._len
            take = min(need, n - pos)
            self._append(data + pos, take)
            pos += take
            if take < need:
                return out
            self._decode(self._buf + 4, length, out)
            self._len = 0
        while n - pos >= 4:
            length = _load32(data + pos)
            if length > self._max:
                raise FrameTooLarge(f"frame length {length} is over the limit of {self._max} bytes")
            if <Py_ssize_t>length > n - pos - 4:
                break
            self._decode(data + pos + 4, length, out)
            pos += 4 + <Py_ssize_t>length
        if pos < n:
            self._append(data + pos, n - pos)
        return out

    cdef inline int _decode(self, const unsigned char *body, Py_ssize_t length, list out) except -1:
        if length == 0:
            raise FrameError("frame body is empty (0 bytes); a frame holds one msgpack value")
        try:
            obj = self._body(body, length)
        except msgpack.ExtraData as exc:
            raise FrameError(f"frame body of {length} bytes holds one message and {len(exc.extra)} trailing bytes")
        except (ValueError, TypeError) as exc:
            raise FrameError(f"frame body of {length} bytes is not valid msgpack: {exc}")
        PyList_Append(out, obj)
        return 0

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


cdef class UnpackbBytes(Splitter):
    cdef object _body(self, const unsigned char *p, Py_ssize_t n):
        return _call_unpackb(PyBytes_FromStringAndSize(<const char *>p, n))


cdef class UnpackbView(Splitter):
    cdef object _body(self, const unsigned char *p, Py_ssize_t n):
        return _call_unpackb(PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ))


cdef class UnpackerFeed(Splitter):
    cdef object _unpacker, _feed_body, _unpack, _tell
    cdef long long _offset

    def __init__(self, max_frame_size=1 << 20):
        Splitter.__init__(self, max_frame_size)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max_frame_size)
        self._feed_body = self._unpacker.feed
        self._unpack = self._unpacker.unpack
        self._tell = self._unpacker.tell
        self._offset = 0

    cdef object _body(self, const unsigned char *p, Py_ssize_t n):
        self._feed_body(PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ))  # feed copies it
        try:
            obj = self._unpack()
        except msgpack.OutOfData:
            raise ValueError("truncated body") from None
        self._offset += n
        if self._tell() != self._offset:
            raise ValueError("trailing bytes after the message")
        return obj


CONTENDERS = {"unpackb-bytes": UnpackbBytes, "unpackb-view": UnpackbView, "unpacker-feed": UnpackerFeed}
