"""The location proxy herd: clients report locations to any server, the herd floods them.

Run one server of the herd on a node::

    app = ProxyApp("Clark", port=12003, log_dir="logs", flood=send_to_neighbors)
    await app.start()
    ...                                   # the herd calls app.receive_update(record) for each
    await app.close()                     # record a neighbor floods to this node

``flood(record)`` gets a msgpack-able dict (see :mod:`.store` for its shape) each time this server
stores a newer record, whether from a client or (with ``reflood``) from another server; the
newer-timestamp rule makes a record that comes back around a cycle stop there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .places import CachedPlaces, GazetteerPlaces, GooglePlaces, PlacesProvider, make_places, places_error
from .protocol import CommandError, parse_command
from .server import Flood, ProxyLimits, ProxyServer, TrafficLog
from .store import RECORD_VERSION, AtRecord, LocationStore

__all__ = [
    "ProxyApp",
    "ProxyServer",
    "ProxyLimits",
    "AtRecord",
    "LocationStore",
    "RECORD_VERSION",
    "PlacesProvider",
    "GazetteerPlaces",
    "GooglePlaces",
    "CachedPlaces",
    "make_places",
    "places_error",
    "CommandError",
    "parse_command",
    "TrafficLog",
    "default_log_path",
    "setup",
]


def default_log_path(server: str, log_dir: str | os.PathLike = "logs") -> Path:
    """Where a server logs its traffic unless told otherwise: ``<log_dir>/<server>.log``."""
    return Path(log_dir) / f"{server}.log"


class ProxyApp:
    """One server of the location proxy herd, ready for a herd node to run.

    - ``server``: the server's name (it appears in AT lines).
    - ``host``/``port``: where clients connect (``port=0``: any free port, see :attr:`port`).
    - ``log_path``: the traffic log file; default ``<log_dir>/<server>.log``; ``None`` for
      ``log_dir=None`` means no traffic log.
    - ``places``: a :class:`PlacesProvider`; default :func:`make_places` (Google Places if
      ``HERDRT_PLACES_API_KEY`` is set, else the offline gazetteer), cached. The app closes the
      provider only if it made it.
    - ``flood``: ``flood(record)`` (plain or async) sends a record to the neighbors; may also be
      set later via the :attr:`flood` attribute. ``reflood``: pass on records stored from peers.
    - ``clock``: POSIX time in integer nanoseconds (tests).
    - ``limits``: what a client may do (:class:`ProxyLimits`: line length, connections, idle and
      line timeouts, how far in the future an IAMAT's time may be).

    Also an async context manager.
    """

    def __init__(
        self,
        server: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = "logs",
        places: PlacesProvider | None = None,
        flood: Flood | None = None,
        reflood: bool = True,
        clock: Callable[[], int] = time.time_ns,
        limits: ProxyLimits = ProxyLimits(),
    ):
        self.server = server
        self.host = host
        self._port = port
        if log_path is None and log_dir is not None:
            log_path = default_log_path(server, log_dir)
        self.log_path = Path(log_path) if log_path is not None else None
        self._own_places = places is None
        self.places = places if places is not None else make_places()
        self._traffic: TrafficLog | None = None
        self._proxy = ProxyServer(server, self.places, flood=flood, reflood=reflood, clock=clock, limits=limits)

    @property
    def flood(self) -> Flood | None:
        return self._proxy.flood

    @flood.setter
    def flood(self, value: Flood | None) -> None:
        self._proxy.flood = value

    @property
    def counters(self) -> dict[str, int]:
        """What the server did and refused (connections, lines, IAMATs, refusals, ...)."""
        return self._proxy.counters

    @property
    def store(self) -> LocationStore:
        return self._proxy.store

    @property
    def port(self) -> int | None:
        """The bound client port once started (the configured one before)."""
        return self._proxy.port if self._proxy.port is not None else self._port

    async def start(self) -> None:
        """Open the traffic log and start listening for clients."""
        self._traffic = TrafficLog(self.server, self.log_path)
        self._proxy.traffic = self._traffic
        self._traffic.write("START", f"listening on {self.host}:{self._port}")
        try:
            await self._proxy.start(self.host, self._port)
        except BaseException:
            self._traffic.close()
            raise
        self._traffic.write("LISTEN", f"{self.host}:{self.port}")

    async def close(self) -> None:
        """Stop serving, cancel pending floods, close the provider (if ours) and the log."""
        await self._proxy.close()
        if self._own_places:
            await self.places.close()
        if self._traffic is not None:
            self._traffic.write("STOP", "closed")
            self._traffic.close()

    def receive_update(self, record: Any) -> bool:
        """A record flooded from another server: True if it was newer and stored (and re-flooded)."""
        return self._proxy.receive_update(record)

    def records(self) -> list[dict[str, Any]]:
        """Every stored record in wire form (e.g. to bring a rejoining neighbor up to date)."""
        return [r.to_wire() for r in self.store]

    async def __aenter__(self) -> ProxyApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


from .on_herd import setup  # noqa: E402  (on_herd needs ProxyApp, defined above)
