"""One herd link: an authenticated TCP connection to a peer node (an ``asyncio.Protocol``, on
uvloop or stdlib asyncio).

A :class:`Link` runs the handshake (:mod:`herdrt.herd.handshake`: HELLO with a fresh nonce both
ways, then AUTH over the whole transcript), then carries envelopes in sealed records (AES-GCM, a
key per direction derived from the transcript, one record per write). :meth:`Link.send` queues,
and one ``encode_frames`` + one ``transport.write`` per loop turn flushes the queue (writes are
coalesced); :meth:`Link.send_tell` folds consecutive tells to one target into one TELLS envelope
(the transport is what knows which tells wait in the same write), and no frame over the peer's
limit is ever written. A request someone waits on (``send(env, urgent=True)``: asks, replies) is
written at once when the link is idle, and what follows it in that turn is coalesced as usual: a
round trip saves a loop turn, a burst still costs one write per turn beyond the first.

Incoming frames are decoded by the core's ``FrameDecoder`` and handed up in batches:
``on_envelopes(link, envelopes)`` gets a list of the node-layer envelopes decoded from one read,
in arrival order (one call per batch measured ~90 ns per envelope cheaper than one call per
envelope; see bench/bench_links.py). The list is the receiver's to keep. The callback must be
quick and should not raise (if it does, the error is logged and counted, and the rest of that
batch is lost). Link-level kinds (HEARTBEAT, BYE, ERROR without a correlation id) are consumed by
the link and never handed up. A link that reads a full 64 KiB yields the loop before reading on.

Backpressure: ``send`` raises :class:`LinkOverflow` once ``max_queued`` messages wait in the link's
queue (they pile up while the kernel's socket buffer and the transport's buffer — bounded by
``write_buffer_high`` — are full, i.e. the peer does not read). Senders that prefer to wait call
``await link.drain()``. Memory per link is therefore bounded by about
``write_buffer_high + max_queued`` envelopes, never by how slow the peer is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import HerdConfig
from ..core import FrameDecoder, OnlineStats, RecordOpener, encode_frames
from ..errors import FrameError, FrameTooLarge, HerdError
from ..ratelog import RateLog
from . import protocol as P
from .handshake import Handshake, LinkSession, RecordError, Refusal
from .tls import client_context, misnamed, server_context

__all__ = [
    "LinkError",
    "LinkRefused",
    "LinkOverflow",
    "LinkClosed",
    "LinkSettings",
    "Link",
]

log = logging.getLogger("herdrt.links")

_HEADER_SIZE = 4
#: Most tells one TELLS (or SEND) envelope carries (Link.send_tell).
TELLS_MAX = 1024
#: Credited envelopes may fill a link's queue to this many times ``max_queued`` (Link.send_credited).
CREDITED_FACTOR = 4
#: A read this big makes the link yield the loop before reading more (see data_received).
YIELD_AFTER = 1 << 16
#: Heartbeats of ours a link remembers while it waits for their echo (the peer echoes one per
#: heartbeat of its own, so one or two are pending; more only if the peer stops echoing).
_PROBES_MAX = 32
#: ``Link.errors`` codes of heartbeat echoes that yield no RTT sample.
E_UNKNOWN_ECHO = "unknown_echo"  # an echo_time that names no heartbeat this link sent (or one echoed already)
E_BAD_RTT = "bad_rtt"  # the peer's hold is longer than the round trip (a peer timing its hold coarsely)


class LinkError(HerdError):
    """Base class of link errors."""


class LinkRefused(LinkError, ConnectionError):
    """The link failed before it was established: refused by either side, timed out or closed during
    the handshake. ``code`` is the ERROR code (``"auth"``, ``"version"``, ``"unknown_node"``, ...,
    or ``"closed"`` when the connection just went away), ``reason`` the human-readable reason,
    ``by`` is ``"local"`` or ``"peer"``."""

    def __init__(self, code: str, reason: str, peer: str | None = None, by: str = "local"):
        super().__init__(f"link to {peer or 'peer'} refused ({code}): {reason}")
        self.code = code
        self.reason = reason
        self.peer = peer
        self.by = by


class LinkOverflow(LinkError):
    """``send`` found ``max_queued`` envelopes already waiting on the link (the peer does not keep up)."""


class LinkClosed(LinkError, ConnectionError):
    """The link is not (or no longer) established."""


@dataclass(frozen=True)
class LinkSettings:
    """What a node needs to run links: its name, the herd secret, who may link, and the limits."""

    name: str
    secret: bytes = field(repr=False)
    known_nodes: frozenset[str]
    heartbeat_interval: float = 0.5
    max_frame_size: int = 1 << 20
    #: Seconds for the TCP connect plus the whole handshake.
    handshake_timeout: float = 5.0
    #: Largest frame accepted before authentication (HELLO and AUTH are < 100 bytes).
    handshake_max_frame: int = 4096
    #: Envelopes that may wait in a link's queue; one more raises LinkOverflow.
    max_queued: int = 65536
    #: Transport write-buffer high-water mark in bytes (pause_writing above it).
    write_buffer_high: int = 1 << 20
    #: The version sent in HELLO (only tests change it).
    version: int = P.PROTOCOL_VERSION
    #: Admit clients (names starting with ``~``) that prove the secret, besides known nodes.
    accept_clients: bool = False
    #: Mutual TLS (``[herd.tls]``, see :mod:`herdrt.herd.tls`): what to accept and dial links with.
    ssl_server: ssl.SSLContext | None = field(default=None, repr=False)
    ssl_client: ssl.SSLContext | None = field(default=None, repr=False)
    #: Over TLS, a node's certificate must name it.
    check_cert_names: bool = True

    @classmethod
    def from_config(cls, config: HerdConfig, name: str, **overrides) -> LinkSettings:
        """Settings of node ``name`` in a herd file (or of a client of it: ``name`` starts with
        ``~``); keyword arguments override single fields."""
        client = name.startswith(P.CLIENT_PREFIX)
        if not client:
            config.node(name)
        tls: dict[str, Any] = {}
        if config.tls is not None:
            tls = {
                "ssl_client": client_context(config.tls, None if client else name),
                "check_cert_names": config.tls.check_names,
            }
            if not client:
                tls["ssl_server"] = server_context(config.tls, name)
        base = cls(
            name=name,
            secret=config.secret,
            known_nodes=frozenset(config.nodes),
            heartbeat_interval=config.heartbeat_interval,
            max_frame_size=config.max_frame_size,
            **tls,
        )
        return replace(base, **overrides)


_TELLS, _SEND = P.TELLS, P.SEND

#: What Link._tells holds while no TELLS envelope is open (never queued, so never "the last one").
_NO_TELLS: list = []

# Link states
_CONNECTING, _HANDSHAKE, _UP, _CLOSING, _CLOSED = "connecting", "handshake", "up", "closing", "closed"


def _noop(*_args):
    return None


#: What an ``admit`` hook answers: None to admit, ``(code, message)`` to refuse, or
#: ``(code, message, level)`` to refuse and log it at ``level`` instead of :func:`_refusal_level`'s.
Admission = tuple[str, str] | tuple[str, str, int] | None


def _refusal_level(code: str) -> int:
    # A simultaneous dial (both nodes dial each other at start-up) ends with one of the two
    # links refused as a duplicate: routine, not worth a warning. Every other refusal is (and
    # LinkManager's admit raises a duplicate that is no twin back to WARNING: see Admission).
    return logging.DEBUG if code == P.E_DUPLICATE else logging.WARNING


class Link(asyncio.Protocol):
    """One authenticated TCP link to a peer node (an ``asyncio.Protocol``).

    Made by :class:`LinkServer`, :func:`connect` or :class:`LinkManager`, not directly. Public
    attributes: ``peer`` (the peer's node name, known after its HELLO), ``outbound`` (this node
    dialled), ``dialer`` (name of the node that dialled), ``state``, ``last_heard`` (``loop.time()``
    of the last bytes received), ``heartbeat_intervals`` and ``rtt`` (:class:`OnlineStats` of the
    heartbeat inter-arrival times and of round-trip times, in seconds), ``close_reason``.

    RTT: each heartbeat is a probe, named by its ``sent_time`` (strictly increasing per link); the
    link remembers when it sent each on its own monotonic clock (``time.perf_counter``). The peer
    echoes the ``sent_time`` of the last heartbeat it received with its next one, with ``hold``
    (the seconds it held it, a duration on its own clock). A sample is ``now - sent - hold``, both
    times read here: no timestamp of the peer's clock is ever compared with one of ours. An echo
    that names no probe, or a sample that is not positive, is counted in ``errors``
    (:data:`E_UNKNOWN_ECHO`, :data:`E_BAD_RTT`) and logged rate-limited: ``echoes_in`` is always
    ``rtt.count`` plus those two counts.
    """

    def __init__(
        self,
        settings: LinkSettings,
        on_envelopes: Callable[[Link, list], None],
        *,
        outbound: bool,
        peer: str | None = None,
        admit: Callable[[Link], Admission] | None = None,
        on_up: Callable[[Link], None] | None = None,
        on_down: Callable[[Link, str], None] | None = None,
    ):
        self.settings = settings
        self._on_envelopes = on_envelopes
        self._admit = admit
        self._on_up = on_up or _noop
        self._on_down = on_down or _noop
        self.outbound = outbound
        self.peer: str = peer or ""  # the peer's node name ("" until its HELLO names it)
        self.state = _CONNECTING
        self.close_reason: str | None = None
        self.was_up = False
        # Late-bound attributes: None until connection_made (transport) or the handshake
        # (_seal, _opener); the paths that run before those check, the rest run only after.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._hs = Handshake(settings, outbound, peer, lambda name: misnamed(self.transport, name))
        self._hs_buf = bytearray()
        self._hs_decoder = FrameDecoder(settings.handshake_max_frame)
        self._hs_timer: asyncio.TimerHandle | None = None
        # RecordSealer.seal once the handshake is done: every later write goes through it
        self._seal: Callable[[bytes], bytes] = None  # type: ignore[assignment]
        self._opener: RecordOpener = None  # type: ignore[assignment]  # the peer's records, from its AUTH on
        self._decoder = FrameDecoder(settings.max_frame_size)
        self._queue: list = []
        self._extra = 0  # tells queued inside TELLS envelopes beyond each one's first
        self._tells: list = _NO_TELLS  # the TELLS envelope send_tell may still add to
        self._sends: list = _NO_TELLS  # the SEND envelope send_credited may still add to
        #: Called as ``on_dropped(envelope, exc)`` for an envelope dropped unsent (over the
        #: peer's frame limit, or not msgpack): the layer above may answer for it.
        self.on_dropped: Callable[[list, Exception], None] | None = None
        self._max_queued = settings.max_queued
        self._limit = 0  # max_queued while up, 0 otherwise (lets send() test one number)
        self._paused = False
        self.reading_paused = False  # pause_reading() in force
        self._yielded = False  # reading paused until the next loop turn after a full read
        self._reading = False  # inside data_received: data_received flushes at its end
        self._flush_due = False  # a flush is scheduled for the end of this loop turn
        self._drain_waiters: list[asyncio.Future] = []
        self._aborted: tuple[str, str] | None = None
        self._up_future: asyncio.Future = self._loop.create_future()
        self._closed_future: asyncio.Future = self._loop.create_future()
        # heartbeats
        self._hb_timer: asyncio.TimerHandle | None = None
        self._hb_seq = 0
        self._hb_last_at: float | None = None
        self._hb_sent_time = 0.0  # sent_time of our last heartbeat (it names the probe: kept increasing)
        self._probes: deque[tuple[float, float]] = deque()  # (sent_time, perf_counter() when sent), oldest first
        self._echo: tuple[float, float] | None = None  # (peer's sent_time, perf_counter() when it arrived)
        self._echo_log: RateLog | None = None  # made at the first impossible echo (rare)
        self.heartbeat_intervals = OnlineStats()
        self.rtt = OnlineStats()
        self.last_rtt: float | None = None
        self.last_heard: float = self._loop.time()
        # counters
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.heartbeats_in = 0
        self.echoes_in = 0  # heartbeats echoing one of ours: each is an rtt sample or an error (E_*)
        self.overflows = 0
        self.lost_on_close = 0  # messages still queued when the connection went away...
        self.lost: list = []  # ...and their envelopes, for on_down to account for
        self.pauses = 0
        self.errors: dict[str, int] = {}

    # --- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This node's name."""
        return self.settings.name

    @property
    def dialer(self) -> str:
        """The name of the node that opened this connection."""
        return self.settings.name if self.outbound else self.peer

    @property
    def is_up(self) -> bool:
        return self.state is _UP

    @property
    def queued(self) -> int:
        """Messages waiting in the link's queue (not yet handed to the transport)."""
        return len(self._queue) + self._extra

    @property
    def _event_level(self) -> int:
        # A client's link (the CLI, one per command) comes and goes often: its events are DEBUG,
        # on the node's side and on the client's.
        client = self.peer.startswith(P.CLIENT_PREFIX) or self.settings.name.startswith(P.CLIENT_PREFIX)
        return logging.DEBUG if client else logging.INFO

    def _desc(self) -> str:
        arrow = "->" if self.outbound else "<-"
        return f"{self.settings.name} {arrow} {self.peer or '?'}"

    def __repr__(self) -> str:
        return f"<Link {self._desc()} {self.state}>"

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self._aborted is not None:
            transport.close()
            return
        self.state = _HANDSHAKE
        self.last_heard = self._loop.time()
        transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        self._hs_timer = self._loop.call_later(self.settings.handshake_timeout, self._handshake_timed_out)
        self._write_now(self._hs.hello())

    def data_received(self, data) -> None:
        self.bytes_in += len(data)
        self.last_heard = self._loop.time()
        if self.state is _UP:
            try:
                envs = self._decoder.feed(self._opener.feed(data))
            except RecordError as exc:
                try:  # what the good records before it carried still counts
                    self._deliver(self._decoder.feed(exc.plain))
                except FrameError as frame_exc:
                    self._deliver(list(frame_exc.messages))
                self._fail(P.E_AUTH, f"record from {self.peer} refused: {exc}")
                return
            except FrameError as exc:
                self._deliver(list(exc.messages))
                self._fail(P.E_FRAME, f"bad frame from {self.peer}: {exc}")
                return
            if envs:
                # Replies queued on this link while handling this read go out right after it,
                # not a loop turn later (request/reply latency), and without a scheduled flush.
                self._reading = True
                try:
                    self._deliver(envs)
                finally:
                    self._reading = False
                if self._queue and not self._paused and self.state is _UP:
                    self._flush()
            if len(data) >= YIELD_AFTER and self.state is _UP and not self.reading_paused:
                # A full read: more is likely waiting, and libuv would go on reading this socket
                # (up to 32 reads) before any timer or other link gets a turn. Take the rest next
                # turn, so one flooding peer cannot starve heartbeats and everyone else.
                self._yielded = True
                self.transport.pause_reading()
                self._loop.call_soon(self._end_yield)
        elif self.state is _HANDSHAKE:
            self._handshake_data(data)

    def _end_yield(self) -> None:
        self._yielded = False
        if self.state is _UP and not self.reading_paused:
            self.transport.resume_reading()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        was_state = self.state
        self.state = _CLOSED
        self._limit = 0
        for timer in (self._hs_timer, self._hb_timer):
            if timer is not None:
                timer.cancel()
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by the peer"
            if was_state is _UP:
                log.log(self._event_level, "link %s down: %s", self._desc(), self.close_reason)
        if not self._up_future.done():
            code = self._aborted[0] if self._aborted else "closed"
            self._set_refused(LinkRefused(code, self.close_reason, self.peer, "local"))
        if not self._closed_future.done():
            self._closed_future.set_result(self.close_reason)
        self._wake_drainers()
        self.lost_on_close = len(self._queue) + self._extra
        self.lost, self._queue = self._queue, []
        self._extra = 0
        self._tells = self._sends = _NO_TELLS
        self._on_down(self, self.close_reason)

    def pause_reading(self) -> None:
        """Stop reading from the peer (backpressure: the layer above has too much to do). The
        peer's writes then back up into its own bounded queue."""
        if self.transport is not None and self.state is _UP and not self.reading_paused:
            self.reading_paused = True
            if not self._yielded:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again after :meth:`pause_reading`."""
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and self.state is _UP and not self._yielded:
                self.last_heard = self._loop.time()  # the silence was ours, not the peer's
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self._paused = False
        if self._queue and self.state is _UP:
            self._flush()
        if not self._paused:
            self._wake_drainers()

    # --- handshake --------------------------------------------------------------------------

    def _handshake_data(self, data) -> None:
        # Frames are split here, one at a time, so bytes after the handshake's last frame (the
        # peer may already send envelopes) go to the full-size decoder, not the 4 KiB one.
        buf = self._hs_buf
        buf += data
        limit = self.settings.handshake_max_frame
        while len(buf) >= _HEADER_SIZE:
            length = int.from_bytes(buf[:_HEADER_SIZE], "big")
            if length > limit:
                self._refuse(P.E_FRAME, f"handshake frame of {length} bytes is over the {limit}-byte handshake limit")
                return
            end = _HEADER_SIZE + length
            if len(buf) < end:
                return
            try:
                (env,) = self._hs_decoder.feed(bytes(buf[:end]))
            except FrameError as exc:
                self._refuse(P.E_FRAME, f"bad frame during the handshake: {exc}")
                return
            del buf[:end]
            self.frames_in += 1
            self._handshake_envelope(env)
            if self.state is _UP:
                rest = bytes(buf)
                self._hs_buf = bytearray()
                if rest:
                    self.bytes_in -= len(rest)  # counted again by data_received
                    self.data_received(rest)
                return
            if self.state is not _HANDSHAKE:
                return

    def _handshake_envelope(self, env) -> None:
        kind = env[0] if isinstance(env, list) and env else None
        if kind == P.ERROR:
            self._peer_refused(env)
            return
        hs = self._hs
        try:
            if not hs.hello_seen:
                if kind != P.HELLO:
                    raise P.ProtocolError(f"expected HELLO first, got {P.describe(env)}")
                self.peer = hs.on_hello(env)
                refusal = self._admit(self) if self._admit is not None else None
                if refusal is not None:
                    self._refuse(*refusal)
                    return
                self._write_now(hs.auth())
                # After its AUTH a side's bytes are records (PROTOCOL.md): an ERROR this side
                # still writes (a refusal, a simultaneous dial given up) is sealed too.
                self._seal = hs.sealer()
            else:
                if kind != P.AUTH:
                    raise P.ProtocolError(f"expected AUTH after HELLO, got {P.describe(env)}")
                self._established(hs.on_auth(env))
        except Refusal as exc:
            self._refuse(exc.code, exc.message)
        except P.ProtocolError as exc:
            self._refuse(exc.code, str(exc))

    def _established(self, session: LinkSession) -> None:
        # From here on both directions are sealed records (this side's AUTH went out in clear
        # before, so the peer knows where its records start; this side seals since then).
        self._opener = session.opener()
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.state = _UP
        self._limit = self._max_queued
        self.was_up = True
        log.log(self._event_level, "link %s up", self._desc())
        self._on_up(self)
        if not self._up_future.done():
            self._up_future.set_result(self)
        if self.state is _UP:
            self._hb_timer = self._loop.call_later(self.settings.heartbeat_interval, self._heartbeat)

    def _handshake_timed_out(self) -> None:
        self._hs_timer = None
        if self.state is _HANDSHAKE:
            self._refuse(P.E_TIMEOUT, f"handshake not finished within {self.settings.handshake_timeout} s")

    def _refuse(self, code: str, message: str, level: int | None = None) -> None:
        """Refuse the link during the handshake: ERROR to the peer, log, close."""
        self._count_error(code)
        log.log(
            _refusal_level(code) if level is None else level, "link %s refused (%s): %s", self._desc(), code, message
        )
        self._write_now(P.error(code, message))
        self._set_refused(LinkRefused(code, message, self.peer, "local"))
        self._close_transport(f"refused ({code}): {message}")

    def _peer_refused(self, env) -> None:
        try:
            _, code, message = P.parse_error(env)
        except P.ProtocolError as exc:
            code, message = P.E_PROTOCOL, f"malformed ERROR: {exc}"
        self._count_error(code)
        log.log(
            _refusal_level(code), "link %s refused by %s (%s): %s", self._desc(), self.peer or "the peer", code, message
        )
        self._set_refused(LinkRefused(code, message, self.peer, "peer"))
        self._close_transport(f"refused by the peer ({code}): {message}")

    def _set_refused(self, exc: LinkRefused) -> None:
        fut = self._up_future
        if not fut.done():
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: inbound links have nobody awaiting; the refusal is logged

    def abort_handshake(self, code: str, message: str) -> None:
        """Give up this link before it is established (used to settle simultaneous dials)."""
        if self.state is _CONNECTING:
            self._aborted = (code, message)
            self.close_reason = message
            self._set_refused(LinkRefused(code, message, self.peer, "local"))
        elif self.state is _HANDSHAKE:
            self._refuse(code, message)

    async def wait_up(self) -> Link:
        """Wait until the handshake is done; raises :class:`LinkRefused` if it fails."""
        return await asyncio.shield(self._up_future)

    async def wait_closed(self) -> str:
        """Wait until the connection is closed; returns the close reason."""
        return await asyncio.shield(self._closed_future)

    @property
    def is_closed(self) -> bool:
        """The connection is gone (or never came)."""
        return self._closed_future.done()

    def connect_failed(self) -> None:
        """The dial never reached a connection: the link is closed before it began."""
        self.state = _CLOSED
        self._on_down(self, "connect failed")

    # --- receiving --------------------------------------------------------------------------

    def _deliver(self, envs: list) -> None:
        # Fast path: a batch with no link-level envelope goes up as it is, in one call.
        self.frames_in += len(envs)
        link_kinds = P.LINK_KINDS
        for env in envs:
            if env.__class__ is not list or not env or env[0].__class__ is not int or env[0] in link_kinds:
                break
        else:
            self._call_up(envs)
            return
        # Mixed batch: hand up each run of node-layer envelopes, handle the link ones in between.
        run: list = []
        for env in envs:
            if env.__class__ is list and env and env[0].__class__ is int and env[0] not in link_kinds:
                run.append(env)
                continue
            if run:
                self._call_up(run)
                run = []
            if self.state is not _UP:
                return
            self._link_envelope(env)
            if self.state is not _UP:
                return
        if run:
            self._call_up(run)

    def _call_up(self, envs: list) -> None:
        try:
            self._on_envelopes(self, envs)
        except Exception:
            # A bug in the layer above must not kill the link; the rest of that batch is lost.
            self._count_error("callback")
            log.exception("link %s: on_envelopes raised; %d envelopes dropped", self._desc(), len(envs))

    def _link_envelope(self, env) -> None:
        kind = env[0] if env.__class__ is list and env else None
        try:
            if kind == P.HEARTBEAT:
                self._on_heartbeat(*P.parse_heartbeat(env))
            elif kind == P.ERROR:
                corr_id, code, message = P.parse_error(env)
                if corr_id is not None:
                    self._call_up([env])  # an error answering a request: the node layer's
                else:
                    self._count_error(code)
                    log.log(_refusal_level(code), "link %s: peer reports error (%s): %s", self._desc(), code, message)
            elif kind == P.BYE:
                reason = P.parse_bye(env)
                log.log(self._event_level, "link %s closed by the peer: %s", self._desc(), reason)
                self._close_transport(f"closed by the peer: {reason}")
            elif kind in (P.HELLO, P.AUTH):
                raise P.ProtocolError(f"{P.kind_name(kind)} after the handshake")
            else:
                raise P.ProtocolError(
                    f"an envelope must be an array starting with an integer kind, got {P.describe(env)}"
                )
        except P.ProtocolError as exc:
            self._fail(exc.code, f"from {self.peer}: {exc}")

    def _on_heartbeat(self, seq: int, sent: float, echo: float | None, hold: float) -> None:
        # perf_counter, not loop.time(): uvloop's loop.time() is in whole milliseconds and cached
        # per loop turn, far too coarse for a hold or an RTT of tens of microseconds.
        arrived = time.perf_counter()
        now = self._loop.time()
        self.heartbeats_in += 1
        if self._hb_last_at is not None:
            self.heartbeat_intervals.update(now - self._hb_last_at)
        self._hb_last_at = now
        self._echo = (sent, arrived)
        if echo is not None:
            self._on_echo(echo, hold, arrived)

    def _on_echo(self, echo: float, hold: float, arrived: float) -> None:
        self.echoes_in += 1
        probes = self._probes
        sent_at = next((at for sent_time, at in probes if sent_time == echo), None)
        if sent_at is None:
            self._count_error(E_UNKNOWN_ECHO)
            self._echo_ratelog().warning(
                E_UNKNOWN_ECHO,
                "link %s: heartbeat echo of %r names no heartbeat sent on this link (%d pending); no RTT sample",
                self._desc(),
                echo,
                len(probes),
            )
            return
        # The peer echoes the last heartbeat it received and TCP keeps order: the ones before this
        # one will never be echoed.
        while probes.popleft()[0] != echo:
            pass
        rtt = arrived - sent_at - hold
        if rtt > 0.0 and hold >= 0.0:
            self.last_rtt = rtt
            self.rtt.update(rtt)
            return
        self._count_error(E_BAD_RTT)
        self._echo_ratelog().info(
            E_BAD_RTT,
            "link %s: heartbeat echo held %.6f s by the peer, %.6f s round trip here; no RTT sample "
            "(the peer times its hold too coarsely, or reports it wrong)",
            self._desc(),
            hold,
            arrived - sent_at,
        )

    def _echo_ratelog(self) -> RateLog:
        # Impossible echoes are counted each (errors) and logged at most once a minute per link.
        if self._echo_log is None:
            self._echo_log = RateLog(log, interval=60.0, max_keys=2)
        return self._echo_log

    def _heartbeat(self) -> None:
        self._hb_timer = None
        if self.state is not _UP:
            return
        self._hb_timer = self._loop.call_later(self.settings.heartbeat_interval, self._heartbeat)
        if self.queued >= self._max_queued:
            return  # the peer is not reading; do not pile heartbeats onto a full queue
        self._hb_seq += 1
        # sent_time is the wall clock (PROTOCOL.md); here it only names the probe, so it must not
        # repeat even if the wall clock stands still or steps back.
        sent_time = max(time.time(), math.nextafter(self._hb_sent_time, math.inf))
        self._hb_sent_time = sent_time
        now = time.perf_counter()
        if len(self._probes) >= _PROBES_MAX:
            self._probes.popleft()
        self._probes.append((sent_time, now))
        if self._echo is not None:
            echo, arrived = self._echo
            self._echo = None
            env = P.heartbeat(self._hb_seq, sent_time, echo, now - arrived)
        else:
            env = P.heartbeat(self._hb_seq, sent_time)
        self._enqueue(env)

    # --- sending ----------------------------------------------------------------------------

    def send(self, envelope, urgent: bool = False) -> None:
        """Queue one envelope (a list starting with its kind); it is written at the end of this loop turn.

        ``urgent`` (a request someone waits on, such as an ASK): on an idle link — nothing queued,
        not inside a read — the envelope is written at once instead, saving the round trip a loop
        turn. Behind other envelopes it queues and is coalesced like any other (as TCP sends the
        first segment at once and batches while busy).

        Raises :class:`LinkClosed` if the link is not up, :class:`LinkOverflow` if ``max_queued``
        envelopes are already waiting (the envelope is not queued; ``await drain()`` and retry)."""
        q = self._queue
        n = len(q)
        if n + self._extra >= self._limit:  # _limit is 0 unless the link is up: one test covers both refusals
            self._cannot_send()
        q.append(envelope)
        if envelope[0] == _TELLS:  # (one passed on for another node) the bound counts each message
            self._extra += len(envelope[3]) - 1
        if not n and not self._paused and not self._reading:
            if urgent and not self._flush_due:
                self._flush()  # idle: out now; whatever else this turn sends is coalesced
                self._schedule_flush()  # ...by one flush at the turn's end
            else:
                self._schedule_flush()

    def send_tell(self, dest: str, target, body) -> None:
        """Queue a TELL of ``body`` to ``target`` on node ``dest``, like :meth:`send`.

        Consecutive tells to one target queued in one loop turn travel as one TELLS envelope (up
        to ``TELLS_MAX`` bodies): one frame to encode and decode instead of many, and one mailbox
        append at the other end. The bound and the counters still count each message."""
        q = self._queue
        n = len(q)
        if n + self._extra >= self._limit:
            self._cannot_send()
        if n:
            last = q[-1]
            if last is self._tells and last[2] == target and last[1] == dest:
                bodies = last[3]
                if len(bodies) < TELLS_MAX:
                    bodies.append(body)
                    self._extra += 1
                    return
        self._tells = env = [P.TELLS, dest, target, [body], self.settings.name]
        q.append(env)
        if not n and not self._paused and not self._reading:
            self._schedule_flush()

    def send_credited(self, dest: str, target, body, window: int, seq: int) -> None:
        """Queue ``body``, the ``seq``-th message of credit window ``window`` to ``target`` on node
        ``dest`` (see :mod:`herdrt.herd.credit`): consecutive ones travel as one SEND envelope.

        Credited messages are bounded by the credit the target's node granted, not by
        ``max_queued``: they are refused (:class:`LinkOverflow`) only past ``CREDITED_FACTOR``
        times it, which credit-keeping senders never reach."""
        q = self._queue
        n = len(q)
        if n + self._extra >= self._limit * CREDITED_FACTOR:
            self._cannot_send()
        if n:
            last = q[-1]
            if last is self._sends and last[5] == window and last[1] == dest:
                bodies = last[3]
                if len(bodies) < TELLS_MAX and last[6] + len(bodies) == seq:
                    bodies.append(body)
                    self._extra += 1
                    return
        self._sends = env = [P.SEND, dest, target, [body], self.settings.name, window, seq]
        q.append(env)
        if not n and not self._paused and not self._reading:
            self._schedule_flush()

    def send_control(self, envelope) -> None:
        """Queue an envelope that credit already bounds, or that keeps credit flowing (SEND
        passed on, CREDIT, DEAD_LETTERS): like :meth:`send`, with the bound of :meth:`send_credited`."""
        q = self._queue
        n = len(q)
        if n + self._extra >= self._limit * CREDITED_FACTOR:
            self._cannot_send()
        q.append(envelope)
        if envelope[0] == _SEND and envelope[3]:
            self._extra += len(envelope[3]) - 1
        if not n and not self._paused and not self._reading:
            self._schedule_flush()

    def _cannot_send(self):
        if self.state is not _UP:
            raise LinkClosed(
                f"link {self._desc()} is {self.state}" + (f": {self.close_reason}" if self.close_reason else "")
            )
        self.overflows += 1
        raise LinkOverflow(
            f"link {self._desc()}: {self.queued} messages already queued (max_queued="
            f"{self._max_queued}); the peer is not keeping up — await link.drain() or shed load"
        )

    def _enqueue(self, env) -> None:
        # Link-level envelopes (heartbeat, BYE) bypass the bound: they are rare and must go out.
        q = self._queue
        q.append(env)
        if len(q) == 1 and not self._paused:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        q = self._queue
        if not q or self._paused or self.state is not _UP:
            return
        self._queue = []
        self._extra = 0
        self._tells = self._sends = _NO_TELLS
        try:
            data = encode_frames(q, self.settings.max_frame_size)
            self.frames_out += len(q)
        except (TypeError, ValueError, OverflowError, FrameTooLarge):
            data = self._encode_each(q)
        data = self._seal(data)
        self.bytes_out += len(data)
        self.transport.write(data)
        if self._drain_waiters and not self._paused:
            self._wake_drainers()

    def _encode_each(self, envs: list) -> bytes:
        # Slow path: some envelope cannot be encoded, or is over the peer's frame limit. A TELLS
        # is split in halves until the culprit is alone; it is dropped (logged, counted), the
        # rest goes.
        frames: list[bytes] = []
        for env in envs:
            self._encode_one(env, frames)
        self.frames_out += len(frames)
        return b"".join(frames)

    def _encode_one(self, env, frames: list) -> None:
        try:
            frames.append(encode_frames((env,), self.settings.max_frame_size))
            return
        except FrameTooLarge as exc:
            code, problem = "oversize", f"over the peer's max_frame_size ({exc})"
            error: Exception = exc
        except (TypeError, ValueError, OverflowError) as exc:
            code, problem, error = "encode", f"msgpack cannot encode it ({exc})", exc
        if env.__class__ is list and env and (env[0] == P.TELLS or env[0] == P.SEND) and len(env[3]) > 1:
            bodies = env[3]
            half = len(bodies) // 2
            first, second = env[:], env[:]
            first[3], second[3] = bodies[:half], bodies[half:]
            if env[0] == P.SEND:
                second[6] = env[6] + half
            self._encode_one(first, frames)
            self._encode_one(second, frames)
            return
        self._count_error(code)
        log.error("link %s: dropped an envelope: %s: %.200r", self._desc(), problem, env)
        if self.on_dropped is not None:
            try:
                self.on_dropped(env, error)
            except Exception:
                log.exception("link %s: on_dropped raised", self._desc())

    def _write_now(self, env) -> None:
        # Handshake envelopes and link errors: written at once, outside the queue (sealed once
        # the handshake is done).
        data = encode_frames([env])
        if self._seal is not None:
            data = self._seal(data)
        self.frames_out += 1
        self.bytes_out += len(data)
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the link can take more: not paused by the transport and the queue below ``max_queued``.

        Raises :class:`LinkClosed` if the link closes meanwhile."""
        while self.state is _UP and (self._paused or len(self._queue) + self._extra >= self._max_queued):
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.state is not _UP:
            raise LinkClosed(f"link {self._desc()} closed: {self.close_reason}")

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # --- closing ----------------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close on purpose: BYE (after everything queued), then close the connection. Idempotent."""
        if self.state is _UP:
            self._enqueue(P.bye(reason))
            self._paused = False  # BYE must go out even past the high-water mark
            self._flush()
            log.log(self._event_level, "link %s closed: %s", self._desc(), reason)
            self._close_transport(reason)
        elif self.state is _HANDSHAKE:
            self._close_transport(reason)
        elif self.state is _CONNECTING:
            self.abort_handshake("closed", reason)

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once, discarding anything unsent."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None and self.state is not _CLOSED:
            self.transport.abort()

    def refuse(self, code: str, message: str) -> None:
        """The layer above refuses what the peer sent: ERROR ``code`` to it, then close the link."""
        self._fail(code, message)

    def _fail(self, code: str, message: str) -> None:
        """An established link met a protocol or frame error: ERROR to the peer, log, close this link only."""
        if self.state is not _UP:
            return
        self._count_error(code)
        log.warning("link %s closed on error (%s): %s", self._desc(), code, message)
        # (what is still queued is not sent: connection_lost hands it to on_down as lost)
        self._write_now(P.error(code, message[:500]))
        self._close_transport(f"error ({code}): {message}")

    def _close_transport(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self._hb_timer is not None:
            self._hb_timer.cancel()
            self._hb_timer = None
        if self.state is not _CLOSED and self.transport is not None:
            self.state = _CLOSING
            self._limit = 0
            self.transport.close()

    def _count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    # --- stats ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters and timings of this link, as a msgpack-ready dict."""
        transport = self.transport
        return {
            "peer": self.peer,
            "direction": "out" if self.outbound else "in",
            "state": self.state,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queued": self.queued,
            "write_buffer": transport.get_write_buffer_size() if transport is not None and self.state is _UP else 0,
            "overflows": self.overflows,
            "pauses": self.pauses,
            "errors": dict(self.errors),
            "heartbeats_in": self.heartbeats_in,
            "echoes_in": self.echoes_in,
            "heartbeat_intervals": self.heartbeat_intervals.to_dict(),
            "rtt": self.rtt.to_dict(),
            "last_rtt": self.last_rtt,
            "silent_for": self._loop.time() - self.last_heard,
        }
