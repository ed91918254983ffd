"""What a service says on the bridge: the bridge's own envelope kinds and the checks of its input.

Pure functions over decoded msgpack (PROTOCOL.md, *Bridge (ZeroMQ)*): nothing here touches a
socket, so every rule a service is held to can be read, and tested, in one place.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack

from ..herd import protocol as P

__all__ = [
    "SERVICE_HELLO",
    "WELCOME",
    "REGISTER",
    "UNREGISTER",
    "BRIDGE_AUTH_CONTEXT",
    "E_NAME_TAKEN",
    "MAX_NAME",
    "Refused",
    "service_credential",
    "decode",
    "kind_name",
    "assigned_id",
    "parse_names",
    "parse_hello",
    "parse_target",
    "parse_heartbeat",
    "parse_bye",
    "peek",
]

SERVICE_HELLO = 11  #: ``[11, version, service, names, credential|nil]`` — service -> node
WELCOME = 12  #: ``[12, node, heartbeat_interval, max_frame_size]`` — node -> service
REGISTER = 13  #: ``[13, names]`` — service -> node
UNREGISTER = 14  #: ``[14, names]`` — service -> node

#: Domain-separation prefix of a service's credential.
BRIDGE_AUTH_CONTEXT = b"herdrt-bridge-v1"
#: ERROR code: a name is already served by a local actor or by another live service.
E_NAME_TAKEN = "name_taken"
#: The longest actor or service name a service may use.
MAX_NAME = 64

_KIND_NAMES = {SERVICE_HELLO: "SERVICE_HELLO", WELCOME: "WELCOME", REGISTER: "REGISTER", UNREGISTER: "UNREGISTER"}


class Refused(Exception):
    """A message from a service that is answered with ERROR ``code`` (and, for a HELLO, refused).

    ``corr`` is the ERROR's corr: the refused ASK's own, else None. ``reply_corr`` is set when the
    refused message was a REPLY whose corr could be read: the ask it answers fails with the reason."""

    def __init__(self, code: str, message: str, corr: Any = None, reply_corr: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.corr = corr
        self.reply_corr = reply_corr


def service_credential(secret: bytes, service: str) -> bytes:
    """The credential of SERVICE_HELLO: ``HMAC-SHA256(secret, b"herdrt-bridge-v1" + UTF-8(service))``."""
    return hmac.new(secret, BRIDGE_AUTH_CONTEXT + service.encode("utf-8"), hashlib.sha256).digest()


def _no_ext(code: int, data: bytes):
    raise Refused(P.E_PROTOCOL, f"msgpack ext type {code} is not carried by the bridge")


def peek(body: bytes) -> tuple[Any, Any]:
    """``(kind, corr)`` read from the head of a body that is refused whole (too big, or an ext
    type inside): the corr of an ASK (its 6th field) or of a REPLY (its 3rd), when it is an
    integer; ``(None, None)`` when the head is not that of an envelope."""
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(body), 1))
        unpacker.feed(body)
        n = unpacker.read_array_header()
        kind = unpacker.unpack() if n else None
        if kind.__class__ is not int:
            return None, None
        at = 5 if kind == P.ASK else 2 if kind == P.REPLY else 0
        if not at or n <= at:
            return kind, None
        for _ in range(at - 1):
            unpacker.skip()
        corr = unpacker.unpack()
        return kind, corr if corr.__class__ is int else None
    except Exception:
        return None, None


def _refuse_whole(code: str, message: str, body: bytes) -> Refused:
    kind, corr = peek(body)
    if kind == P.ASK:
        return Refused(code, message, corr)
    if kind == P.REPLY and corr is not None:
        return Refused(code, f"REPLY (corr {corr}) refused: {message}", reply_corr=corr)
    return Refused(code, message)


def decode(frames: list[bytes], max_frame_size: int) -> list:
    """The envelope in a message's frames (routing id first), or Refused saying what is wrong.

    A body refused whole (over ``max_frame_size``, or carrying an ext type) is still peeked at:
    the Refused of an ASK carries its corr, that of a REPLY its ``reply_corr``."""
    if len(frames) != 2:
        raise Refused(P.E_FRAME, f"a bridge message is one frame, not {len(frames) - 1}")
    body = frames[1]
    if len(body) > max_frame_size:
        raise _refuse_whole(P.E_FRAME, f"message of {len(body)} bytes is over max_frame_size {max_frame_size}", body)
    try:
        env = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Refused as exc:
        raise _refuse_whole(exc.code, exc.message, body) from None
    except Exception as exc:
        raise Refused(P.E_FRAME, f"not one msgpack value: {exc}") from None
    if env.__class__ is not list or not env or env[0].__class__ is not int:
        raise Refused(P.E_PROTOCOL, "not an envelope (an array whose first element is its kind)")
    return env


def kind_name(kind: int) -> str:
    """The name of an envelope kind, the bridge's own included."""
    return _KIND_NAMES.get(kind) or P.kind_name(kind)


