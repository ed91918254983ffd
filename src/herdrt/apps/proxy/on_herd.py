"""The location proxy on a herd node: the bundled herd runs ``herdrt.apps.proxy:setup`` on every node.

Each node with an ``app_port`` serves the proxy's clients there. A record a server stores is
told to the ``proxy`` actor of each of its neighbors in the herd file (servers talk only to their
neighbors) — except the neighbor it came from and the server that took it from the client; they
store it if it is newer and pass it on, so it floods the herd and stops where it is no longer
news. When a neighbor comes back, it is sent every record it may have missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import fields
from typing import Any

from ...config import ConfigError
from ...errors import BadRequest, HerdError
from ...runtime.actor import Actor
from . import AtRecord, CachedPlaces, GazetteerPlaces, ProxyApp, ProxyLimits

__all__ = ["setup", "PEER_ACTOR"]

log = logging.getLogger("herdrt.apps.proxy")

#: The actor, on every proxy node, that takes records from neighbors.
PEER_ACTOR = "proxy"


class ProxyPeer(Actor):
    """Hands records that neighbors flood to this server's store, noting who sent each one (the
    store re-floods synchronously, inside ``receive_update``, and must not send it back).

    Neighbors tell it records; the store counts and logs a malformed one and refuses it. An ask
    (a person trying a record by hand: ``herdrt ask NODE proxy RECORD``) gets ``{"stored": bool}``
    (False: not newer than the record the store has), and a refused record fails it with
    :class:`~herdrt.errors.BadRequest` saying why."""

    def __init__(self, app: ProxyApp, came_from: dict):
        self.app = app
        self.came_from = came_from

    def receive(self, record, ctx):
        counters = self.app.counters
        refused = counters["peer_refused"]
        self.came_from["via"] = record.get("via") if isinstance(record, dict) else None
        try:
            stored = self.app.receive_update(record)
        finally:
            self.came_from["via"] = None
        if not ctx.is_ask:
            return None  # a flood: the store has counted and logged a refusal (rate-limited)
        if counters["peer_refused"] != refused:
            raise BadRequest(
                f"not a valid AT record ({refusal(record)}); {PEER_ACTOR} takes AT records from neighbors: "
                '{"v": 1, "server": S, "skew": S, "client": S, "location": S, "time": S}, strings as in the AT line'
            )
        return {"stored": stored}


def refusal(record: Any) -> str:
    """Why the store refuses ``record`` (one it did refuse): it is malformed, or from the future."""
    try:
        AtRecord.from_wire(record)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return "its time is further ahead of this server's clock than max_future_skew allows"


def limits_from(config) -> ProxyLimits:
    """:class:`ProxyLimits` from the herd file's ``[app.proxy]`` table (any field; the rest default)."""
    table = config.app.get("proxy", {})
    known = {f.name: f.type for f in fields(ProxyLimits)}
    values: dict[str, Any] = {}  # from the herd file, checked against each field's type below
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{config.source}: app.proxy.{key}: unknown key (expected one of {', '.join(sorted(known))})"
            )
        kind = int if known[key] == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ConfigError(f"{config.source}: app.proxy.{key}: must be a positive number, not {value!r}")
        values[key] = value
    return ProxyLimits(**values)


async def setup(node) -> ProxyApp | None:
    """Start the proxy on ``node`` (a :class:`~herdrt.herd.HerdNode`) at its configured ``app_port``.

    Traffic logs go to ``$HERDRT_LOG_DIR/<server>.log`` (default ``logs/``); WHATSAT answers from
    Google Places when ``HERDRT_PLACES_API_KEY`` is set, else from the bundled GeoNames gazetteer.
    What clients may do is bounded by :class:`ProxyLimits`, set in the herd file's ``[app.proxy]``.
    """
    me = node.config.node(node.name)
    if me.app_port is None:
        log.info("%s: no app_port in %s; the location proxy does not run here", node.name, node.config.source)
        return None
    app = ProxyApp(
        node.name,
        host=me.host,
        port=me.app_port,
        log_dir=os.environ.get("HERDRT_LOG_DIR", "logs"),
        limits=limits_from(node.config),
    )
    peers = {name: node.lookup(f"{PEER_ACTOR}@{name}") for name in node.config.neighbors(node.name)}

    def tell(name: str, record: dict) -> None:
        try:
            peers[name].tell(record)
        except HerdError as exc:  # down: the flood goes round it by the other servers
            log.debug("%s: record for %s not sent: %s", node.name, name, exc)

    came_from = {"via": None}

    def flood(record: dict) -> None:
        skip = {came_from["via"], record.get("server")}
        record = {**record, "via": node.name}
        for name in peers:
            if name not in skip:
                tell(name, record)

    def catch_up(came: set, gone: set) -> None:
        for name in came & peers.keys():
            for record in app.records():
                tell(name, {**record, "via": node.name})

    app.flood = flood
    # Unbounded on purpose: a dropped record is a lost location, and the handler only stores.
    node.spawn(ProxyPeer, app, came_from, name=PEER_ACTOR, mailbox_size=None)
    await app.start()
    node.on_membership(catch_up)
    node.add_status("proxy", lambda: proxy_status(app))  # herd_status()["proxy"]
    node.on_shutdown(app.close)
    # Load the offline gazetteer now, in a thread, rather than on the first WHATSAT (~1 s).
    gazetteer = getattr(app.places, "provider", app.places)
    if isinstance(gazetteer, GazetteerPlaces) and not gazetteer.loaded:
        preload = asyncio.ensure_future(asyncio.to_thread(gazetteer.load))
        node.on_shutdown(lambda: asyncio.gather(preload, return_exceptions=True))
    log.info("%s: location proxy listening on %s:%d", node.name, me.host, app.port)
    return app


def proxy_status(app: ProxyApp) -> dict[str, int]:
    """The proxy's counters, with the places cache's hits and misses when it has a cache."""
    report = dict(app.counters)
    places = app.places
    if isinstance(places, CachedPlaces):
        report["cache_hits"] = places.hits
        report["cache_misses"] = places.misses
    return report
