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
    """A message from a service that is answered with ERROR ``code`` (and, for a HELLO, refused)."""

    def __init__(self, code: str, message: str, corr: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.corr = corr


def service_credential(secret: bytes, service: str) -> bytes:
    """The credential of SERVICE_HELLO: ``HMAC-SHA256(secret, b"herdrt-bridge-v1" + UTF-8(service))``."""
    return hmac.new(secret, BRIDGE_AUTH_CONTEXT + service.encode("utf-8"), hashlib.sha256).digest()


def _no_ext(code: int, data: bytes):
    raise Refused(P.E_PROTOCOL, f"msgpack ext type {code} is not carried by the bridge")


def decode(frames: list[bytes], max_frame_size: int) -> list:
    """The envelope in a message's frames (routing id first), or Refused saying what is wrong."""
    if len(frames) != 2:
        raise Refused(P.E_FRAME, f"a bridge message is one frame, not {len(frames) - 1}")
    body = frames[1]
    if len(body) > max_frame_size:
        raise Refused(P.E_FRAME, f"message of {len(body)} bytes is over max_frame_size {max_frame_size}")
    try:
        env = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Refused:
        raise
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
    if len(env) != 5:
        raise Refused(P.E_PROTOCOL, "SERVICE_HELLO is [11, version, service, names, credential]")
    _, version, service, names, credential = env
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