def assigned_id(identity: bytes) -> bool:
    """Whether a ROUTER made up this routing id (a zero byte and a 32-bit counter), rather than the peer."""
    return len(identity) == 5 and identity[0] == 0


def _valid_name(name) -> bool:
    return name.__class__ is str and 0 < len(name) <= MAX_NAME and "@" not in name


def parse_names(value, what: str) -> list[str]:
    """The actor names of a SERVICE_HELLO, REGISTER or UNREGISTER (``what``)."""
    if value.__class__ is not list or not all(_valid_name(n) for n in value):
        raise Refused(P.E_PROTOCOL, f"{what} names must be a list of actor names (1-{MAX_NAME} characters, no '@')")
    return value


def parse_hello(env: list, *, secret: bytes, curve: bool) -> tuple[str, list[str]]:
    """``(service, names)`` of a SERVICE_HELLO whose shape, version and credential hold.

    Without CURVE the credential is required; with CURVE (the connection is authenticated by
    its key already) it may be nil, but one that is given must still match ``secret``."""
    if len(env) < 5:  # (fields a later version appends are ignored)
        raise Refused(P.E_PROTOCOL, "SERVICE_HELLO is [11, version, service, names, credential]")
    _, version, service, names, credential = env[:5]
    if version.__class__ is not int:
        raise Refused(P.E_PROTOCOL, "SERVICE_HELLO version must be an integer")
    if version != P.PROTOCOL_VERSION:
        raise Refused(P.E_VERSION, f"this node speaks protocol version {P.PROTOCOL_VERSION}, the service {version}")
    if service.__class__ is not str or not 0 < len(service) <= MAX_NAME:
        raise Refused(P.E_PROTOCOL, f"SERVICE_HELLO service must be a string of 1-{MAX_NAME} characters")
    names = parse_names(names, "SERVICE_HELLO")
    if credential is not None and (credential.__class__ is not bytes or len(credential) != 32):
        raise Refused(P.E_PROTOCOL, "SERVICE_HELLO credential must be 32 bytes (msgpack bin) or nil")
    if credential is None:
        if not curve:
            raise Refused(P.E_AUTH, "a credential is required (CURVE is off on this bridge)")
    elif not hmac.compare_digest(credential, service_credential(secret, service)):
        raise Refused(P.E_AUTH, "authentication failed: the credential does not match the herd secret")
    return service, names


def parse_target(me: str, dest, target, corr=None) -> tuple[str | None, str | list]:
    """``(local name or None, herd path)`` of a TELL/ASK/TELLS from a service to node ``me``.

    The local name is set when the target is an actor on this node (the fast path: straight
    into its mailbox with ``Node.deliver``); otherwise the path is for ``HerdNode.perform_tell``/``perform_ask``."""
    if dest is None:
        dest = me
    elif dest.__class__ is not str or not dest:
        raise Refused(P.E_PROTOCOL, "dest_node must be a node name or nil", corr)
    if target.__class__ is str and target:
        if "@" in target:
            name, _, node = target.rpartition("@")
            return (name if node == me and name else None), target
        return (target if dest == me else None), f"{target}@{dest}"
    if target.__class__ is list and len(target) == 2 and all(t.__class__ is str for t in target):
        return None, target
    raise Refused(P.E_PROTOCOL, 'target must be "name", "name@node" or [kind, key]', corr)


def _number(x) -> bool:
    return x.__class__ is float or x.__class__ is int  # (not bool: True is no time)


def parse_heartbeat(env: list) -> tuple[int, float, float | None, float]:
    """``(seq, sent_time, echo_time or None, hold)`` of a HEARTBEAT: ``[5, seq, sent_time]`` or
    ``[5, seq, sent_time, echo_time, hold]``, then any fields a later version appends (4
    elements is neither). Integers are taken where floats are specified."""
    n = len(env)
    if n < 3 or n == 4:
        raise Refused(
            P.E_PROTOCOL, f"HEARTBEAT is [5, seq, sent_time] or [5, seq, sent_time, echo_time, hold], not {n} elements"
        )
    seq, sent = env[1], env[2]
    if seq.__class__ is not int or not _number(sent):
        raise Refused(P.E_PROTOCOL, "HEARTBEAT needs an integer seq and a numeric sent_time")
    if n == 3:
        return seq, float(sent), None, 0.0
    echo, hold = env[3], env[4]
    if not (_number(echo) and _number(hold)):
        raise Refused(P.E_PROTOCOL, "HEARTBEAT echo_time and hold must be numbers")
    return seq, float(sent), float(echo), float(hold)


def parse_bye(env: list) -> str:
    """The reason of a BYE ``[9, reason, ...]``."""
    if len(env) < 2 or env[1].__class__ is not str:
        raise Refused(P.E_PROTOCOL, "BYE is [9, reason:str]")
    return env[1]
