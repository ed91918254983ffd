"""The location proxy on a herd node: the bundled herd runs ``herdrt.apps.proxy:setup`` on every node.

Each node with an ``app_port`` serves the proxy's clients there. A record a server stores is
told to the ``proxy`` actor of each of its neighbors in the herd file (servers talk only to their
neighbors); they store it if it is newer and pass it on, so it floods the herd and stops where
it is no longer news. When a neighbor comes back, it is sent every record it may have missed.
"""

from __future__ import annotations

import logging
import os

from ...actor import Actor
from ...errors import HerdError
from . import ProxyApp

__all__ = ["setup", "PEER_ACTOR"]

log = logging.getLogger("herdrt.apps.proxy")

#: The actor, on every proxy node, that takes records from neighbors.
PEER_ACTOR = "proxy"


class ProxyPeer(Actor):
    """Hands records that neighbors flood to this server's store."""

    def __init__(self, app: ProxyApp):
        self.app = app

    def receive(self, record, ctx):
        self.app.receive_update(record)


async def setup(node) -> ProxyApp | None:
    """Start the proxy on ``node`` (a :class:`~herdrt.herd.HerdNode`) at its configured ``app_port``.

    Traffic logs go to ``$HERDRT_LOG_DIR/<server>.log`` (default ``logs/``); WHATSAT answers from
    Google Places when ``HERDRT_PLACES_API_KEY`` is set, else from the bundled GeoNames gazetteer.
    """
    me = node.config.node(node.name)
    if me.app_port is None:
        log.info("%s: no app_port in %s; the location proxy does not run here", node.name, node.config.source)
        return None
    app = ProxyApp(node.name, host=me.host, port=me.app_port, log_dir=os.environ.get("HERDRT_LOG_DIR", "logs"))
    peers = {name: node.lookup(f"{PEER_ACTOR}@{name}") for name in node.config.neighbors(node.name)}

    def tell(name: str, record: dict) -> None:
        try:
            peers[name].tell(record)
        except HerdError as exc:  # down: the flood goes round it by the other servers
            log.debug("%s: record for %s not sent: %s", node.name, name, exc)

    def flood(record: dict) -> None:
        for name in peers:
            tell(name, record)

    def catch_up(came: set, gone: set) -> None:
        for name in came & peers.keys():
            for record in app.records():
                tell(name, record)

    app.flood = flood
    # Unbounded on purpose: a dropped record is a lost location, and the handler only stores.
    node.spawn(ProxyPeer, app, name=PEER_ACTOR, mailbox_size=None)
    await app.start()
    node.on_membership(catch_up)
    node.on_shutdown(app.close)
    log.info("%s: location proxy listening on %s:%d", node.name, me.host, app.port)
    return app
