"""The authenticated session of a herd link: the handshake transcript, its keys, sealed records.

A link's handshake (PROTOCOL.md, *Handshake*) ends with both sides holding the same
**transcript**: the protocol version, the name and fresh nonce of the side that dialled, the name
and fresh nonce of the side that accepted. Everything the session needs is derived from the herd
secret and that transcript, so nothing can be reused from another connection:

* each side's AUTH MAC names its role (``dialer auth`` / ``acceptor auth``): a MAC made by one node
  on one connection verifies only for that role, that pair of names and those two nonces — it
  cannot be relayed to another connection (the nonces differ), nor reflected back (the role
  differs);
* one AES-256-GCM key per direction seals every byte sent after AUTH in **records**
  (``u32 BE length | ciphertext | 16-byte tag``, the length as associated data, the record's
  sequence number as the nonce), so a peer that did not run the handshake cannot inject, replay,
  reorder, cut or splice a single byte after it: the first bad record closes the link.

A record carries up to :data:`RECORD_MAX` bytes of the frame stream (frames may span records;
the frame decoder does not care). One coalesced write is one record when it fits, so the cost is
one AEAD call per write, not per frame (bench/bench_links.py measures it).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "LINK_CONTEXT",
    "RECORD_MAX",
    "TAG_SIZE",
    "RecordError",
    "transcript",
    "LinkSession",
    "Sealer",
    "Opener",
]

#: Domain separation: the first bytes of every transcript (version 3 of the link handshake).
LINK_CONTEXT = b"herdrt-link-v3"
#: Most plaintext bytes one record carries; a longer write is sealed as several records.
RECORD_MAX = 1 << 16
TAG_SIZE = 16
_HEADER = 4
_LABELS = {
    "mac": (b"dialer auth", b"acceptor auth"),
    "key": (b"dialer to acceptor", b"acceptor to dialer"),
}


class RecordError(ValueError):
    """A sealed record failed to open: forged, replayed, reordered, truncated or oversized.
    ``plain`` holds the plaintext of the good records before it in the same read."""

    plain = b""


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def transcript(version: int, dialer: str, dialer_nonce: bytes, acceptor: str, acceptor_nonce: bytes) -> bytes:
    """The bytes both sides' MACs and keys are derived from (PROTOCOL.md, *Handshake*)::

        "herdrt-link-v3" || u32 BE version || f(dialer) || f(dialer_nonce) || f(acceptor) || f(acceptor_nonce)

    where ``f(x) = u16 BE len(x) || x`` and names are UTF-8."""
    return (
        LINK_CONTEXT
        + version.to_bytes(4, "big")
        + _field(dialer.encode("utf-8"))
        + _field(dialer_nonce)
        + _field(acceptor.encode("utf-8"))
        + _field(acceptor_nonce)
    )


def _prf(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


class LinkSession:
    """What one side derives from the secret and the transcript.

    ``prk = HMAC-SHA256(secret, transcript)``; a side's AUTH MAC is ``HMAC-SHA256(prk, "<role> auth")``
    and the key of the records it sends ``HMAC-SHA256(prk, "<role> to <other role>")``.
    ``dialer`` says which side this is."""

    __slots__ = ("own_mac", "peer_mac", "send_key", "recv_key")

    def __init__(self, secret: bytes, transcript_bytes: bytes, dialer: bool):
        prk = hmac.new(secret, transcript_bytes, hashlib.sha256).digest()
        own, peer = (0, 1) if dialer else (1, 0)
        macs, keys = _LABELS["mac"], _LABELS["key"]
        self.own_mac = _prf(prk, macs[own])
        self.peer_mac = _prf(prk, macs[peer])
        self.send_key = _prf(prk, keys[own])
        self.recv_key = _prf(prk, keys[peer])

    def verify(self, mac: bytes) -> bool:
        """Whether ``mac`` is the peer's AUTH for this transcript (constant-time compare)."""
        return hmac.compare_digest(self.peer_mac, mac)

    def sealer(self) -> Sealer:
        return Sealer(self.send_key)

    def opener(self, max_record: int = RECORD_MAX) -> Opener:
        return Opener(self.recv_key, max_record)


def _nonce(seq: int) -> bytes:
    return seq.to_bytes(12, "big")


class Sealer:
    """Seals outgoing bytes into records, numbering them from 0."""

    __slots__ = ("_encrypt", "seq")

    def __init__(self, key: bytes):
        self._encrypt = AESGCM(key).encrypt
        self.seq = 0

    def seal(self, data: bytes) -> bytes:
        """``data`` (any length, even empty) as one record, or several of up to RECORD_MAX bytes."""
        n = len(data)
        if n <= RECORD_MAX:
            header = (n + TAG_SIZE).to_bytes(_HEADER, "big")
            seq = self.seq
            self.seq = seq + 1
            return header + self._encrypt(_nonce(seq), data, header)
        view = memoryview(data)
        return b"".join(self.seal(view[i:i + RECORD_MAX]) for i in range(0, n, RECORD_MAX))


class Opener:
    """Opens incoming records from a byte stream split anywhere; yields the plaintext bytes."""

    __slots__ = ("_decrypt", "_max", "_buf", "seq")

    def __init__(self, key: bytes, max_record: int = RECORD_MAX):
        self._decrypt = AESGCM(key).decrypt
        self._max = max_record + TAG_SIZE
        self._buf = bytearray()
        self.seq = 0

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished record held back."""
        return len(self._buf)

    def _open(self, header, sealed) -> bytes:
        try:
            plain = self._decrypt(_nonce(self.seq), sealed, header)
        except InvalidTag:
            raise RecordError(f"record {self.seq} failed authentication (forged, replayed or corrupt)") from None
        self.seq += 1
        return plain

    def _length(self, header) -> int:
        n = int.from_bytes(header, "big")
        if not TAG_SIZE <= n <= self._max:
            raise RecordError(f"record length {n} is outside [{TAG_SIZE}, {self._max}]")
        return n

    def feed(self, data) -> bytes:
        """The plaintext of every record completed by ``data`` (``b""`` if none). Raises
        :class:`RecordError` on the first record that does not open; the stream is then dead."""
        buf = self._buf
        if not buf:  # common case: the read holds exactly one whole record
            size = len(data)
            if size >= _HEADER:
                view = memoryview(data)
                n = self._length(view[:_HEADER])
                if size == _HEADER + n:
                    return self._open(view[:_HEADER], view[_HEADER:])
        buf += data
        out = []
        pos = 0
        view = memoryview(buf)
        try:
            while len(buf) - pos >= _HEADER:
                n = self._length(view[pos:pos + _HEADER])
                end = pos + _HEADER + n
                if end > len(buf):
                    break
                out.append(self._open(view[pos:pos + _HEADER], view[pos + _HEADER:end]))
                pos = end
        except RecordError as exc:
            exc.plain = b"".join(out)
            raise
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out[0] if len(out) == 1 else b"".join(out)
