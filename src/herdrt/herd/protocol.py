"""The herd wire protocol: envelope kinds, the link-level envelopes, error codes.

An *envelope* is a msgpack array whose first element is a small integer, its *kind*. Arrays are
smaller and faster to encode than maps, and Go reads them into ``as_array`` structs. On a TCP link
each envelope travels as one frame (4-byte big-endian length, then the msgpack body; see
:mod:`herdrt.core`).

This module defines the link-level part — the handshake (HELLO, AUTH), ERROR, HEARTBEAT and BYE —
as plain constructors (they return lists ready for ``encode_frames``) and validators (they take a
decoded envelope and return its fields, or raise :class:`ProtocolError`). The node-layer kinds
(TELL, TELLS, ASK, REPLY, MEMBERSHIP, FLOOD, HANDOFF, SEND, CREDIT, DEAD_LETTERS) are
numbered here and built in :mod:`herdrt.herd.node` and :mod:`herdrt.herd.credit`. ``PROTOCOL.md``
is the byte-level description; keep the two in step.
"""

from __future__ import annotations

import os

from ..errors import HerdError

__all__ = [
    "PROTOCOL_VERSION",
    "CLIENT_PREFIX",
    "NONCE_SIZE",
    "MAC_SIZE",
    "HELLO",
    "AUTH",
    "TELL",
    "ASK",
    "ERROR",
    "HEARTBEAT",
    "REPLY",
    "MEMBERSHIP",
    "FLOOD",
    "BYE",
    "HANDOFF",
    "TELLS",
    "SEND",
    "CREDIT",
    "DEAD_LETTERS",
    "KIND_NAMES",
    "LINK_KINDS",
    "E_VERSION",
    "E_UNKNOWN_NODE",
    "E_AUTH",
    "E_FRAME",
    "E_OVERFLOW",
    "E_PROTOCOL",
    "E_TIMEOUT",
    "E_DUPLICATE",
    "ERROR_CODES",
    "ProtocolError",
    "kind_name",
    "new_nonce",
    "hello",
    "auth",
    "error",
    "heartbeat",
    "bye",
    "parse_hello",
    "parse_auth",
    "parse_error",
    "parse_heartbeat",
    "parse_bye",
    "describe",
]

#: Names starting with this are *clients* (e.g. the ``herdrt`` CLI): they authenticate with the herd
#: secret like nodes, but are no members: they talk only to the node they dial.
CLIENT_PREFIX = "~"

#: The version every HELLO carries; a peer speaking another version is refused with ERROR "version".
#: 3: the AUTH MAC covers the whole handshake transcript, and records seal everything after it.
#: 4: TELL/TELLS name their sender's node; credit-paced SEND, CREDIT and DEAD_LETTERS reports.
PROTOCOL_VERSION = 4

NONCE_SIZE = 16
MAC_SIZE = 32

# --- kinds ---------------------------------------------------------------------------------------
HELLO = 0  #: ``[0, version:int, node_name:str, nonce:bin16]`` — first envelope on a link, both ways
AUTH = 1  #: ``[1, mac:bin32]`` — proof of the shared secret over the whole handshake transcript
TELL = 2  #: ``[2, dest_node, target, body, src_node]`` — target: actor name, or ``[kind, key]`` of a keyed actor
ASK = 3  #: ``[3, dest_node, target, body, src_node, corr]``
ERROR = 4  #: ``[4, corr_id|nil, code:str, message:str]``
HEARTBEAT = 5  #: ``[5, seq:int, sent_time:float]`` or ``[5, seq, sent_time, echo_time:float, hold:float]``
REPLY = 6  #: ``[6, dest_node, corr, ok:bool, value]`` — value: the result, or ``[type_name, message]``
MEMBERSHIP = 7  #: ``[7, origin, incarnation, seq, [live neighbors]]`` — flooded link state
FLOOD = 8  #: ``[8, origin, incarnation, seq, topic, body]`` — a broadcast, flooded along links
BYE = 9  #: ``[9, reason:str]`` — the sender is closing the link on purpose
HANDOFF = 10  #: ``[10, dest_node, kind, key, state]`` — a keyed actor's state, to its new owner
# 11-14 are the bridge's (herdrt.bridge).
TELLS = 15  #: ``[15, dest_node, target, [body, ...], src_node]`` — consecutive TELLs to one target, in order
SEND = 16  #: ``[16, dest_node, target, [body, ...], src_node, window, seq]`` — tells paced by credit
CREDIT = 17  #: ``[17, dest_node, window, delivered, limit, error|nil]`` — the target's node grants a window
DEAD_LETTERS = 18  #: ``[18, dest_node, src_node, [[target, reason, count], ...]]`` — dest_node's tells lost

