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
one AEAD call per write, not per frame (bench/bench_links.py measures it). Records are sealed and
opened by the core (``RecordSealer``/``RecordOpener``: OpenSSL in the compiled core, the
``cryptography`` package in the pure twin).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from ..core import RECORD_MAX, RECORD_TAG_SIZE, RecordOpener, RecordSealer
from ..errors import RecordError
from . import protocol as P

__all__ = [
    "LINK_CONTEXT",
    "RECORD_MAX",
    "RECORD_TAG_SIZE",
    "RecordError",
    "transcript",
    "LinkSession",
    "Handshake",
    "Refusal",
]

#: Domain separation: the first bytes of every transcript (version 3 of the link handshake).
LINK_CONTEXT = b"herdrt-link-v3"
_LABELS = {
    "mac": (b"dialer auth", b"acceptor auth"),
    "key": (b"dialer to acceptor", b"acceptor to dialer"),
}


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

    def sealer(self) -> RecordSealer:
        """Seals what this side sends (the core's :class:`RecordSealer`)."""
        return RecordSealer(self.send_key)

    def opener(self) -> RecordOpener:
        """Opens what the peer sends (the core's :class:`RecordOpener`)."""
        return RecordOpener(self.recv_key)


class Refusal(Exception):
    """The handshake refuses the link: ``code`` is the ERROR code to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Handshake:
    """One side of a link's handshake (PROTOCOL.md, *Handshake*): what it sends and what it checks.

    ``hello()`` is the first envelope to send. :meth:`on_hello` checks the peer's HELLO (version,
    name, the node dialled, the TLS certificate's name) and remembers its nonce; :meth:`auth`
    then gives the AUTH to send; :meth:`on_auth` verifies the peer's and returns the
    :class:`LinkSession` the link seals its records with. A check that fails raises
    :class:`Refusal`. ``misnamed(name)`` says why a TLS peer may not be ``name`` (or None)."""

    __slots__ = ("settings", "dialer", "expected", "nonce", "peer", "peer_nonce", "session", "_misnamed")

    def __init__(self, settings, dialer: bool, expected: str | None, misnamed: Callable[[str], str | None]):
        self.settings = settings
        self.dialer = dialer
        self.expected = expected  # the node dialled, if any
        self.nonce = P.new_nonce()
        self.peer: str | None = None
        self.peer_nonce: bytes | None = None
        self.session: LinkSession | None = None
        self._misnamed = misnamed

    @property
    def hello_seen(self) -> bool:
        return self.peer_nonce is not None

    def hello(self) -> list:
        s = self.settings
        return P.hello(s.name, self.nonce, s.version)

    def on_hello(self, env) -> str:
        """Check the peer's HELLO; returns its name."""
        version, name, nonce = P.parse_hello(env)
        s = self.settings
        if version != s.version:
            raise Refusal(
                P.E_VERSION,
                f"protocol version mismatch: {self.expected or name} speaks version {version}, "
                f"{s.name} speaks version {s.version}",
            )
        if name == s.name:
            raise Refusal(P.E_UNKNOWN_NODE, f"node {s.name!r} cannot link to itself (self-connection)")
        client = name.startswith(P.CLIENT_PREFIX)
        if name not in s.known_nodes and not (s.accept_clients and client):
            known = ", ".join(sorted(s.known_nodes))
            raise Refusal(P.E_UNKNOWN_NODE, f"{name!r} is not a node of this herd (nodes: {known})")
        if self.dialer and self.expected is not None and name != self.expected:
            raise Refusal(P.E_UNKNOWN_NODE, f"dialled {self.expected!r} but {name!r} answered")
        wrong_cert = s.check_cert_names and not client and self._misnamed(name)
        if wrong_cert:
            raise Refusal(P.E_UNKNOWN_NODE, wrong_cert)
        self.peer, self.peer_nonce = name, nonce
        return name

    def auth(self) -> list:
        """The AUTH to send, over the transcript of this connection."""
        s = self.settings
        peer, peer_nonce = self.peer, self.peer_nonce
        if peer is None or peer_nonce is None:
            raise Refusal(P.E_PROTOCOL, "AUTH before the peer's HELLO")
        if self.dialer:
            script = transcript(s.version, s.name, self.nonce, peer, peer_nonce)
        else:
            script = transcript(s.version, peer, peer_nonce, s.name, self.nonce)
        self.session = LinkSession(s.secret, script, dialer=self.dialer)
        return P.auth(self.session.own_mac)

    def sealer(self) -> Callable[[bytes], bytes]:
        """Seals what this side writes from its AUTH on (call after :meth:`auth`)."""
        if self.session is None:
            raise RuntimeError("sealer() before auth()")
        return self.session.sealer().seal

    def on_auth(self, env) -> LinkSession:
        """Verify the peer's AUTH; the session the link now seals its records with."""
        session = self.session
        if session is None:
            raise Refusal(P.E_PROTOCOL, "AUTH before the peer's HELLO")
        if not session.verify(P.parse_auth(env)):
            raise Refusal(P.E_AUTH, "authentication failed: the shared secret differs")
        return session
