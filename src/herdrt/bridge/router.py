"""The bridge's ZeroMQ ROUTER: the socket, its security (CURVE and ZAP), its connection events,
reading it without blocking the loop, and the per-peer outboxes ZeroMQ pushes back into.

It knows nothing of services or the herd: it hands each message (routing id first) to
``on_message``, reports a closed connection by its file descriptor to ``on_disconnect`` and a
peer ZeroMQ no longer knows to ``on_unroutable``.

Speed: the socket is a plain ``zmq.Socket`` watched with ``loop.add_reader`` on its (edge-triggered)
file descriptor; on readiness the router drains it with non-blocking receives, and re-checks
``ZMQ_EVENTS`` after receiving and after sending so no edge is lost. Sends are non-blocking too;
when ZeroMQ pushes back (the peer's high-water mark) messages wait in the peer's bounded outbox,
and past ``max_queued`` they are refused and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Container, Mapping
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..ratelog import RateLog

if TYPE_CHECKING:
    from ..config import BridgeConfig
    from ..runtime.scheduler import Scheduler

__all__ = ["Peer", "Router", "ZAP_DOMAIN"]

log = logging.getLogger("herdrt.bridge")

ZAP_DOMAIN = "herdrt"

# pyzmq's send_multipart/recv_multipart cost ~5 us a message in Python sugar; these are the
# Cython backend's single-frame calls, with plain int flags (enum arithmetic is slow too).
_zsend: Callable[..., Any] = zmq.backend.Socket.send
_zrecv: Callable[..., Any] = zmq.backend.Socket.recv
_zget: Callable[..., Any] = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SRCFD = int(zmq.SRCFD)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_FAILED_AUTH = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED_PROTOCOL = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) | _FAILED_PROTOCOL | _FAILED_AUTH

DRAIN_BUDGET = 4096  # messages handled per loop turn before the loop gets control back
_RETRY_DELAY = 0.005  # seconds between attempts to flush outboxes ZeroMQ pushed back on

#: The router's counters (in the dict it is given).
COUNTERS = (
    "messages_out",
    "bytes_out",
    "outbox_overflows",
    "unroutable",
    "curve_denied",
    "handshakes_failed",
    "handler_errors",
)


class Peer:
    """One connection the router sends to: its routing id, its socket and its outbox."""

    __slots__ = ("identity", "fd", "outbox", "overflowing", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.identity: bytes | None = None
        self.fd = -1  # the node-side socket of its connection: the monitor reports its close by it
        self.outbox: collections.deque[bytes] = collections.deque()
        self.overflowing = False
        self.messages_in = 0
        self.messages_out = 0


class Router:
    """A bound ROUTER read on the event loop (see the module doc).

    ``known`` holds the routing ids whose connection is known already: for a message from any
    other id the router notes its connection's descriptor in ``src_fd`` before ``on_message``.
    A handler adds to ``work`` the messages a batch held beyond the first (for the budget), and
    may take ``now`` (the loop's time when the drain began) as the time a message came.
    """

    def __init__(
        self,
        label: str,
        loop: asyncio.AbstractEventLoop,
        settings: BridgeConfig,
        counters: dict[str, int],
        *,
        known: Container[bytes],
        scheduler: Scheduler,
        on_message: Callable[[list[bytes]], None],
        on_disconnect: Callable[[int], None],
        on_unroutable: Callable[[Any, str], None],
    ):
        self.label = label  # whose router, for logs
        self.loop = loop
        self.settings = settings
        self.counters = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.known = known
        self.scheduler = scheduler
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.on_unroutable = on_unroutable
        self.endpoint = ""
        self.src_fd = -1  # the connection of the message being handled, when it came from an unknown id
        self.work = 0  # messages handled in this drain
        self.now = 0.0  # the loop's time when this drain began
        self.paused = False  # not reading (see pause)
        self.last_denied_key: bytes | None = None  # set by the ZAP handler's thread
        self.ratelog = RateLog(log)
        self._backlog: set[Peer] = set()  # peers whose outbox is not empty
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._fd = -1
        self._monitor: zmq.Socket | None = None
        self._monitor_fd = -1
        self._auth: Any = None
        self._retry: asyncio.TimerHandle | None = None
        self._recheck = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, host: str, port: int, max_message: int) -> str:
        """Bind ``tcp://host:port`` (and start the ZAP handler when CURVE is on); the endpoint
        bound. ZeroMQ cuts off a peer whose message is over ``max_message`` bytes. Raises OSError."""
        loop = self.loop
        ctx: zmq.Context = zmq.Context()  # our own: the ZAP handler is per context, and tests run several nodes
        sock = ctx.socket(zmq.ROUTER)
        s = self.settings
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # Again/EHOSTUNREACH instead of silent drops
            sock.setsockopt(zmq.LINGER, 200)
            sock.setsockopt(zmq.MAXMSGSIZE, max_message)
            if s.curve:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("herdrt.bridge.zap"))
                self._auth.start()
                self._auth.configure_curve_callback(ZAP_DOMAIN, _AllowedKeys(self, s.allowed_client_keys))
                sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, s.curve_secret_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, s.curve_public_key)
            sock.bind(f"tcp://{host}:{port}")
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            sock.close(0)
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.term()
            raise OSError(f"bridge of node {self.label} cannot bind tcp://{host}:{port}: {exc}") from None
        self._ctx, self._sock = ctx, sock
        self._fd = sock.getsockopt(zmq.FD)
        # Connection events: a closed connection ends its session at once, and every refused
        # handshake (CURVE or not) is counted.
        monitor = self._monitor = sock.get_monitor_socket(_DISCONNECTED | _HANDSHAKE_FAILED)
        self._monitor_fd = monitor.getsockopt(zmq.FD)
        loop.add_reader(self._monitor_fd, self._drain_monitor)
        loop.add_reader(self._fd, self.drain)
        loop.call_soon(self.drain)  # the edge may have passed already
        return self.endpoint

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        """Stop reading, drop every outbox, close the socket and the context (idempotent)."""
        sock, monitor, ctx = self._sock, self._monitor, self._ctx
        if sock is None or monitor is None or ctx is None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        loop = self.loop
        if not self.paused:
            loop.remove_reader(self._fd)
        loop.remove_reader(self._monitor_fd)
        self.paused = False
        self._sock = None
        sock.disable_monitor()
        monitor.close(0)
        self._monitor = None
        sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        ctx.term()
        self._ctx = None

    def pause(self) -> None:
        """Stop reading: ZeroMQ then pushes back on the peers (their high-water marks)."""
        if self._sock is not None and not self.paused:
            self.paused = True
            self.loop.remove_reader(self._fd)

    def resume(self) -> None:
        """Read again (and at once: what waited raised no new edge)."""
        if self._sock is None or not self.paused:
            return
        self.paused = False
        self.loop.add_reader(self._fd, self.drain)
        self.drain()

    # -- reading ---------------------------------------------------------------------------------

    def drain(self) -> None:
        """Handle every message waiting on the socket (up to a budget per loop turn)."""
        sock = self._sock
        if sock is None or self.paused:
            return
        self._drain_monitor()  # a connection that closed ends its session before anything else is read
        self.now = self.loop.time()
        self.work = 0
        # The actors these messages wake run when the drain ends, in this callback (as for herd
        # links), so their replies leave now rather than a loop turn later.
        sched = self.scheduler
        armed = sched.hold()
        try:
            self._drain_socket(sock)
        finally:
            sched.release(armed)
        if self._backlog:
            self._flush_backlog()

    def _drain_socket(self, sock) -> None:
        handle, known = self.on_message, self.known
        # Ask ZMQ_EVENTS before each receive rather than catch zmq.Again (building that exception
        # costs more than handling a message). Reading EVENTS also re-arms the edge-triggered FD.
        while _zget(sock, _EVENTS) & _POLLIN:
            try:
                identity = _zrecv(sock, _NOBLOCK)
            except zmq.Again:
                break
            if identity in known:
                self.src_fd = -1
                frames = [identity, _zrecv(sock, _NOBLOCK)]  # a message arrives whole: never Again here
            else:  # a SERVICE_HELLO (or a stranger): note which connection it came by
                frame = _zrecv(sock, _NOBLOCK, False)
                self.src_fd = frame.get(_SRCFD)
                frames = [identity, frame.bytes]
            while _zget(sock, _RCVMORE):
                frames.append(_zrecv(sock, _NOBLOCK))
            try:
                handle(frames)
            except Exception:  # a bug must not stop the bridge from reading
                self.counters["handler_errors"] += 1
                log.exception("%s: bridge failed handling a message", self.label)
            self.work += 1
            if self.paused:
                break  # the handler paused reading: read again once it resumes
            if self.work >= DRAIN_BUDGET:
                self.loop.call_soon(self.drain)  # the FD will not signal again for these
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
                self.on_disconnect(value)
            elif kind & _HANDSHAKE_FAILED:
                self._handshake_failed(kind, event)

    def _handshake_failed(self, kind: int, event: Mapping[str, Any]) -> None:
        c = self.counters
        c["handshakes_failed"] += 1
        if self.settings.curve:
            c["curve_denied"] += 1
        if kind == _FAILED_AUTH:
            why = f"client key {self.last_denied_key!r} not allowed"
        elif kind == _FAILED_PROTOCOL:
            why = "a protocol or cryptographic error (wrong server key?)"
        else:
            why = "a peer speaking another security mechanism (no CURVE?)"
        self.ratelog.warning(
            ("handshake", kind),
            "%s: bridge refused a ZeroMQ handshake from %s: %s",
            self.label,
            event.get("endpoint", b"?").decode("utf-8", "replace"),
            why,
        )

    # -- sending ---------------------------------------------------------------------------------

    def send(self, peer: Peer, body: bytes) -> bool:
        """Send ``body`` to ``peer`` now, or queue it in its outbox while ZeroMQ pushes back.

        False (counted) if the outbox is full or ZeroMQ no longer knows the peer (then
        ``on_unroutable`` hears of it)."""
        outbox = peer.outbox
        if not outbox:
            try:
                # With ROUTER_MANDATORY the routing frame fails (Again, EHOSTUNREACH) or the
                # message goes: the second frame cannot fail on its own.
                _zsend(self._sock, peer.identity, _MORE)
                _zsend(self._sock, body, _NOBLOCK)
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:  # EHOSTUNREACH: ZeroMQ no longer knows the peer
                self.counters["unroutable"] += 1
                self.on_unroutable(peer, f"connection gone ({exc})")
                return False
            else:
                self._sent(peer, len(body))
                return True
        if len(outbox) >= self.settings.max_queued:
            self.counters["outbox_overflows"] += 1
            if not peer.overflowing:
                peer.overflowing = True
                log.warning(
                    "%s: bridge outbox to %s is full (%d): refusing messages until it drains",
                    self.label,
                    peer,
                    len(outbox),
                )
            return False
        outbox.append(body)
        if peer not in self._backlog:
            self._backlog.add(peer)
            self._arm_retry()
        return True

    def send_direct(self, identity: bytes, body: bytes) -> bool:
        """Best effort, outside any outbox (ERROR, WELCOME, BYE): False (counted) if it could not go."""
        try:
            _zsend(self._sock, identity, _MORE)
            _zsend(self._sock, body, _NOBLOCK)
        except zmq.ZMQError:  # Again or gone: the peer will hear nothing, and re-hello if alive
            self.counters["unroutable"] += 1
            return False
        self.counters["messages_out"] += 1
        self._after_send()
        return True

    def forget(self, peer: Peer) -> int:
        """Drop what ``peer``'s outbox holds (its connection is gone); how many messages that was."""
        n = len(peer.outbox)
        peer.outbox.clear()
        self._backlog.discard(peer)
        return n

    @property
    def queued(self) -> int:
        """Messages waiting in outboxes because ZeroMQ pushed back."""
        return sum(len(peer.outbox) for peer in self._backlog)

    def _sent(self, peer: Peer, size: int) -> None:
        c = self.counters
        c["messages_out"] += 1
        c["bytes_out"] += size
        peer.messages_out += 1
        self._after_send()

    def _after_send(self) -> None:
        if not self._recheck:
            # Sending can swallow the FD's edge for messages that arrived meanwhile: look once
            # per loop turn, after this batch of sends.
            self._recheck = True
            self.loop.call_soon(self._recheck_socket)

    def _recheck_socket(self) -> None:
        self._recheck = False
        sock = self._sock
        if sock is not None and not self.paused and _zget(sock, _EVENTS) & _POLLIN:
            self.drain()

    def _arm_retry(self) -> None:
        if self._retry is None and self.loop is not None:
            self._retry = self.loop.call_later(_RETRY_DELAY, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry = None
        self._flush_backlog()
        if self._backlog:
            self._arm_retry()

    def _flush_backlog(self) -> None:
        sock = self._sock
        for peer in list(self._backlog):
            outbox = peer.outbox
            while outbox:
                try:
                    _zsend(sock, peer.identity, _MORE)
                    _zsend(sock, outbox[0], _NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    self.counters["unroutable"] += 1
                    self.on_unroutable(peer, f"connection gone ({exc})")
                    break
                self._sent(peer, len(outbox.popleft()))
            if not outbox:
                self._backlog.discard(peer)
                peer.overflowing = False


class _AllowedKeys:
    """ZAP credentials provider: admits the configured CURVE client keys (runs on the ZAP thread)."""

    def __init__(self, router: Router, keys: tuple[bytes, ...]):
        self._router = router
        self._keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._keys:
            return True
        # Counted and logged (rate-limited) on the loop, from the socket monitor's event.
        self._router.last_denied_key = key
        return False
