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

The package: :mod:`.wire` (the bridge's envelope kinds and the checks of what a service
sends), :mod:`.router` (the ZeroMQ ROUTER: socket, CURVE and ZAP, connection events, reading,
outboxes), :mod:`.services` (the registry and each service's session), :mod:`.proxies` (the proxy
actors and what they send) and, here, :class:`Bridge`, which wires them to a node and performs
what services send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from ..config import ConfigError
from ..errors import HerdError, MailboxFull
from ..herd import protocol as P
from ..herd.backpressure import Backpressure
from ..herd.node import dead_reason
from ..ratelog import RateLog
from . import wire
from .proxies import Proxies
from .router import Router
from .services import Service, Services
from .wire import (
    BRIDGE_AUTH_CONTEXT,
    E_NAME_TAKEN,
    REGISTER,
    SERVICE_HELLO,
    UNREGISTER,
    WELCOME,
    Refused,
    service_credential,
)

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


class Bridge:
    """The ZeroMQ ROUTER of one herd node, started by :meth:`attach` (``herdrt serve`` does,
    when the node entry has ``bridge_port``); made on the node's running event loop.

    ``stats()`` (also under ``"bridge"`` in the node's ``herd_status()``) reports the services and
    counters. ``host``/``port`` override the node config (port 0: any free port, see ``endpoint``).
    """

    def __init__(self, node: HerdNode, *, host: str | None = None, port: int | None = None):
        config = node.config
        me = config.node(node.name)
        self.node = node
        self.settings = config.bridge
        self.host = host or me.host
        port = me.bridge_port if port is None else port
        if port is None:
            raise ConfigError(
                f"node {node.name} has no bridge_port: set one in its [[herd.node]] entry (or pass port=)"
            )
        self.port = port
        self.max_frame_size = config.max_frame_size
        self.heartbeat_interval = config.heartbeat_interval
        self.evict_after = self.settings.evict_after
        self.endpoint = ""
        #: Every counter of the bridge and its parts (each part adds its own).
        self.counters: dict[str, int] = {
            "messages_in": 0,
            "bytes_in": 0,
            "malformed": 0,
            "dropped_unknown": 0,
            "errors_sent": 0,
            "tells_from_services": 0,
            "asks_from_services": 0,
            "undelivered_tells": 0,
            "throttled": 0,
            "credit_waits": 0,  # times the socket was not read while a remote tell waited for credit
        }
        self.ratelog = RateLog(log)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._timer: asyncio.TimerHandle | None = None
        loop = self._loop = asyncio.get_running_loop()
        self._backpressure = Backpressure()
        self._credit_waits = 0  # remote tells from services waiting for credit (the socket is not read)
        # The parts share two tables, kept by the registry: the live sessions by routing id (the
        # router reads it to know which connections are known) and the owner of each served name
        # (the proxies read it); the router reports connection events to the registry.
        sessions: dict[bytes, Service] = {}
        owners: dict[str, Service] = {}
        self._sessions = sessions
        self._router = Router(
            node.name,
            loop,
            self.settings,
            self.counters,
            known=sessions,
            scheduler=node.scheduler,
            on_message=self._handle,
            on_disconnect=lambda fd: self._services.connection_closed(fd),
            on_unroutable=lambda svc, reason: self._services.evict(svc, reason),
        )
        self._proxies = Proxies(node, self._router, owners, self.counters, max_frame_size=self.max_frame_size)
        self._services = Services(
            node,
            self._router,
            self.counters,
            sessions=sessions,
            owners=owners,
            spawn_proxy=self._proxies.spawn,
            heartbeat_interval=self.heartbeat_interval,
            evict_after=self.evict_after,
            max_frame_size=self.max_frame_size,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def attach(cls, node: HerdNode, **options: Any) -> Bridge:
        """Start a bridge on ``node`` (at its ``bridge_port``, unless ``port=`` says otherwise):
        closed when the node shuts down, its stats in ``node.herd_status()["bridge"]``. The herd
        knows nothing of bridges; whoever runs the node (``herdrt serve``) attaches one.
        Call it on the node's event loop."""
        bridge = cls(node, **options).start()
        node.on_shutdown(bridge.close)
        node.add_status("bridge", bridge.stats)
        return bridge

    def start(self) -> Bridge:
        """Bind the ROUTER (and start the ZAP handler when CURVE is on); raises OSError if it cannot."""
        # ZeroMQ cuts off (disconnects) a peer whose message is over twice the frame limit, so
        # nothing that large is ever allocated; smaller oversized bodies get ERROR "frame".
        self.endpoint = self._router.start(self.host, self.port, 2 * self.max_frame_size + 64)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._timer = self._loop.call_later(self._tick_interval(), self._tick)
        curve = " (CURVE)" if self.settings.curve else ""
        log.info("%s: bridge listening on %s%s", self.node.name, self.endpoint, curve)
        return self

    def _tick_interval(self) -> float:
        return min(self.heartbeat_interval, self.evict_after / 4)

    def close(self) -> None:
        """Say BYE to every live service, fail the asks they owe, close the socket (idempotent)."""
        router = self._router
        if not router.is_open:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._backpressure.close()
        self._proxies.flush_all()
        self._services.shut("shutdown")
        router.close()

    def _tick(self) -> None:
        loop = self._loop
        self._timer = loop.call_later(self._tick_interval(), self._tick)
        self._services.tick(loop.time(), judge=not self._router.paused)

    # -- what services send ----------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        c = self.counters
        c["messages_in"] += 1
        if len(frames) == 2:
            c["bytes_in"] += len(frames[1])
        identity = frames[0]
        router = self._router
        svc = self._sessions.get(identity)
        if svc is not None:
            svc.last_heard = router.now  # any message is a sign of life
            svc.messages_in += 1
        try:
            env = wire.decode(frames, self.max_frame_size)
        except Refused as exc:
            c["malformed"] += 1
            if svc is None:
                c["dropped_unknown"] += 1  # unknown sender: no answer (do not feed scanners)
            else:
                if exc.reply_corr is not None:  # the ask it answers fails now, with the reason
                    self._proxies.refused_reply(svc, exc.reply_corr, exc.code, exc.message)
                self._error(identity, exc.code, exc.message, exc.corr)
            return
        kind = env[0]
        try:
            if svc is None:
                if kind != SERVICE_HELLO:
                    # An ASK learns at once that it was not performed (its corr), not at its timeout.
                    corr = env[5] if kind == P.ASK and len(env) >= 6 and env[5].__class__ is int else None
                    raise Refused(P.E_PROTOCOL, f"send SERVICE_HELLO first (got {wire.kind_name(kind)})", corr)
                self._services.hello(identity, env, router.src_fd, router.now)
            elif kind == P.TELLS:
                self._tells(svc, env)
            elif kind == P.TELL:
                self._tell(svc, env)
            elif kind == P.ASK:
                self._ask(svc, env)
            elif kind == P.REPLY:
                self._proxies.reply(svc, env)
            elif kind == P.HEARTBEAT:
                wire.parse_heartbeat(env)
            elif kind == REGISTER:
                self._services.register(svc, env)
            elif kind == UNREGISTER:
                self._services.unregister(svc, env)
            elif kind == P.BYE:
                self._services.bye(svc, env)
            elif kind == SERVICE_HELLO:
                self._services.hello(identity, env, -1, router.now)
            else:
                raise Refused(P.E_PROTOCOL, f"a service may not send {wire.kind_name(kind)}")
        except P.ProtocolError as exc:
            c["malformed"] += 1
            self._error(identity, exc.code, str(exc))
        except Refused as exc:
            if kind != SERVICE_HELLO:
                c["malformed"] += 1
            self._error(identity, exc.code, exc.message, exc.corr)

    # Fields past those named are ignored (a later version may append optional ones).

    def _tell(self, svc: Service, env: list) -> None:
        """TELL ``[2, dest_node, target, body]``: delivered here, or performed anywhere in the herd."""
        if len(env) < 4:
            raise Refused(P.E_PROTOCOL, "TELL is [2, dest_node, target, body]")
        local, path = wire.parse_target(self.node.name, env[1], env[2])
        self.counters["tells_from_services"] += 1
        if local is None:
            self._send_remote(path, [env[3]])
            return
        try:
            self.node.deliver(local, env[3])
        except HerdError as exc:
            self._tell_failed(svc, path, exc, 1)
        self._check_backlog(local)

    def _ask(self, svc: Service, env: list) -> None:
        """ASK ``[3, dest_node, target, body, src, corr]``: answered by a REPLY with its corr."""
        if len(env) < 6 or env[5].__class__ is not int:
            corr = env[5] if len(env) >= 6 and env[5].__class__ is int else None
            raise Refused(P.E_PROTOCOL, "ASK is [3, dest_node, target, body, src, corr:int]", corr)
        corr = env[5]
        local, path = wire.parse_target(self.node.name, env[1], env[2], corr)
        self.counters["asks_from_services"] += 1
        respond = self._proxies.responder(svc)
        if local is None:
            self.node.perform_ask(svc.name, path, env[3], corr, respond)
            return
        try:
            # The reply callback runs in the handler's own turn: the REPLY leaves at once.
            self.node.deliver(local, env[3], lambda ok, value: respond(corr, ok, value))
        except HerdError as exc:
            respond(corr, False, [type(exc).__name__, str(exc)])

    def _tells(self, svc: Service, env: list) -> None:
        """TELLS ``[15, dest_node, target, [body, ...]]``: each body in order, exactly as a TELL."""
        if len(env) < 4 or env[3].__class__ is not list:
            raise Refused(P.E_PROTOCOL, "TELLS is [15, dest_node, target, [body, ...]]")
        local, path = wire.parse_target(self.node.name, env[1], env[2])
        bodies = env[3]
        n = len(bodies)
        self.counters["tells_from_services"] += n
        if local is None:
            self._send_remote(path, bodies)
            return
        self._router.work += n
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
        router = self._router
        if (
            mailbox is not None
            and not router.paused
            and self._backpressure.check(self, mailbox, router.pause, self._resume)
        ):
            self.counters["throttled"] += 1

    def _send_remote(self, path: str | list, bodies: list) -> None:
        """Tells from a service to an actor on another node go with credit (``HerdNode.outflow``,
        as ``ref.send_many``). While a window has none, the bridge stops reading its socket:
        ZeroMQ's high-water marks then hold the services back (the Go client's ``Tell`` blocks),
        so a service's flood costs no memory here and loses nothing."""
        node = self.node
        try:
            if isinstance(path, list):
                sender = node.outflow(f"{path[0]}:{path[1]}", "*")
            else:
                name, _, dest = path.rpartition("@")
                sender = node.outflow(name, dest)
            waiter = sender.send_many(bodies)
        except HerdError as exc:
            self._remote_lost(path, exc, len(bodies))
            return
        if waiter is None:
            return
        fut = asyncio.ensure_future(waiter)
        self.counters["credit_waits"] += 1
        self._credit_waits += 1
        self._router.pause()
        fut.add_done_callback(lambda f: self._credit_done(path, f, len(bodies)))

    def _credit_done(self, path: str | list, fut: asyncio.Future, n: int) -> None:
        self._credit_waits -= 1
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self._remote_lost(path, exc, getattr(exc, "unsent", n))
        if not self._credit_waits and not self._backpressure.holds(self):
            self._resume()

    def _remote_lost(self, path: str | list, exc: BaseException, n: int) -> None:
        """``n`` tells from services to ``path`` were refused at once (no route, no such actor):
        dead letters here, counted in undelivered_tells."""
        self.counters["undelivered_tells"] += n
        reason = dead_reason(exc) if isinstance(exc, Exception) else "no_route"
        self.node.dead_letters.record(path if path.__class__ is str else repr(path), reason, None, n)

    def _resume(self) -> None:
        router = self._router
        if self._credit_waits:  # a service's tells still wait for credit
            return
        if router.is_open and router.paused:
            self._services.heard_all(self._loop.time())
            router.resume()

    def _tell_failed(self, svc: Service, path, exc: HerdError, n: int) -> None:
        # Node.deliver/deliver_many recorded each as a dead letter (and logged it); here the
        # bridge only counts what its services lost.
        self.counters["undelivered_tells"] += n

    def _error(self, identity: bytes, code: str, message: str, corr: Any = None) -> None:
        self.counters["errors_sent"] += 1
        log.info("%s: bridge error %s to %s: %s", self.node.name, code, identity.hex(), message)
        self._router.send_direct(identity, self._pack([P.ERROR, corr, code, message]))

    # -- status ----------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages waiting in outboxes because ZeroMQ pushed back (a producer can wait on it)."""
        return self._router.queued

    def stats(self) -> dict:
        """The bridge's view (msgpack-ready): endpoint, CURVE, services and counters."""
        now = self._loop.time()
        return {
            "endpoint": self.endpoint,
            "curve": self.settings.curve,
            "evict_after": self.evict_after,
            "services": self._services.stats(now),
            "counters": dict(self.counters),
        }