KIND_NAMES = {
    HELLO: "HELLO",
    AUTH: "AUTH",
    TELL: "TELL",
    ASK: "ASK",
    ERROR: "ERROR",
    HEARTBEAT: "HEARTBEAT",
    REPLY: "REPLY",
    MEMBERSHIP: "MEMBERSHIP",
    FLOOD: "FLOOD",
    BYE: "BYE",
    HANDOFF: "HANDOFF",
    TELLS: "TELLS",
    SEND: "SEND",
    CREDIT: "CREDIT",
    DEAD_LETTERS: "DEAD_LETTERS",
}

#: Kinds the link layer consumes itself (an ERROR with a correlation id goes up to the node layer).
LINK_KINDS = frozenset((HELLO, AUTH, ERROR, HEARTBEAT, BYE))

# --- error codes (the third element of an ERROR) -------------------------------------------------
E_VERSION = "version"  #: the peer speaks another protocol version
E_UNKNOWN_NODE = "unknown_node"  #: the peer's name is not a node (or neighbor) of this herd, or is our own
E_AUTH = "auth"  #: the AUTH MAC did not verify: the shared secret differs
E_FRAME = "frame"  #: a corrupt or oversized frame
E_OVERFLOW = "overflow"  #: the receiver could not take the envelope (a full queue or mailbox)
E_PROTOCOL = "protocol"  #: a well-formed frame holding the wrong envelope (e.g. TELL before the handshake)
E_TIMEOUT = "timeout"  #: the handshake did not finish in time
E_DUPLICATE = "duplicate"  #: simultaneous dials: this link loses to the one dialled by the lower name

ERROR_CODES = frozenset((E_VERSION, E_UNKNOWN_NODE, E_AUTH, E_FRAME, E_OVERFLOW, E_PROTOCOL, E_TIMEOUT, E_DUPLICATE))


class ProtocolError(HerdError, ValueError):
    """A decoded envelope does not have the shape its kind requires; ``code`` is the ERROR code to answer with."""

    def __init__(self, message: str, code: str = E_PROTOCOL):
        super().__init__(message)
        self.code = code


def kind_name(kind) -> str:
    """``"HELLO"`` for 0 and so on; ``"kind 42"`` for a kind this version does not know."""
    return KIND_NAMES.get(kind, f"kind {kind!r}") if isinstance(kind, int) else f"kind {kind!r}"


# --- authentication (the MACs and keys: herdrt.herd.handshake) ----------------------------------------


def new_nonce() -> bytes:
    """A fresh random 16-byte nonce for a HELLO."""
    return os.urandom(NONCE_SIZE)


# --- constructors --------------------------------------------------------------------------------


def hello(node_name: str, nonce: bytes, version: int = PROTOCOL_VERSION) -> list:
    """``[HELLO, version, node_name, nonce]``."""
    return [HELLO, version, node_name, nonce]


def auth(mac: bytes) -> list:
    """``[AUTH, mac]``."""
    return [AUTH, mac]


def error(code: str, message: str, corr_id=None) -> list:
    """``[ERROR, corr_id, code, message]``; ``corr_id`` is nil for link-level errors."""
    return [ERROR, corr_id, code, message]


