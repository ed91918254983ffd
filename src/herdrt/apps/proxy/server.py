"""The client-facing TCP server of one proxy server, and its traffic log.

:class:`ProxyServer` answers the line protocol (:mod:`.protocol`) on one port, keeps the
:class:`~.store.LocationStore`, hands every newly stored record to a ``flood(record)`` callable
(the herd sends it to the neighbors) and takes records from other servers through
:meth:`ProxyServer.receive_update`. It runs on uvloop or stdlib asyncio.

Per connection, lines are answered strictly in the order they arrived. Each line is acted on as
soon as it is read (an IAMAT is timed, stored and flooded at once; a WHATSAT reads the store at
once and starts its places lookup), and the replies are written in order by a writer task, so a
WHATSAT that waits on a lookup holds back the replies to later lines but not their effects. At most
``max_pipeline`` replies wait per connection; then reading pauses (backpressure).

What a client may do is bounded (:class:`ProxyLimits`, as nginx and HAProxy bound idle time, line
length and connections): a line over ``max_line`` bytes is answered ``? <its first max_line
bytes>`` and the rest of it skipped, so a connection holds a few KiB at most; a client silent for
``idle_timeout``, or slower than ``line_timeout`` to finish a line, is disconnected; past
``max_connections`` a new connection is closed at once; an IAMAT time more than
``max_future_skew`` ahead of this server's clock is refused (``? …``), from a client or a peer, so
no one can pin a client's location with a far-future time. Every one of these is counted
(:attr:`ProxyServer.counters`), and logged rate-limited, never once per line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import logging.handlers
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...ratelog import RateLog
from .places import PlacesProvider, places_error
from .protocol import CommandError, IAmAt, format_skew, invalid_reply, parse_command, whatsat_reply
from .store import AtRecord, LocationStore

__all__ = ["ProxyServer", "ProxyLimits", "TrafficLog", "Flood"]

log = logging.getLogger("herdrt.proxy")

#: ``flood(record)``: send a wire record to the neighbors; plain or ``async`` (then run as a task).
Flood = Callable[[dict[str, Any]], Any]

_NS = 1_000_000_000
#: Bytes of an invalid line (and of its ``?`` reply) written to the traffic log.
_LOGGED_INVALID = 200
#: Invalid lines of one connection written to the traffic log; the rest are counted in one entry.
_LOGGED_INVALID_LINES = 10


@dataclass(frozen=True)
class ProxyLimits:
    """What one proxy server allows a client (see the module docstring)."""

    #: Bytes in one line; a longer one is answered ``? <its first max_line bytes>``, the rest skipped.
    max_line: int = 4096
    #: Open client connections; a connection past it is closed at once.
    max_connections: int = 1024
    #: Seconds a client may send nothing before it is disconnected.
    idle_timeout: float = 60.0
    #: Seconds a client has to finish a line it started (slowloris).
    line_timeout: float = 10.0
    #: Seconds an IAMAT's time may be ahead of this server's clock.
    max_future_skew: float = 5.0


# Accept queue length: asyncio's default (100) makes a burst of more clients than that, arriving
# while the loop is busy, wait for the kernel's SYN retransmit (about a second). The kernel caps it
# at net.core.somaxconn.
_BACKLOG = 1024


def _escape(text: str) -> str:
    # One log entry per line: make newlines and other control characters visible.
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def _cut(data: bytes) -> str:
    text = data[:_LOGGED_INVALID].decode("utf-8", "backslashreplace")
    return text if len(data) <= _LOGGED_INVALID else f"{text}... ({len(data)} bytes)"


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A size-capped log file (and its rotated copies) that only its owner can read: it holds
    client locations."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older version may be more open
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", buffering=1)


class TrafficLog:
    """A text log of one server's traffic (``None`` path: no file), size-capped and private.

    Entries are ``<UTC ISO time> <server> <kind> <detail>``; kinds are ``IN``/``OUT`` (client lines
    and replies, with the peer address; an invalid line and its ``?`` reply are cut to 200 bytes),
    ``STORED``/``IGNORED``/``REFUSED`` (updates) and ``FLOOD-ERROR``. Control characters are
    escaped so that every entry is one line. The file is written mode 0600 and rotated at
    ``max_bytes`` (``<path>.1`` ... ``.<backups>``), so the log of a flood of input stays bounded.
    """

    def __init__(self, server: str, path: str | os.PathLike | None, max_bytes: int = 10 << 20, backups: int = 3):
        self.server = server
        self.path = Path(path) if path is not None else None
        self._handler: logging.Handler | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = _PrivateRotatingFile(self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def write(self, kind: str, detail: str) -> None:
        if self._handler is None:
            return
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        self._handler.handle(logging.makeLogRecord({"msg": f"{stamp} {self.server} {kind} {_escape(detail)}"}))

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


class ProxyServer:
    """One server of the proxy herd: the client port, the store, the flood seam.

    ``flood`` may be None (a lone server) and may be set later. ``reflood``: when a record from
    another server is stored, pass it on with ``flood`` (True: the app does the multi-hop flooding
    and the newer-timestamp rule stops it; set False if the herd layer forwards by itself).
    ``clock`` returns POSIX time in integer nanoseconds (``time.time_ns``; tests may fix it).
    ``backlog``: the listening socket's accept queue (clients connecting faster than accepted).
    """

    def __init__(
        self,
        name: str,
        places: PlacesProvider,
        *,
        store: LocationStore | None = None,
        flood: Flood | None = None,
        reflood: bool = True,
        traffic: TrafficLog | None = None,
        clock: Callable[[], int] = time.time_ns,
        max_pipeline: int = 64,
        limits: ProxyLimits = ProxyLimits(),
        backlog: int = _BACKLOG,
    ):
        self.name = name
        self.places = places
        self.store = store if store is not None else LocationStore()
        self.flood = flood
        self.reflood = reflood
        self.traffic = traffic if traffic is not None else TrafficLog(name, None)
        self.clock = clock
        self.max_pipeline = max_pipeline
        self.limits = limits
        self.backlog = backlog
        self.ratelog = RateLog(log)
        #: What this server did and refused; msgpack-ready (a node's metrics read it).
        self.counters = {
            "connections": 0,
            "connections_refused": 0,
            "timeouts": 0,
            "lines": 0,
            "iamats": 0,
            "whatsats": 0,
            "invalid": 0,
            "long_lines": 0,
            "future_refused": 0,
            "stored": 0,
            "ignored": 0,
            "floods": 0,
            "flood_errors": 0,
            "peer_refused": 0,
        }
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._invalid_lines: dict[str, int] = {}  # peer -> invalid lines seen (connections open)
        self._background: set[asyncio.Task] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for clients on host:port (port 0: any free port; see :attr:`port`)."""
        # limit: the stream buffers about twice this before it stops reading the socket
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, backlog=self.backlog, limit=self.limits.max_line
        )

    @property
    def port(self) -> int | None:
        """The port clients connect to, once started."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, drop open connections, cancel floods still running; idempotent."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # connections accepted just now start, see _closing and close
        tasks = list(self._connections) + list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- updates ---------------------------------------------------------------------------------

    def receive_update(self, data: Any) -> bool:
        """A record from another server (as :meth:`AtRecord.to_wire` made it): True if stored.

        Malformed records are logged and refused (False), never raised. A stored record is
        flooded on when :attr:`reflood` is set.
        """
        try:
            record = AtRecord.from_wire(data)
            self._check_future(record.time_ns, self.clock())
        except (ValueError, TypeError) as exc:
            self.counters["peer_refused"] += 1
            self.traffic.write("REFUSED", f"{exc}: {data!r}"[:_LOGGED_INVALID])
            self.ratelog.warning("peer refused", "%s: refused an update from a peer: %s", self.name, exc)
            return False
        return self._offer(record, "peer", flood=self.reflood)

    def _check_future(self, time_ns: int, now_ns: int) -> None:
        ahead = time_ns - now_ns
        if ahead > self.limits.max_future_skew * _NS:
            self.counters["future_refused"] += 1
            raise CommandError(
                f"time {ahead / _NS:.3f} s in the future (max_future_skew {self.limits.max_future_skew:g} s)"
            )

    def _offer(self, record: AtRecord, source: str, flood: bool = True) -> bool:
        if not self.store.offer(record):
            self.counters["ignored"] += 1
            self.traffic.write("IGNORED", f"from {source} (not newer): {record.line}")
            return False
        self.counters["stored"] += 1
        self.traffic.write("STORED", f"from {source}: {record.line}")
        send = self.flood
        if flood and send is not None:
            self.counters["floods"] += 1
            self._flood(send, record.to_wire())
        return True

    def _flood(self, send: Flood, wire: dict[str, Any]) -> None:
        try:
            result = send(wire)
        except Exception as exc:  # the herd's problem must not become the client's
            self._flood_failed(wire, exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._background.add(task)
            task.add_done_callback(lambda t: self._flood_done(t, wire))

    def _flood_done(self, task: asyncio.Future, wire: dict[str, Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._flood_failed(wire, exc)

    def _flood_failed(self, wire: dict[str, Any], exc: BaseException) -> None:
        self.counters["flood_errors"] += 1
        self.traffic.write("FLOOD-ERROR", f"{type(exc).__name__}: {exc} for {wire.get('client')!r}")
        self.ratelog.warning(
            "flood failed", "%s: flooding the update of %r failed: %s", self.name, wire.get("client"), exc
        )

    # -- clients ---------------------------------------------------------------------------------

    def answer(self, raw: bytes, peer: str = "-") -> bytes | asyncio.Future:
        """Act on one line (bytes, without its newline) now; the reply, or a future of it."""
        received_ns = self.clock()
        self.counters["lines"] += 1
        try:
            command = parse_command(raw.decode("utf-8"))
            if isinstance(command, IAmAt):
                self._check_future(command.time_ns, received_ns)
        except ValueError:  # a CommandError, or not UTF-8 (UnicodeDecodeError)
            return self._invalid(raw, peer)
        self.traffic.write("IN", f"{peer} {raw.decode('utf-8')}")
        if isinstance(command, IAmAt):
            self.counters["iamats"] += 1
            record = AtRecord(
                self.name,
                format_skew(received_ns - command.time_ns),
                command.client,
                command.location,
                command.time,
                command.time_ns,
                command.lat,
                command.lon,
            )
            self._offer(record, f"client {peer}")
            return self._reply((record.line + "\n").encode("utf-8"), peer)
        self.counters["whatsats"] += 1
        stored = self.store.get(command.client)
        if stored is None:
            return self._invalid(raw, peer, logged_in=True)
        return asyncio.ensure_future(self._whatsat(stored, command.radius_km, command.bound, peer))

    def _invalid(self, raw: bytes, peer: str, logged_in: bool = False) -> bytes:
        """``? <line>``: counted; logged cut short, and only the first few of a connection (the
        rest in one entry when it closes), so garbage cannot make the log outgrow the input."""
        self.counters["invalid"] += 1
        reply = invalid_reply(raw)
        seen = self._invalid_lines.get(peer, 0)
        if peer in self._invalid_lines:
            self._invalid_lines[peer] = seen + 1
        if seen < _LOGGED_INVALID_LINES:
            if not logged_in:
                self.traffic.write("IN", f"{peer} {_cut(raw)}")
            self.traffic.write("OUT", f"{peer} {_cut(reply)}")
        return reply

    async def _whatsat(self, record: AtRecord, radius_km: float, bound: int, peer: str) -> bytes:
        try:
            response = await self.places.nearby(record.lat, record.lon, radius_km * 1000.0)
            if not isinstance(response, dict):
                raise TypeError(f"the places provider returned {type(response).__name__}, not a dict")
        except Exception as exc:  # providers should not raise; a buggy one still gets a reply
            log.warning("%s: places lookup failed: %s", self.name, exc)
            response = places_error(f"places lookup failed: {type(exc).__name__}: {exc}")
        return self._reply(whatsat_reply(record.line, response, bound).encode("utf-8"), peer)

    def _reply(self, data: bytes, peer: str) -> bytes:
        self.traffic.write("OUT", f"{peer} {data.decode('utf-8', 'backslashreplace')}")
        return data

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted as the server shuts down
            writer.close()
            return
        limits = self.limits
        if len(self._connections) >= limits.max_connections:
            self.counters["connections_refused"] += 1
            self.ratelog.warning(
                "busy",
                "%s: %d client connections open (max_connections): closing a new one",
                self.name,
                len(self._connections),
            )
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None  # asyncio runs every connection's handler in a task
        self._connections.add(task)
        self.counters["connections"] += 1
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self._invalid_lines[peer] = 0
        replies: asyncio.Queue = asyncio.Queue(self.max_pipeline)
        alive = [True]
        writer_task = asyncio.ensure_future(self._write_replies(replies, writer, alive))
        loop = asyncio.get_running_loop()
        try:
            buf = bytearray()
            skipping = False  # inside a line over max_line, already answered: dropping it to its newline
            started = 0.0  # when the unfinished line (buf, or the one skipped) began
            while alive[0]:
                wait = limits.idle_timeout
                if buf or skipping:
                    wait = min(wait, started + limits.line_timeout - loop.time())
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        data = await reader.read(limits.max_line)
                except TimeoutError:
                    self.counters["timeouts"] += 1
                    why = "an unfinished line" if buf or skipping else "nothing"
                    self.traffic.write("TIMEOUT", f"{peer}: {why} for too long; closing")
                    break
                if not data:
                    if buf and not skipping:  # a last line without a newline is still a line
                        await replies.put(self.answer(bytes(buf), peer))
                    break
                if not buf and not skipping:
                    started = loop.time()
                buf += data
                start = 0
                while alive[0]:
                    end = buf.find(b"\n", start)
                    if end < 0:
                        break
                    line = bytes(buf[start:end])
                    start = end + 1
                    if skipping:  # the rest of a line answered already
                        skipping = False
                        continue
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    await replies.put(self.answer(line, peer))
                del buf[:start]
                if start:
                    started = loop.time()
                if skipping:
                    buf.clear()
                elif len(buf) > limits.max_line:
                    self.counters["long_lines"] += 1
                    await replies.put(self._invalid(bytes(buf[: limits.max_line]), peer))
                    buf.clear()
                    skipping = True
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Server shutdown (close() cancels the connections): stop the writer too, do not
            # wait for lookups, and end normally — on Python 3.11 start_server's done-callback
            # calls task.exception(), which raises for a cancelled task and gets logged as an error.
            alive[0] = False
        finally:
            try:
                if alive[0]:
                    await replies.put(None)  # answer everything read so far, then close
                else:
                    writer_task.cancel()
                await asyncio.gather(writer_task, return_exceptions=True)
            except asyncio.CancelledError:  # shutdown while answering what was read: stop now
                writer_task.cancel()
            finally:
                self._drain_abandoned(replies)
                writer.close()
                self._connections.discard(task)
                unlogged = self._invalid_lines.pop(peer, 0) - _LOGGED_INVALID_LINES
                if unlogged > 0:
                    self.traffic.write("IN", f"{peer} {unlogged} more invalid lines, not logged")

    @staticmethod
    def _drain_abandoned(replies: asyncio.Queue) -> None:
        while not replies.empty():
            item = replies.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()

    async def _write_replies(self, replies: asyncio.Queue, writer: asyncio.StreamWriter, alive: list) -> None:
        while True:
            item = await replies.get()
            if item is None:
                break
            try:
                data = await item if isinstance(item, asyncio.Future) else item
                if not alive[0]:
                    continue
                writer.write(data)
                if replies.empty():
                    await writer.drain()
            except (ConnectionError, OSError):
                alive[0] = False  # the client went away: keep consuming so the reader never blocks
        if alive[0]:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
            except (ConnectionError, OSError):
                pass
