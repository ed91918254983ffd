# Sealed records of a herd link (PROTOCOL.md, Records): AES-256-GCM through OpenSSL's EVP
# interface, the key schedule made once per direction, a record per coalesced write.
#
#   u32 BE n | ciphertext (n - 16 bytes) | 16-byte tag
#   nonce = 4 zero bytes || u64 BE record number, aad = the 4 length bytes
#
# Through the `cryptography` package (the pure twin) a record costs ~2-3 us of call overhead at
# each end, more than the AES itself for an ask; here it is one C call per record.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memmove, memset

from herdrt.errors import RecordError

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    const EVP_CIPHER *EVP_aes_256_gcm()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *inp, int inl)
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *inp, int inl)
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    enum:
        EVP_CTRL_GCM_GET_TAG
        EVP_CTRL_GCM_SET_TAG

#: Most plaintext bytes one record carries; a longer write is sealed as several records.
RECORD_MAX = 65536
#: The AES-GCM tag at the end of every record.
RECORD_TAG_SIZE = 16

cdef enum:
    _REC_MAX = 65536
    _REC_TAG = 16
    _REC_HEAD = 4


cdef inline void _rec_nonce(unsigned char *iv, uint64_t seq) noexcept nogil:
    memset(iv, 0, 4)
    cdef int i
    for i in range(8):
        iv[11 - i] = <unsigned char>(seq >> (8 * i))


cdef inline Py_ssize_t _rec_length(const unsigned char *p) noexcept nogil:
    return (<Py_ssize_t>p[0] << 24) | (<Py_ssize_t>p[1] << 16) | (<Py_ssize_t>p[2] << 8) | p[3]


cdef EVP_CIPHER_CTX *_rec_context(key, bint encrypt) except NULL:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("a record key is 32 bytes")
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    if ctx == NULL:
        raise MemoryError()
    cdef const unsigned char *k = <const unsigned char *><bytes>key
    cdef int ok = (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k, NULL) if encrypt
                   else EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k, NULL))
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        raise RuntimeError("OpenSSL refused the AES-256-GCM key")
    return ctx


