"""The ZeroMQ bridge: services written in other languages (Go first) join a herd through one node.

A :class:`~herdrt.herd.HerdNode` whose node entry has ``bridge_port`` binds a ZeroMQ ROUTER at
``tcp://<host>:<bridge_port>`` (see PROTOCOL.md, *Bridge (ZeroMQ)*). A service connects a DEALER,
says SERVICE_HELLO (protocol version, service name, the actor names it serves, a credential) and
gets WELCOME. Each name it serves becomes a *proxy actor* on the node, so every node of the herd
reaches it as ``name@<bridge node>``: tells are forwarded as TELL, asks as ASK and completed by the
service's REPLY. The service's own TELL/ASK are performed by the node on its behalf, like a herd
client's, and routed anywhere in the herd.

Liveness: both sides send HEARTBEAT every ``heartbeat_interval``; a service silent for
``[herd.bridge] evict_after`` seconds (default 3) is *evicted*: its names stay registered but
unavailable (asks fail at once with :class:`~herdrt.errors.NodeUnavailable`, tells are counted as
dropped) until it says SERVICE_HELLO again. BYE unregisters it at once.

Security: without CURVE a service proves the herd secret with
``HMAC-SHA256(secret, b"herdrt-bridge-v1" + service)`` (replayable by whoever can sniff the
traffic). With ``[herd.bridge] curve_secret_key_file`` the ROUTER is a CURVE server and a ZAP
handler admits only ``allowed_client_keys``: a client with another key completes no handshake and
gets nothing through (a socket monitor counts every refused handshake, ``curve_denied``).
A session is bound to the connection that said SERVICE_HELLO, not to a routing id anyone could
claim: the node assigns every routing id itself (a SERVICE_HELLO from an id the peer chose is
refused), and the socket monitor ends a session the moment its TCP connection closes, so an id
whose session ended is unknown: its messages get ERROR ``protocol``.

Speed: the socket is a plain ``zmq.Socket`` watched with ``loop.add_reader`` on its (edge-triggered)
file descriptor; on readiness the bridge drains it with non-blocking receives, and re-checks
``ZMQ_EVENTS`` after receiving and after sending so no edge is lost. Sends are non-blocking too;
when ZeroMQ pushes back (the peer's high-water mark) messages wait in a bounded per-service
outbox, and past ``max_queued`` they are refused and counted.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from ..errors import FrameTooLarge, HerdError, MailboxFull, NodeUnavailable
from ..herd import protocol as P
from ..herd.backpressure import Backpressure
from ..ratelog import RateLog
from ..runtime.actor import Actor, Deferred

if TYPE_CHECKING:
    from ..herd.node import HerdNode

__all__ = [
    "Bridge",
    "SERVICE_HELLO",
    "WELCOME",
    "REGISTER",
    "UNREGISTER",
    "BRIDGE_AUTH_CONTEXT",
    "E_NAME_TAKEN",
    "service_credential",
]

log = logging.getLogger("herdrt.bridge")

# --- bridge-only kinds (PROTOCOL.md, Bridge) -----------------------------------------------------
SERVICE_HELLO = 11  #: ``[11, version, service, names, credential|nil]`` — service -> node
WELCOME = 12  #: ``[12, node, heartbeat_interval, max_frame_size]`` — node -> service
REGISTER = 13  #: ``[13, names]`` — service -> node
UNREGISTER = 14  #: ``[14, names]`` — service -> node

#: Domain-separation prefix of a service's credential.
BRIDGE_AUTH_CONTEXT = b"herdrt-bridge-v1"
#: ERROR code: a name is already served by a local actor or by another live service.
E_NAME_TAKEN = "name_taken"
ZAP_DOMAIN = "herdrt"

# pyzmq's send_multipart/recv_multipart cost ~5 us a message in Python sugar; these are the
# Cython backend's single-frame calls, with plain int flags (enum arithmetic is slow too).
_zsend = zmq.backend.Socket.send
_zrecv = zmq.backend.Socket.recv
_zget = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SRCFD = int(zmq.SRCFD)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_HANDSHAKE_FAILED = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

_DRAIN_BUDGET = 4096  # tells/asks handled per loop turn before the loop gets control back
_RETRY_DELAY = 0.005  # seconds between attempts to flush outboxes ZeroMQ pushed back on
_MAX_NAME = 64


def service_credential(secret: bytes, service: str) -> bytes:
    """The credential of SERVICE_HELLO: ``HMAC-SHA256(secret, b"herdrt-bridge-v1" + UTF-8(service))``."""
    return hmac.new(secret, BRIDGE_AUTH_CONTEXT + service.encode("utf-8"), hashlib.sha256).digest()


class _Refused(Exception):
    """A message from a service that is answered with ERROR ``code`` (and, for a HELLO, refused)."""

    def __init__(self, code: str, message: str, corr: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.corr = corr


def _no_ext(code: int, data: bytes):
    raise _Refused(P.E_PROTOCOL, f"msgpack ext type {code} is not carried by the bridge")


def _assigned_id(identity: bytes) -> bool:
    """Whether a ROUTER made up this routing id (a zero byte and a 32-bit counter), rather than the peer."""
    return len(identity) == 5 and identity[0] == 0


def _valid_name(name) -> bool:
    return name.__class__ is str and 0 < len(name) <= _MAX_NAME and "@" not in name


def _names(value, what: str) -> list[str]:
    if value.__class__ is not list or not all(_valid_name(n) for n in value):
        raise _Refused(P.E_PROTOCOL, f"{what} names must be a list of actor names (1-{_MAX_NAME} characters, no '@')")
    return value


class _Service:
    """One service known to the bridge: its connection (if live), names and asks in flight."""

    __slots__ = (
        "name",
        "identity",
        "fd",
        "names",
        "live",
        "last_heard",
        "last_beat",
        "beat_seq",
        "pending",
        "outbox",
        "overflowing",
        "messages_in",
        "messages_out",
        "since",
        "tell_name",
        "tell_bodies",
        "tell_size",
        "respond",
    )

    def __init__(self, name: str):
        self.name = name
        self.identity: bytes | None = None
        self.fd = -1  # the node-side socket of its connection: the monitor reports its close by it
        self.names: set[str] = set()
        self.live = False
        self.last_heard = 0.0
        self.last_beat = 0.0
        self.beat_seq = 0
        self.pending: dict[int, Deferred] = {}  # asks the service has yet to answer, by id
        self.outbox: collections.deque[bytes] = collections.deque()
        self.overflowing = False
        self.messages_in = 0
        self.messages_out = 0
        self.since = time.time()
        # Tells to one of its names, packed and waiting for the end of this loop turn: a run of
        # them leaves as one TELLS (see Bridge._queue_tell).
        self.tell_name = ""
        self.tell_bodies: list[bytes] = []
        self.tell_size = 0
        self.respond = None  # its responder for asks performed by the node (made once)


class _Proxy(Actor):
    """Stands on the bridge node for one name a service serves: forwards tells and asks to it.

    An ask is not answered by the handler: the proxy defers it (``ctx.defer()``) and the
    service's REPLY answers it later, so many asks to one service are in flight at once. The
    asker's usual timeout still applies.
    """

    def __init__(self, bridge: Bridge):
        self._forward = bridge._to_service
        self._served = ""

    def on_start(self):
        self._served = self.name

    def receive(self, message, ctx):
        self._forward(self._served, message, ctx.defer() if ctx.is_ask else None)


class Bridge:
    """The ZeroMQ ROUTER of one herd node (started by :class:`HerdNode` when ``bridge_port`` is set).

    ``stats()`` (also under ``"bridge"`` in the node's ``herd_status()``) reports the services and
    counters. ``host``/``port`` override the node config (port 0: any free port, see ``endpoint``).
    """

    def __init__(self, node: HerdNode, *, host: str | None = None, port: int | None = None):
        config = node.config
        me = config.node(node.name)
        self.node = node
        self.settings = config.bridge
        self.host = host or me.host
        self.port = me.bridge_port if port is None else port
        self.max_frame_size = config.max_frame_size
        self.heartbeat_interval = config.heartbeat_interval
        self.evict_after = self.settings.evict_after
        self.endpoint = ""
        self.counters = {
            "messages_in": 0,
            "messages_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "hellos": 0,
            "welcomed": 0,
            "refused": 0,
            "evictions": 0,
            "byes": 0,
            "tells_from_services": 0,
            "asks_from_services": 0,
            "tells_to_services": 0,
            "asks_to_services": 0,
            "replies_from_services": 0,
            "stray_replies": 0,
            "dropped_tells": 0,
            "failed_asks": 0,
            "errors_sent": 0,
            "malformed": 0,
            "dropped_unknown": 0,
            "outbox_overflows": 0,
            "unroutable": 0,
            "curve_denied": 0,
            "handler_errors": 0,
            "undelivered_tells": 0,
            "tells_batches_to_services": 0,
            "throttled": 0,
            "handshakes_failed": 0,
            "disconnects": 0,
            "own_ids_refused": 0,
        }
        self._services: dict[str, _Service] = {}
        self._by_identity: dict[bytes, _Service] = {}
        self._by_fd: dict[int, _Service] = {}
        self._src_fd = -1  # the connection of the message being handled, when it came from an unknown id
        self.ratelog = RateLog(log)
        self.last_denied_key: bytes | None = None  # set by the ZAP handler's thread
        self._owners: dict[str, _Service] = {}  # served actor name -> its service
        self._backlog: set[_Service] = set()  # services whose outbox is not empty
        packer = msgpack.Packer(use_bin_type=True)
        self._pack = packer.pack
        self._pack_array_header = packer.pack_array_header
        self._me_packed = packer.pack(node.name)
        self._tells_waiting: list[_Service] = []  # services holding tells (see _queue_tell)
        self._tells_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._fd = -1
        self._monitor: zmq.Socket | None = None
        self._monitor_fd = -1
        self._auth = None
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._recheck = False
        self._now = 0.0
        self._work = 0  # tells and asks handled in this drain (a TELLS counts its bodies)
        self._backpressure: Backpressure | None = None
        self._paused = False  # not reading: a local actor the bridge feeds lags behind

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def attach(cls, node: HerdNode, **options: Any) -> Bridge:
        """Start a bridge on ``node`` (at its ``bridge_port``, unless ``port=`` says otherwise):
        closed when the node shuts down, its stats in ``node.herd_status()["bridge"]``. The herd
        knows nothing of bridges; whoever runs the node (``herdrt serve``) attaches one."""
        bridge = cls(node, **options).start()
        node.on_shutdown(bridge.close)
        node.add_status("bridge", bridge.stats)
        return bridge

    def start(self) -> Bridge:
        """Bind the ROUTER (and start the ZAP handler when CURVE is on); raises OSError if it cannot."""
        loop = self._loop = asyncio.get_running_loop()
        self._backpressure = Backpressure(loop)
        ctx = zmq.Context()  # our own: the ZAP handler is per context, and tests run several nodes
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # Again/EHOSTUNREACH instead of silent drops
            sock.setsockopt(zmq.LINGER, 200)
            # ZeroMQ cuts off (disconnects) a peer whose message is over twice the frame limit, so
            # nothing that large is ever allocated; smaller oversized bodies get ERROR "frame".
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_frame_size + 64)
            s = self.settings
            if s.curve:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("herdrt.bridge.zap"))
                self._auth.start()
                self._auth.configure_curve_callback(ZAP_DOMAIN, _AllowedKeys(self, s.allowed_client_keys))
                sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, s.curve_secret_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, s.curve_public_key)
            sock.bind(f"tcp://{self.host}:{self.port}")
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.port = int(self.endpoint.rsplit(":", 1)[1])
        except zmq.ZMQError as exc:
            sock.close(0)
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.term()
            raise OSError(f"bridge of node {self.node.name} cannot bind tcp://{self.host}:{self.port}: {exc}") from None
        self._ctx, self._sock = ctx, sock
        self._fd = sock.getsockopt(zmq.FD)
        # Connection events: a closed connection ends its service's session at once, and every
        # refused handshake (CURVE or not) is counted.
        self._monitor = sock.get_monitor_socket(_DISCONNECTED | _HANDSHAKE_FAILED)
        self._monitor_fd = self._monitor.getsockopt(zmq.FD)
        loop.add_reader(self._monitor_fd, self._drain_monitor)
        loop.add_reader(self._fd, self._drain)
        self._timer = loop.call_later(self._tick_interval(), self._tick)
        loop.call_soon(self._drain)  # the edge may have passed already
        log.info("%s: bridge listening on %s%s", self.node.name, self.endpoint, " (CURVE)" if s.curve else "")
        return self

    def _tick_interval(self) -> float:
        return min(self.heartbeat_interval, self.evict_after / 4)

    def close(self) -> None:
        """Say BYE to every live service, fail the asks they owe, close the socket (idempotent)."""
        sock = self._sock
        if sock is None:
            return
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None
        if not self._paused:
            self._loop.remove_reader(self._fd)
        self._loop.remove_reader(self._monitor_fd)
        self._backpressure.close()
        self._paused = False
        for svc in list(self._services.values()):
            if svc.live:
                if svc.tell_bodies:
                    self._flush_tells(svc)
                self._raw_send(svc.identity, [P.BYE, "shutdown"])
                self._disconnect(svc, "the bridge closed")
        self._sock = None
        sock.disable_monitor()
        self._monitor.close(0)
        self._monitor = None
        sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
        self._ctx = None

    # -- inbound ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Handle every message waiting on the socket (up to a budget per loop turn)."""
        sock = self._sock
        if sock is None or self._paused:
            return
        self._drain_monitor()  # a connection that closed ends its session before anything else is read
        handle = self._handle
        self._now = self._loop.time()
        self._work = 0
        # The actors these messages wake run when the drain ends, in this callback (as for herd
        # links), so their replies leave now rather than a loop turn later.
        sched = self.node.scheduler
        armed = sched.hold()
        try:
            self._drain_socket(sock, handle)
        finally:
            sched.release(armed)
        if self._backlog:
            self._flush_backlog()

    def _drain_socket(self, sock, handle) -> None:
        # Ask ZMQ_EVENTS before each receive rather than catch zmq.Again (building that exception
        # costs more than handling a message). Reading EVENTS also re-arms the edge-triggered FD.
        while _zget(sock, _EVENTS) & _POLLIN:
            try:
                identity = _zrecv(sock, _NOBLOCK)
            except zmq.Again:
                break
            if identity in self._by_identity:
                self._src_fd = -1
                frames = [identity, _zrecv(sock, _NOBLOCK)]  # a message arrives whole: never Again here
            else:  # a SERVICE_HELLO (or a stranger): note which connection it came by
                frame = _zrecv(sock, _NOBLOCK, False)
                self._src_fd = frame.get(_SRCFD)
                frames = [identity, frame.bytes]
            while _zget(sock, _RCVMORE):
                frames.append(_zrecv(sock, _NOBLOCK))
            try:
                handle(frames)
            except Exception:  # a bug must not stop the bridge from reading
                self.counters["handler_errors"] += 1
                log.exception("%s: bridge failed handling a message", self.node.name)
            self._work += 1
            if self._paused:
                break  # a local actor has a backlog: read again once it is worked off
            if self._work >= _DRAIN_BUDGET:
                self._loop.call_soon(self._drain)  # the FD will not signal again for these
                break

    def _drain_monitor(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while _zget(monitor, _EVENTS) & _POLLIN:
            try:
                event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                break
            kind, value = int(event["event"]), event["value"]
            if kind == _DISCONNECTED:
                svc = self._by_fd.get(value)
                if svc is not None and svc.live:
                    self.counters["disconnects"] += 1
                    log.info(
                        "%s: service %s disconnected without BYE; its names %s are unavailable until it "
                        "says SERVICE_HELLO again",
                        self.node.name,
                        svc.name,
                        ", ".join(sorted(svc.names)) or "(none)",
                    )
                    self._disconnect(svc, "its connection closed")
            elif kind & _HANDSHAKE_FAILED:
                c = self.counters
                c["handshakes_failed"] += 1
                if self.settings.curve:
                    c["curve_denied"] += 1
                why = {
                    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): f"client key {self.last_denied_key!r} not allowed",
                    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "a protocol or cryptographic error (wrong server key?)",
                }.get(kind, "a peer speaking another security mechanism (no CURVE?)")
                self.ratelog.warning(
                    ("handshake", kind),
                    "%s: bridge refused a ZeroMQ handshake from %s: %s",
                    self.node.name,
                    event.get("endpoint", b"?").decode("utf-8", "replace"),
                    why,
                )

    def _handle(self, frames: list[bytes]) -> None:
        c = self.counters
        c["messages_in"] += 1
        identity = frames[0]
        svc = self._by_identity.get(identity)
        if svc is not None:
            svc.last_heard = self._now  # any message is a sign of life
            svc.messages_in += 1
        try:
            if len(frames) != 2:
                raise _Refused(P.E_FRAME, f"a bridge message is one frame, not {len(frames) - 1}")
            body = frames[1]
            c["bytes_in"] += len(body)
            if len(body) > self.max_frame_size:
                raise _Refused(P.E_FRAME, f"message of {len(body)} bytes is over max_frame_size {self.max_frame_size}")
            try:
                env = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
            except _Refused:
                raise
            except Exception as exc:
                raise _Refused(P.E_FRAME, f"not one msgpack value: {exc}") from None
            if env.__class__ is not list or not env or env[0].__class__ is not int:
                raise _Refused(P.E_PROTOCOL, "not an envelope (an array whose first element is its kind)")
        except _Refused as exc:
            c["malformed"] += 1
            if svc is None:
                c["dropped_unknown"] += 1  # unknown sender: no answer (do not feed scanners)
            else:
                self._error(identity, exc.code, exc.message)
            return
        kind = env[0]
        try:
            if svc is None:
                if kind != SERVICE_HELLO:
                    raise _Refused(P.E_PROTOCOL, f"send SERVICE_HELLO first (got {self._kind_name(kind)})")
                self._hello(identity, env)
            elif kind == P.TELLS:
                self._tells_from_service(svc, env)
            elif kind == P.TELL or kind == P.ASK:
                self._from_service(svc, env)
            elif kind == P.REPLY:
                self._reply(svc, env)
            elif kind == P.HEARTBEAT:
                P.parse_heartbeat(env)
            elif kind == REGISTER:
                self._register(svc, env)
            elif kind == UNREGISTER:
                self._unregister(svc, env)
            elif kind == P.BYE:
                self._bye(svc, env)
            elif kind == SERVICE_HELLO:
                self._hello(identity, env)
            else:
                raise _Refused(P.E_PROTOCOL, f"a service may not send {self._kind_name(kind)}")
        except P.ProtocolError as exc:
            c["malformed"] += 1
            self._error(identity, exc.code, str(exc))
        except _Refused as exc:
            if kind != SERVICE_HELLO:
                c["malformed"] += 1
            self._error(identity, exc.code, exc.message, exc.corr)

    @staticmethod
    def _kind_name(kind: int) -> str:
        names = {SERVICE_HELLO: "SERVICE_HELLO", WELCOME: "WELCOME", REGISTER: "REGISTER", UNREGISTER: "UNREGISTER"}
        return names.get(kind) or P.kind_name(kind)

    # -- the service session ---------------------------------------------------------------------

    def _hello(self, identity: bytes, env: list) -> None:
        c = self.counters
        c["hellos"] += 1
        try:
            if not _assigned_id(identity):
                c["own_ids_refused"] += 1
                raise _Refused(
                    P.E_PROTOCOL,
                    "this connection chose its own ZeroMQ routing id: leave ZMQ_ROUTING_ID "
                    "unset, the node assigns ids (so no one can claim a service's id once it left)",
                )
            service, names = self._check_hello(env)
        except _Refused:
            c["refused"] += 1
            known = self._by_identity.get(identity)
            if known is not None:  # a refused HELLO forgets the identity, whoever it was
                self._disconnect(known, "its connection sent a refused SERVICE_HELLO")
            raise
        prev = self._by_identity.get(identity)
        fd = self._src_fd if self._src_fd >= 0 else prev.fd if prev is not None else -1
        svc = self._services.get(service)
        if prev is not None and prev is not svc:
            self._disconnect(prev, f"its connection is now service {service!r}")
        if svc is None:
            svc = self._services[service] = _Service(service)
        elif svc.identity is not None and svc.identity != identity:
            old = svc.identity
            self._disconnect(svc, "it connected again (SERVICE_HELLO from a new connection)")
            self._raw_send(old, [P.BYE, "replaced by a newer connection"])
        for name in svc.names - set(names):
            self._unbind(name)
        svc.identity = identity
        svc.fd = fd
        if fd >= 0:
            self._by_fd[fd] = svc
        svc.live = True
        svc.last_heard = svc.last_beat = self._now
        svc.overflowing = False
        self._by_identity[identity] = svc
        c["welcomed"] += 1
        self._raw_send(identity, [WELCOME, self.node.name, self.heartbeat_interval, self.max_frame_size])
        for name in names:
            self._bind(svc, name)
        log.info("%s: service %s joined the bridge serving %s", self.node.name, service, ", ".join(names) or "no names")

    def _check_hello(self, env: list) -> tuple[str, list[str]]:
        if len(env) != 5:
            raise _Refused(P.E_PROTOCOL, "SERVICE_HELLO is [11, version, service, names, credential]")
        _, version, service, names, credential = env
        if version.__class__ is not int:
            raise _Refused(P.E_PROTOCOL, "SERVICE_HELLO version must be an integer")
        if version != P.PROTOCOL_VERSION:
            raise _Refused(
                P.E_VERSION, f"this node speaks protocol version {P.PROTOCOL_VERSION}, the service {version}"
            )
        if service.__class__ is not str or not 0 < len(service) <= _MAX_NAME:
            raise _Refused(P.E_PROTOCOL, f"SERVICE_HELLO service must be a string of 1-{_MAX_NAME} characters")
        names = _names(names, "SERVICE_HELLO")
        if credential is not None and (credential.__class__ is not bytes or len(credential) != 32):
            raise _Refused(P.E_PROTOCOL, "SERVICE_HELLO credential must be 32 bytes (msgpack bin) or nil")
        if credential is None:
            if not self.settings.curve:
                raise _Refused(P.E_AUTH, "a credential is required (CURVE is off on this bridge)")
        elif not hmac.compare_digest(credential, service_credential(self.node.config.secret, service)):
            raise _Refused(P.E_AUTH, "authentication failed: the credential does not match the herd secret")
        self._check_free(service, names)
        return service, names

    def _check_free(self, service: str, names: list[str]) -> None:
        taken = []
        for name in names:
            owner = self._owners.get(name)
            if owner is not None:
                if owner.name != service and owner.live:
                    taken.append(f"{name} (served by {owner.name})")
            elif name in self.node:
                taken.append(f"{name} (a local actor)")
        if taken:
            raise _Refused(E_NAME_TAKEN, f"names already taken on {self.node.name}: {', '.join(taken)}")

    def _bind(self, svc: _Service, name: str) -> None:
        owner = self._owners.get(name)
        if owner is svc:
            return
        if owner is not None:  # an evicted service's name, taken over
            owner.names.discard(name)
        else:
            self.node.spawn(_Proxy, self, name=name)
        self._owners[name] = svc
        svc.names.add(name)

    def _unbind(self, name: str) -> None:
        svc = self._owners.pop(name, None)
        if svc is not None:  # a name it served is a proxy the bridge spawned
            svc.names.discard(name)
            # Free the name now (it can be registered again at once); the proxy still stops in
            # order: queued asks fail with ActorStopped, on_stop runs.
            self.node.release(name)

    def _register(self, svc: _Service, env: list) -> None:
        if len(env) != 2:
            raise _Refused(P.E_PROTOCOL, "REGISTER is [13, names]")
        names = _names(env[1], "REGISTER")
        self._check_free(svc.name, names)
        for name in names:
            self._bind(svc, name)

    def _unregister(self, svc: _Service, env: list) -> None:
        if len(env) != 2:
            raise _Refused(P.E_PROTOCOL, "UNREGISTER is [14, names]")
        for name in _names(env[1], "UNREGISTER"):
            if self._owners.get(name) is svc:
                self._unbind(name)

    def _bye(self, svc: _Service, env: list) -> None:
        reason = P.parse_bye(env)
        self.counters["byes"] += 1
        log.info("%s: service %s left the bridge: %s", self.node.name, svc.name, reason)
        self._disconnect(svc, f"it left ({reason})")
        for name in list(svc.names):
            self._unbind(name)
        del self._services[svc.name]

    def _disconnect(self, svc: _Service, reason: str) -> None:
        """Forget the service's connection: asks it owes fail now, its outbox is dropped."""
        if svc.identity is not None:
            self._by_identity.pop(svc.identity, None)
            svc.identity = None
        if self._by_fd.get(svc.fd) is svc:
            del self._by_fd[svc.fd]
        svc.fd = -1
        svc.live = False
        if svc.tell_bodies:
            self.counters["dropped_tells"] += len(svc.tell_bodies)
            svc.tell_bodies = []
            svc.tell_size = 0
        if svc.outbox:
            self.counters["dropped_tells"] += len(svc.outbox)
            svc.outbox.clear()
        self._backlog.discard(svc)
        pending, svc.pending = svc.pending, {}
        if pending:
            exc = NodeUnavailable(f"service {svc.name} on {self.node.name} is unavailable: {reason}")
            for deferred in pending.values():
                deferred.fail(exc)
            self.counters["failed_asks"] += len(pending)

    def _evict(self, svc: _Service, reason: str) -> None:
        self.counters["evictions"] += 1
        log.warning(
            "%s: service %s evicted: %s; its names %s are unavailable until it says SERVICE_HELLO again",
            self.node.name,
            svc.name,
            reason,
            ", ".join(sorted(svc.names)) or "(none)",
        )
        identity = svc.identity
        self._disconnect(svc, f"evicted: {reason}")
        if identity is not None:
            self._raw_send(identity, [P.BYE, f"evicted: {reason}"])

    def _tick(self) -> None:
        """Heartbeats to live services; evict the silent ones; forget asks that timed out."""
        loop = self._loop
        self._timer = loop.call_later(self._tick_interval(), self._tick)
        now = self._now = loop.time()
        for svc in list(self._services.values()):
            if not svc.live:
                continue
            silent = now - svc.last_heard
            if silent > self.evict_after and not self._paused:  # not judged while we do not read
                self._evict(svc, f"silent for {silent:.2f}s")
                continue
            if now - svc.last_beat >= self.heartbeat_interval * 0.95:
                svc.last_beat = now
                svc.beat_seq += 1
                self._send(svc, [P.HEARTBEAT, svc.beat_seq, time.time()])
            if svc.pending:  # forget asks the asker stopped waiting for (timed out)
                svc.pending = {i: d for i, d in svc.pending.items() if d.waiting}

    # -- service -> herd -------------------------------------------------------------------------

    def _target(self, dest, target, corr=None) -> tuple[str | None, str | list]:
        """``(local name or None, herd path)`` of a TELL/ASK/TELLS from a service.

        The local name is set when the target is an actor on this node (the fast path: straight
        into its mailbox with :meth:`Node.deliver`); otherwise the path is for ``node.perform``."""
        me = self.node.name
        if dest is None:
            dest = me
        elif dest.__class__ is not str or not dest:
            raise _Refused(P.E_PROTOCOL, "dest_node must be a node name or nil", corr)
        if target.__class__ is str and target:
            if "@" in target:
                name, _, node = target.rpartition("@")
                return (name if node == me and name else None), target
            return (target if dest == me else None), f"{target}@{dest}"
        if target.__class__ is list and len(target) == 2 and all(t.__class__ is str for t in target):
            return None, target
        raise _Refused(P.E_PROTOCOL, 'target must be "name", "name@node" or [kind, key]', corr)

    def _from_service(self, svc: _Service, env: list) -> None:
        kind = env[0]
        if kind == P.TELL:
            if len(env) != 4:
                raise _Refused(P.E_PROTOCOL, "TELL is [2, dest_node, target, body]")
            local, path = self._target(env[1], env[2])
            self.counters["tells_from_services"] += 1
            if local is None:
                self.node.perform(svc.name, path, env[3], None, None)
                return
            try:
                self.node.deliver(local, env[3])
            except HerdError as exc:
                self._tell_failed(svc, path, exc, 1)
            self._check_backlog(local)
            return
        if len(env) != 6 or env[5].__class__ is not int:
            corr = env[5] if len(env) == 6 and env[5].__class__ is int else None
            raise _Refused(P.E_PROTOCOL, "ASK is [3, dest_node, target, body, src, corr:int]", corr)
        corr = env[5]
        local, path = self._target(env[1], env[2], corr)
        self.counters["asks_from_services"] += 1
        respond = svc.respond
        if respond is None:
            respond = svc.respond = self._responder(svc)
        if local is None:
            self.node.perform(svc.name, path, env[3], corr, respond)
            return
        try:
            # The reply callback runs in the handler's own turn: the REPLY leaves at once.
            self.node.deliver(local, env[3], lambda ok, value: respond(corr, ok, value))
        except HerdError as exc:
            respond(corr, False, [type(exc).__name__, str(exc)])

    def _tells_from_service(self, svc: _Service, env: list) -> None:
        """TELLS ``[15, dest_node, target, [body, ...]]``: each body in order, exactly as a TELL."""
        if len(env) != 4 or env[3].__class__ is not list:
            raise _Refused(P.E_PROTOCOL, "TELLS is [15, dest_node, target, [body, ...]]")
        local, path = self._target(env[1], env[2])
        bodies = env[3]
        n = len(bodies)
        self.counters["tells_from_services"] += n
        if local is None:
            perform, who = self.node.perform, svc.name
            for body in bodies:
                perform(who, path, body, None, None)
            return
        self._work += n
        try:
            lost = self.node.deliver_many(local, bodies)
        except HerdError as exc:  # no such actor
            self._tell_failed(svc, path, exc, n)
            return
        if lost:
            self._tell_failed(
                svc, path, MailboxFull(f"{lost} of {n} tells found the mailbox full or the actor stopped"), lost
            )
        self._check_backlog(local)

    def _check_backlog(self, name: str) -> None:
        """Stop reading the socket while the local actor ``name`` has a large backlog (see
        :mod:`herdrt.herd.backpressure`): ZeroMQ then pushes back on the services (their high-water
        marks), as a paused herd link pushes back on its peer."""
        mailbox = self.node.mailbox(name)
        if (
            mailbox is not None
            and not self._paused
            and self._backpressure.check(self, mailbox, self._pause, self._resume)
        ):
            self.counters["throttled"] += 1

    def _pause(self) -> None:
        self._paused = True
        self._loop.remove_reader(self._fd)

    def _resume(self) -> None:
        if self._sock is None or not self._paused:
            return
        self._paused = False
        now = self._loop.time()
        for svc in self._services.values():  # services could not be heard while we did not read
            if svc.live and svc.last_heard < now:
                svc.last_heard = now
        self._loop.add_reader(self._fd, self._drain)
        self._drain()

    def _tell_failed(self, svc: _Service, path, exc: HerdError, n: int) -> None:
        self.counters["undelivered_tells"] += n
        self.ratelog.info(
            ("tell failed", svc.name),
            "%s: %s's tell to %.80s failed (%d so far): %s",
            self.node.name,
            svc.name,
            path,
            self.counters["undelivered_tells"],
            exc,
        )

    def _responder(self, svc: _Service):
        def respond(corr: int, ok: bool, value: Any) -> None:
            if svc.live:
                try:
                    self._send(svc, [P.REPLY, svc.name, corr, ok, value])
                except (TypeError, ValueError, FrameTooLarge) as exc:  # a reply msgpack cannot carry
                    self._send(svc, [P.REPLY, svc.name, corr, False, [type(exc).__name__, str(exc)]])

        return respond

    def _reply(self, svc: _Service, env: list) -> None:
        if len(env) != 5 or env[2].__class__ is not int or env[3].__class__ is not bool:
            raise _Refused(P.E_PROTOCOL, "REPLY is [6, dest, corr:int, ok:bool, value]")
        _, _, corr, ok, value = env
        if svc.pending.pop(corr, None) is None:
            self.counters["stray_replies"] += 1  # timed out already, or never asked
            return
        self.counters["replies_from_services"] += 1
        # As a REPLY over a link: herdrt's own error types keep their type, others are RemoteError.
        self.node.resolve(corr, ok, value)

    # -- herd -> service -------------------------------------------------------------------------

    def _to_service(self, name: str, message: Any, deferred: Deferred | None) -> None:
        """A proxy's message for the service serving ``name``: an ask to answer through
        ``deferred`` (its id is the ASK's corr on the wire), or a tell (``deferred`` None)."""
        svc = self._owners.get(name)
        if svc is None or not svc.live:
            why = "no service serves it" if svc is None else f"service {svc.name} is evicted or disconnected"
            if deferred is not None:
                self.counters["failed_asks"] += 1
                deferred.fail(NodeUnavailable(f"{name}@{self.node.name} is unavailable: {why}"))
            else:
                self.counters["dropped_tells"] += 1
            return
        if deferred is None:
            self._queue_tell(svc, name, message)
            return
        me, corr = self.node.name, deferred.id
        svc.pending[corr] = deferred
        try:
            sent = self._send(svc, [P.ASK, me, name, message, me, corr])
        except (TypeError, ValueError, OverflowError, FrameTooLarge) as exc:  # msgpack cannot carry it, or too big
            del svc.pending[corr]
            self.counters["failed_asks"] += 1
            deferred.fail(exc)  # the asker learns why; the proxy goes on
            return
        if sent:
            self.counters["asks_to_services"] += 1
        else:
            del svc.pending[corr]
            self.counters["failed_asks"] += 1
            deferred.fail(MailboxFull(f"the bridge outbox to service {svc.name} is full ({self.settings.max_queued})"))

    def _queue_tell(self, svc: _Service, name: str, message: Any) -> None:
        """Pack a tell for ``svc`` and hold it until the end of this loop turn (or until anything
        else is sent to ``svc``): consecutive tells to one name then leave as one TELLS, under
        ``max_frame_size``. A lone tell leaves as TELL. Never waits for more than the turn."""
        body = self._pack(message)  # TypeError/ValueError: msgpack cannot carry it
        size = len(body)
        overhead = 16 + len(self._me_packed) + 4 * len(name)  # array headers, kind, node, name (UTF-8)
        if size + overhead > self.max_frame_size:
            raise FrameTooLarge(
                f"a tell of {size} bytes for service {svc.name} is over max_frame_size {self.max_frame_size}"
            )
        if svc.tell_bodies and (svc.tell_name != name or svc.tell_size + size + overhead > self.max_frame_size):
            self._flush_tells(svc)
        if not svc.tell_bodies:
            svc.tell_name = name
            self._tells_waiting.append(svc)
            if not self._tells_due:
                self._tells_due = True
                self._loop.call_soon(self._flush_all_tells)
        svc.tell_bodies.append(body)
        svc.tell_size += size

    def _flush_all_tells(self) -> None:
        self._tells_due = False
        waiting, self._tells_waiting = self._tells_waiting, []
        for svc in waiting:
            if svc.tell_bodies:
                self._flush_tells(svc)

    def _flush_tells(self, svc: _Service) -> None:
        """Send the tells ``svc`` holds: ``[2, node, name, body]`` for one, else
        ``[15, node, name, [body, ...]]`` (bodies are packed already: the envelope is joined)."""
        bodies = svc.tell_bodies
        n = len(bodies)
        svc.tell_bodies = []
        svc.tell_size = 0
        c = self.counters
        if not svc.live:
            c["dropped_tells"] += n
            return
        head = (
            self._pack_array_header(4) + (b"\x02" if n == 1 else b"\x0f") + self._me_packed + self._pack(svc.tell_name)
        )
        if n == 1:
            data = head + bodies[0]
        else:
            data = head + self._pack_array_header(n) + b"".join(bodies)
        if self._send_bytes(svc, data):
            c["tells_to_services"] += n
            c["tells_batches_to_services"] += 1
        else:
            c["dropped_tells"] += n

    def _send(self, svc: _Service, env: list) -> bool:
        """Send to a live service; False if it could not be sent or queued (counted).

        Raises TypeError/ValueError if msgpack cannot carry ``env``, FrameTooLarge if it is over
        ``max_frame_size``. Tells held for ``svc`` go first (message order is FIFO)."""
        body = self._pack(env)
        if len(body) > self.max_frame_size:
            raise FrameTooLarge(
                f"a message of {len(body)} bytes for service {svc.name} is over max_frame_size {self.max_frame_size}"
            )
        if svc.tell_bodies:
            self._flush_tells(svc)
        return self._send_bytes(svc, body)

    def _send_bytes(self, svc: _Service, body: bytes) -> bool:
        outbox = svc.outbox
        if not outbox:
            try:
                # With ROUTER_MANDATORY the routing frame fails (Again, EHOSTUNREACH) or the
                # message goes: the second frame cannot fail on its own.
                _zsend(self._sock, svc.identity, _MORE)
                _zsend(self._sock, body, _NOBLOCK)
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:  # EHOSTUNREACH: ZeroMQ no longer knows the peer
                self.counters["unroutable"] += 1
                self._evict(svc, f"connection gone ({exc})")
                return False
            else:
                self._sent(svc, len(body))
                return True
        if len(outbox) >= self.settings.max_queued:
            self.counters["outbox_overflows"] += 1
            if not svc.overflowing:
                svc.overflowing = True
                log.warning(
                    "%s: bridge outbox to service %s is full (%d): refusing messages until it drains",
                    self.node.name,
                    svc.name,
                    len(outbox),
                )
            return False
        outbox.append(body)
        if svc not in self._backlog:
            self._backlog.add(svc)
            self._arm_retry()
        return True

    def _sent(self, svc: _Service, size: int) -> None:
        c = self.counters
        c["messages_out"] += 1
        c["bytes_out"] += size
        svc.messages_out += 1
        if not self._recheck:
            # Sending can swallow the FD's edge for messages that arrived meanwhile: look once
            # per loop turn, after this batch of sends.
            self._recheck = True
            self._loop.call_soon(self._after_sends)

    def _after_sends(self) -> None:
        self._recheck = False
        sock = self._sock
        if sock is not None and not self._paused and _zget(sock, _EVENTS) & _POLLIN:
            self._drain()

    def _arm_retry(self) -> None:
        if self._retry is None and self._loop is not None:
            self._retry = self._loop.call_later(_RETRY_DELAY, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry = None
        self._flush_backlog()
        if self._backlog:
            self._arm_retry()

    def _flush_backlog(self) -> None:
        sock = self._sock
        for svc in list(self._backlog):
            outbox = svc.outbox
            while outbox:
                try:
                    _zsend(sock, svc.identity, _MORE)
                    _zsend(sock, outbox[0], _NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    self.counters["unroutable"] += 1
                    self._evict(svc, f"connection gone ({exc})")
                    break
                self._sent(svc, len(outbox.popleft()))
            if not outbox:
                self._backlog.discard(svc)
                svc.overflowing = False

    def _raw_send(self, identity: bytes, env: list) -> bool:
        """Best effort, outside any outbox: ERROR, WELCOME, BYE."""
        try:
            body = self._pack(env)
            _zsend(self._sock, identity, _MORE)
            _zsend(self._sock, body, _NOBLOCK)
        except zmq.ZMQError:  # Again or gone: the peer will hear nothing, and re-hello if alive
            self.counters["unroutable"] += 1
            return False
        self.counters["messages_out"] += 1
        if not self._recheck:
            self._recheck = True
            self._loop.call_soon(self._after_sends)
        return True

    def _error(self, identity: bytes, code: str, message: str, corr: Any = None) -> None:
        self.counters["errors_sent"] += 1
        log.info("%s: bridge error %s to %s: %s", self.node.name, code, identity.hex(), message)
        self._raw_send(identity, [P.ERROR, corr, code, message])

    # -- status ----------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages waiting in outboxes because ZeroMQ pushed back (a producer can wait on it)."""
        return sum(len(svc.outbox) for svc in self._backlog)

    def stats(self) -> dict:
        """The bridge's view (msgpack-ready): endpoint, CURVE, services and counters."""
        now = self._loop.time() if self._loop is not None else 0.0
        return {
            "endpoint": self.endpoint,
            "curve": self.settings.curve,
            "evict_after": self.evict_after,
            "services": {
                svc.name: {
                    "live": svc.live,
                    "names": sorted(svc.names),
                    "pending_asks": len(svc.pending),
                    "queued": len(svc.outbox),
                    "silent_for": round(now - svc.last_heard, 3),
                    "messages_in": svc.messages_in,
                    "messages_out": svc.messages_out,
                }
                for svc in self._services.values()
            },
            "counters": dict(self.counters),
        }


class _AllowedKeys:
    """ZAP credentials provider: admits the configured CURVE client keys (runs on the ZAP thread)."""

    def __init__(self, bridge: Bridge, keys: tuple[bytes, ...]):
        self._bridge = bridge
        self._keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._keys:
            return True
        # Counted and logged (rate-limited) on the loop, from the socket monitor's event.
        self._bridge.last_denied_key = key
        return False
