"""A node's HTTP window: ``/metrics`` (Prometheus), ``/healthz``, and the live herd page.

Routes (all GET):

- ``/metrics``: this node's metrics in the Prometheus text format (:mod:`herdrt.observe.metrics`).
- ``/healthz``: 200 with ``{"ready": true, ...}`` while the node serves the herd, 503 with the
  reason otherwise (starting, shutting down, cut off from every neighbor).
- ``/``: the herd page, one self-contained HTML file (no CDN, nothing fetched from elsewhere).
- ``/events``: the herd view (:mod:`herdrt.observe.view`) once a second, as server-sent events.
- ``/view``: one herd view as JSON.

The herd view asks every live node's admin actor for its status over the herd's own links, only
while someone watches (an open ``/events`` stream, or a ``/view`` request), and at most once per
interval however many watch. Every route only reads, and none is authenticated: the server
listens on the node's host (127.0.0.1 unless the herd file says otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..herd.admin import ADMIN_ACTOR
from .metrics import DEFAULT_MAX_ACTOR_SERIES, node_registry
from .view import HerdWatch

if TYPE_CHECKING:
    from ..herd.node import HerdNode

__all__ = ["HttpServer", "health"]

log = logging.getLogger("herdrt.observe")


def health(node: HerdNode) -> tuple[bool, str]:
    """Whether ``node`` is ready to serve the herd, and why (or why not)."""
    if node.closing:
        return False, "shutting down"
    if not node.started:
        return False, "starting: not listening for links yet"
    neighbors = sorted(node.config.neighbors(node.name))
    status = node.links.stats()["links"]
    linked = [peer for peer in neighbors if peer in status]
    live = len(node.membership.live())
    if neighbors and not linked:
        return False, f"no link up to any neighbor ({', '.join(neighbors)}); {live}/{len(node.config.nodes)} nodes live"
    return True, f"links up to {len(linked)}/{len(neighbors)} neighbors; {live}/{len(node.config.nodes)} nodes live"


class HttpServer:
    """Serves one node's metrics, health and herd page on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        node: HerdNode,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        interval: float = 1.0,
        max_actor_series: int = DEFAULT_MAX_ACTOR_SERIES,
    ):
        self.node = node
        self.host = host
        self.port = port
        self.interval = interval
        self.registry = node_registry(node, max_actor_series)
        self.watch = HerdWatch(node.config)
        self._runner: web.AppRunner | None = None
        self._watchers: set[asyncio.Queue[str]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._shared: asyncio.Future[dict[str, Any]] | None = None  # the latest round (see _latest)
        self._shared_at = 0.0
        self._page: bytes | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> HttpServer:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/view", self._view)
        app.router.add_get("/events", self._events)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # Bind the socket here, to know the port when port 0 asked for any free one.
        sock = socket.create_server((self.host, self.port), reuse_port=False)
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        log.info("%s: metrics, health and the herd page on %s", self.node.name, self.url)
        return self

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._shared is not None:
            self._shared.cancel()
        for queue in list(self._watchers):
            _offer(queue, "")  # wakes each /events stream to end it
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routes -----------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ready, reason = health(self.node)
        return web.json_response(
            {"node": self.node.name, "ready": ready, "reason": reason}, status=200 if ready else 503
        )

    async def _index(self, request: web.Request) -> web.Response:
        if self._page is None:
            self._page = resources.files("herdrt.observe").joinpath("page.html").read_bytes()
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def _view(self, request: web.Request) -> web.Response:
        return web.json_response(await self._latest())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        # Latest view wins: a slow browser skips views rather than queueing them.
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._watchers.add(queue)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        try:
            await response.write(b"retry: 1000\n\n")
            while not self.node.closing:
                data = await queue.get()
                if not data:
                    break
                await response.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        return response

    # -- the herd view ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self._watchers:
            started = loop.time()
            try:
                data = json.dumps(await self._latest(), default=str)
            except Exception:
                log.exception("%s: the herd view failed", self.node.name)
                data = json.dumps({"error": "the herd view failed; see the node's log"})
            for queue in list(self._watchers):
                _offer(queue, data)
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def _latest(self) -> dict[str, Any]:
        """The herd view, at most about ``interval`` old: every ``/events`` stream and ``/view``
        request in that time shares one round, so however many HTTP clients come, the herd is
        asked about once per interval (and the rates stay those of whole intervals)."""
        loop = asyncio.get_running_loop()
        # 0.9: the poller's next tick comes one interval after it *asked*, a hair before the
        # shared round is a whole interval old; it must get a new one.
        fresh_for = 0.9 * self.interval
        if self._shared is None or (self._shared.done() and loop.time() - self._shared_at >= fresh_for):
            self._shared_at = loop.time()
            self._shared = asyncio.ensure_future(self._round())
        return await asyncio.shield(self._shared)

    async def _round(self) -> dict[str, Any]:
        node = self.node
        live = node.membership.live()
        timeout = max(0.2, self.interval * 0.8)

        async def status(name: str) -> Any:
            if name == node.name:
                return node.herd_status()
            if name not in live:
                return f"down (as {node.name} sees it)"
            try:
                return await node.lookup(f"{ADMIN_ACTOR}@{name}").ask("status", timeout=timeout)
            except Exception as exc:  # down, slow, unreachable: the view says so
                return exc

        names = list(node.config.nodes)
        answers = await asyncio.gather(*(status(name) for name in names))
        return self.watch.update(dict(zip(names, answers, strict=True)))


def _offer(queue: asyncio.Queue[str], data: str) -> None:
    """Put ``data`` in a one-slot queue, in place of what a slow reader has not taken yet."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(data)