cdef class RecordSealer:
    """Seals the bytes one side of a link writes into records numbered from 0 (``seq``)."""

    cdef EVP_CIPHER_CTX *_ctx
    cdef uint64_t _seq

    def __cinit__(self, key):
        self._ctx = _rec_context(key, True)
        self._seq = 0

    def __dealloc__(self):
        if self._ctx != NULL:
            EVP_CIPHER_CTX_free(self._ctx)

    @property
    def seq(self):
        """The number the next record gets."""
        return self._seq

    cdef int _seal_one(self, const unsigned char *src, Py_ssize_t n, unsigned char *dst) except -1:
        cdef unsigned char iv[12]
        cdef int outl = 0, finl = 0
        cdef Py_ssize_t total = n + _REC_TAG
        dst[0] = <unsigned char>(total >> 24)
        dst[1] = <unsigned char>(total >> 16)
        dst[2] = <unsigned char>(total >> 8)
        dst[3] = <unsigned char>total
        _rec_nonce(iv, self._seq)
        if (EVP_EncryptInit_ex(self._ctx, NULL, NULL, NULL, iv) != 1
                or EVP_EncryptUpdate(self._ctx, NULL, &outl, dst, _REC_HEAD) != 1
                or EVP_EncryptUpdate(self._ctx, dst + _REC_HEAD, &outl, src, <int>n) != 1
                or EVP_EncryptFinal_ex(self._ctx, dst + _REC_HEAD + outl, &finl) != 1
                or EVP_CIPHER_CTX_ctrl(self._ctx, EVP_CTRL_GCM_GET_TAG, _REC_TAG, dst + _REC_HEAD + n) != 1):
            raise RuntimeError("OpenSSL failed to seal a record")
        self._seq += 1
        return 0

    def seal(self, data):
        """``data`` (bytes-like, any length, even empty) as one record, or several of up to
        RECORD_MAX bytes of plaintext each."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        cdef const unsigned char *src = <const unsigned char *>view.buf
        cdef Py_ssize_t n = view.len, chunk, done = 0, records = (n + _REC_MAX - 1) // _REC_MAX
        if records == 0:
            records = 1
        cdef bytes out
        cdef unsigned char *dst
        try:
            out = PyBytes_FromStringAndSize(NULL, n + records * (_REC_HEAD + _REC_TAG))
            dst = <unsigned char *>PyBytes_AS_STRING(out)
            while True:
                chunk = n - done if n - done < _REC_MAX else _REC_MAX
                self._seal_one(src + done, chunk, dst)
                dst += _REC_HEAD + chunk + _REC_TAG
                done += chunk
                if done >= n:
                    return out
        finally:
            PyBuffer_Release(&view)


cdef class RecordOpener:
    """Opens the records of a byte stream split anywhere; ``feed`` returns the plaintext."""

    cdef EVP_CIPHER_CTX *_ctx
    cdef uint64_t _seq
    cdef Py_ssize_t _max       # the largest record length (ciphertext + tag) accepted
    cdef unsigned char *_buf   # an unfinished record
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap

    def __cinit__(self, key, max_record=RECORD_MAX):
        self._ctx = _rec_context(key, False)
        self._seq = 0
        self._max = <Py_ssize_t>max_record + _REC_TAG
        self._buf = NULL
        self._len = self._cap = 0

    def __dealloc__(self):
        if self._ctx != NULL:
            EVP_CIPHER_CTX_free(self._ctx)
        PyMem_Free(self._buf)

    @property
    def seq(self):
        """The number the next record must have."""
        return self._seq

    @property
    def buffered(self):
        """Bytes of an unfinished record held back."""
        return self._len

    cdef Py_ssize_t _checked(self, const unsigned char *p) except -1:
        cdef Py_ssize_t n = _rec_length(p)
        if n < _REC_TAG or n > self._max:
            raise RecordError(f"record length {n} is outside [{_REC_TAG}, {self._max}]")
        return n

    cdef bytes _open(self, const unsigned char *rec, Py_ssize_t n):
        cdef unsigned char iv[12]
        cdef int outl = 0, finl = 0
        cdef Py_ssize_t size = n - _REC_TAG
        cdef bytes plain = PyBytes_FromStringAndSize(NULL, size)
        cdef unsigned char *dst = <unsigned char *>PyBytes_AS_STRING(plain)
        _rec_nonce(iv, self._seq)
        if (EVP_DecryptInit_ex(self._ctx, NULL, NULL, NULL, iv) != 1
                or EVP_DecryptUpdate(self._ctx, NULL, &outl, rec, _REC_HEAD) != 1
                or EVP_DecryptUpdate(self._ctx, dst, &outl, rec + _REC_HEAD, <int>size) != 1
                or EVP_CIPHER_CTX_ctrl(self._ctx, EVP_CTRL_GCM_SET_TAG, _REC_TAG,
                                       <void *>(rec + _REC_HEAD + size)) != 1
                or EVP_DecryptFinal_ex(self._ctx, dst + outl, &finl) != 1):
            raise RecordError(f"record {self._seq} failed authentication (forged, replayed or corrupt)")
        self._seq += 1
        return plain

    def feed(self, data):
        """The plaintext of every record completed by ``data`` (``b""`` if none). Raises
        :class:`RecordError` on the first record that does not open (the plaintext of the good
        records before it in this call is on the exception as ``plain``); the stream is then dead."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        cdef const unsigned char *src = <const unsigned char *>view.buf
        cdef Py_ssize_t size = view.len, n, pos = 0, need
        cdef unsigned char *grown
        cdef list out
        try:
            if self._len == 0 and size > _REC_HEAD:  # common case: the read is one whole record
                n = self._checked(src)
                if size == _REC_HEAD + n:
                    return self._open(src, n)
            need = self._len + size
            if need > self._cap:
                grown = <unsigned char *>PyMem_Realloc(self._buf, need)
                if grown == NULL:
                    raise MemoryError()
                self._buf = grown
                self._cap = need
            memcpy(self._buf + self._len, src, size)
            self._len = need
        finally:
            PyBuffer_Release(&view)
        out = []
        try:
            while self._len - pos >= _REC_HEAD:
                n = self._checked(self._buf + pos)
                if pos + _REC_HEAD + n > self._len:
                    break
                out.append(self._open(self._buf + pos, n))
                pos += _REC_HEAD + n
        except RecordError as exc:
            exc.plain = b"".join(out)
            raise
        if pos:
            memmove(self._buf, self._buf + pos, self._len - pos)
            self._len -= pos
        if len(out) == 1:
            return out[0]
        return b"".join(out)