def heartbeat(seq: int, sent_time: float, echo_time: float | None = None, hold: float = 0.0) -> list:
    """``[HEARTBEAT, seq, sent_time]``, or with ``echo_time`` (the peer's last ``sent_time``) and
    ``hold`` (seconds since it arrived) appended, from which the peer computes the round-trip time."""
    if echo_time is None:
        return [HEARTBEAT, seq, sent_time]
    return [HEARTBEAT, seq, sent_time, echo_time, hold]


def bye(reason: str) -> list:
    """``[BYE, reason]``."""
    return [BYE, reason]


# --- validators ----------------------------------------------------------------------------------


def _shape(env, kind: int, sizes: tuple[int, ...], extra: bool = False) -> None:
    # extra: fields past the largest size are accepted and ignored (a later version may append
    # optional fields to every envelope but HELLO and AUTH, which are exact).
    if not isinstance(env, (list, tuple)) or not env or type(env[0]) is not int or env[0] != kind:
        raise ProtocolError(f"expected a {KIND_NAMES[kind]} envelope, got {describe(env)}")
    if len(env) not in sizes and not (extra and len(env) > max(sizes)):
        want = " or ".join(str(n) for n in sizes) + (" or more" if extra else "")
        raise ProtocolError(f"{KIND_NAMES[kind]} must have {want} elements, not {len(env)}")


def describe(env) -> str:
    """A short description of a (possibly malformed) envelope for error messages."""
    if isinstance(env, (list, tuple)) and env:
        return f"{kind_name(env[0])} with {len(env)} elements"
    return f"a {type(env).__name__}"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_hello(env) -> tuple[int, str, bytes]:
    """``(version, node_name, nonce)`` of a HELLO."""
    _shape(env, HELLO, (4,))
    _, version, name, nonce = env
    if not _is_int(version):
        raise ProtocolError(f"HELLO version must be an integer, not {type(version).__name__}")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise ProtocolError(f"HELLO node name must be a string of 1-64 characters, not {name!r:.80}")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"HELLO nonce must be {NONCE_SIZE} bytes (msgpack bin)")
    return version, name, nonce


def parse_auth(env) -> bytes:
    """The MAC of an AUTH."""
    _shape(env, AUTH, (2,))
    mac = env[1]
    if not isinstance(mac, bytes) or len(mac) != MAC_SIZE:
        raise ProtocolError(f"AUTH mac must be {MAC_SIZE} bytes (msgpack bin)")
    return mac


def parse_error(env) -> tuple[object, str, str]:
    """``(corr_id, code, message)`` of an ERROR (codes this version does not know are passed through)."""
    _shape(env, ERROR, (4,), extra=True)
    corr_id, code, message = env[1:4]
    if not isinstance(code, str) or not isinstance(message, str):
        raise ProtocolError("ERROR code and message must be strings")
    return corr_id, code, message


def parse_heartbeat(env) -> tuple[int, float, float | None, float]:
    """``(seq, sent_time, echo_time or None, hold)`` of a HEARTBEAT."""
    _shape(env, HEARTBEAT, (3, 5), extra=True)
    seq, sent = env[1], env[2]
    if not _is_int(seq) or not isinstance(sent, (int, float)) or isinstance(sent, bool):
        raise ProtocolError("HEARTBEAT needs an integer seq and a numeric sent_time")
    if len(env) >= 5:
        echo, hold = env[3], env[4]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (echo, hold)):
            raise ProtocolError("HEARTBEAT echo_time and hold must be numbers")
        return seq, float(sent), float(echo), float(hold)
    return seq, float(sent), None, 0.0


def parse_bye(env) -> str:
    """The reason of a BYE."""
    _shape(env, BYE, (2,), extra=True)
    reason = env[1]
    if not isinstance(reason, str):
        raise ProtocolError("BYE reason must be a string")
    return reason
