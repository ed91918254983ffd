"""Keeping herd links: accepting them (:class:`LinkServer`), dialling one (:func:`connect`), and
keeping exactly one to each neighbor (:class:`LinkManager`: it listens, dials every neighbor,
redials with capped exponential backoff and jitter, and settles simultaneous dials
deterministically — the link dialled by the node whose name sorts lower wins).

A link refused during the handshake never reaches the layer above: ``connect`` raises
:class:`~herdrt.herd.link.LinkRefused` (with the ERROR code and the reason), both sides log one
clear line. One link is :mod:`herdrt.herd.link`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping

from ..config import HerdConfig
from . import protocol as P
from .link import Admission, Link, LinkClosed, LinkRefused, LinkSettings

__all__ = ["LinkServer", "LinkManager", "connect"]

log = logging.getLogger("herdrt.links")


def _noop(*_args):
    return None


# --- server and dialling -------------------------------------------------------------------------


class LinkServer:
    """Accepts inbound links on ``host:port``.

    ``on_link_up(link)`` fires when a link is established, ``on_link_down(link, reason)`` when an
    established link closes; refused handshakes fire neither. ``admit(link)`` (optional) is asked
    after the peer's HELLO and may return ``(code, message)`` to refuse it (or ``(code, message,
    level)``: see :data:`herdrt.herd.link.Admission`).
    """

    def __init__(
        self,
        settings: LinkSettings,
        on_envelopes: Callable[[Link, list], None],
        *,
        on_link_up: Callable[[Link], None] | None = None,
        on_link_down: Callable[[Link, str], None] | None = None,
        admit: Callable[[Link], Admission] | None = None,
    ):
        self.settings = settings
        self._on_envelopes = on_envelopes
        self._on_link_up = on_link_up or _noop
        self._on_link_down = on_link_down or _noop
        self._admit = admit
        self._server: asyncio.Server | None = None
        self._closed_hook: Callable[[Link, str], None] | None = None  # LinkManager: every closing link
        self.links: set[Link] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> LinkServer:
        """Start listening (port 0 picks a free port; see :attr:`address`)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        self._server = await loop.create_server(
            self._make_link,
            host,
            port,
            ssl=s.ssl_server,
            ssl_handshake_timeout=s.handshake_timeout if s.ssl_server else None,
        )
        log.info("%s listening for links on %s:%s", self.settings.name, *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        if self._server is None:
            raise RuntimeError("the link server is not listening (start() it first)")
        return self._server.sockets[0].getsockname()[:2]

    def _make_link(self) -> Link:
        link = Link(
            self.settings,
            self._on_envelopes,
            outbound=False,
            admit=self._admit,
            on_up=self._on_link_up,
            on_down=self._link_closed,
        )
        self.links.add(link)
        return link

    def _link_closed(self, link: Link, reason: str) -> None:
        self.links.discard(link)
        if self._closed_hook is not None:
            self._closed_hook(link, reason)
        elif link.was_up:
            self._on_link_down(link, reason)

    async def close(self, reason: str = "shutdown", timeout: float = 2.0) -> None:
        """Stop listening, close every link (BYE), wait for them to go."""
        if self._server is not None:
            self._server.close()
        links = list(self.links)
        for link in links:
            link.close(reason)
        await _wait_links_closed(links, timeout)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def _wait_links_closed(links: list[Link], timeout: float) -> None:
    closing = [link for link in links if link.transport is not None and not link.is_closed]
    if not closing:
        return
    waits = [asyncio.ensure_future(link.wait_closed()) for link in closing]
    _done, not_done = await asyncio.wait(waits, timeout=timeout)
    if not_done:
        for link in closing:
            if not link.is_closed:
                link.abort("close timed out")
        _done, not_done = await asyncio.wait(not_done, timeout=timeout)
        for wait in not_done:
            wait.cancel()
        await asyncio.gather(*not_done, return_exceptions=True)


async def _open(link: Link, host: str, port: int, own: bool) -> Link:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(link.settings.handshake_timeout):
            await loop.create_connection(lambda: link, host, port, ssl=link.settings.ssl_client)
            return await link.wait_up()
    except LinkRefused:
        raise
    except TimeoutError:
        link.abort("handshake timed out")
        raise LinkRefused(
            P.E_TIMEOUT, f"no link to {host}:{port} within {link.settings.handshake_timeout} s", link.peer
        ) from None
    except BaseException:
        if link.transport is None:
            link.connect_failed()
        elif not link.was_up:
            link.abort("dial cancelled")
        elif own:
            link.close("dial cancelled")  # nobody else holds this link
        raise


async def connect(
    host: str,
    port: int,
    settings: LinkSettings,
    on_envelopes: Callable[[Link, list], None],
    *,
    peer: str | None = None,
    on_link_down: Callable[[Link, str], None] | None = None,
) -> Link:
    """Dial ``host:port`` and run the handshake; returns the established :class:`Link`.

    ``peer`` (optional) is the node expected to answer; another name is refused. Raises
    :class:`LinkRefused` (either side refused, or timeout) or ``OSError`` (cannot connect)."""
    link = Link(settings, on_envelopes, outbound=True, peer=peer, on_down=on_link_down)
    return await _open(link, host, port, own=True)


# --- the manager ---------------------------------------------------------------------------------


class LinkManager:
    """Keeps exactly one established link to each configured neighbor of node ``name``.

    It listens on the node's configured address, dials every neighbor, and redials a lost or failed
    one after a capped exponential backoff with jitter. Both sides dial; when two links to the same
    peer are being set up at once, the one dialled by the node whose name sorts lower wins (both
    sides apply the same rule at HELLO time, so neither ever reports the loser as up). A new link
    from a peer that already has an established one (the peer restarted) replaces it.

    Events: ``on_link_up(link)`` and ``on_link_down(link, reason)``, at most one up per down per
    peer; ``on_envelopes(link, envelopes)`` for every batch of node-layer envelopes.
    """

    def __init__(
        self,
        config: HerdConfig,
        name: str,
        on_envelopes: Callable[[Link, list], None],
        *,
        on_link_up: Callable[[Link], None] | None = None,
        on_link_down: Callable[[Link, str], None] | None = None,
        settings: LinkSettings | None = None,
        addresses: Mapping[str, tuple[str, int]] | None = None,
        listen: tuple[str, int] | None = None,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
    ):
        self.name = name
        self.config = config
        self.settings = settings or LinkSettings.from_config(config, name)
        self.neighbors = frozenset(config.neighbors(name))
        self._addresses = {peer: config.node(peer).address for peer in self.neighbors}
        if addresses:
            self._addresses.update(addresses)
        self._listen = listen or config.node(name).address
        self._on_envelopes = on_envelopes
        self._on_link_up = on_link_up or _noop
        self._on_link_down = on_link_down or _noop
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._live: dict[str, set[Link]] = {peer: set() for peer in self.neighbors}
        self._up: dict[str, Link] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._keepers: list[asyncio.Task] = []
        self._server: LinkServer | None = None
        self._closing = False
        self.dial_failures = 0
        self.duplicates = 0

    async def start(self, dial: bool = True) -> LinkManager:
        """Listen, and (unless ``dial`` is false) start keeping a link to every neighbor."""
        self._server = LinkServer(
            self.settings,
            self._on_envelopes,
            admit=self._admit,
            on_link_up=self._link_up,
        )
        self._server._closed_hook = self._link_closed
        await self._server.start(*self._listen)
        self._changed = {peer: asyncio.Event() for peer in self.neighbors}
        if dial:
            self.dial_neighbors()
        return self

    def dial_neighbors(self) -> None:
        """Start keeping a link to every neighbor (``start`` does it unless told ``dial=False``)."""
        if self._keepers or self._closing:
            return
        for peer in sorted(self.neighbors):
            self._keepers.append(asyncio.create_task(self._keep(peer), name=f"herdrt-link-keeper-{self.name}-{peer}"))

    @property
    def address(self) -> tuple[str, int]:
        """Where this node listens for links."""
        if self._server is None:
            raise RuntimeError("this node does not listen for links")
        return self._server.address

    # --- queries ----------------------------------------------------------------------------

    def link(self, peer: str) -> Link | None:
        """The established link to ``peer``, or None."""
        return self._up.get(peer)

    @property
    def up(self) -> dict[str, Link]:
        """Established links by peer name (a copy)."""
        return dict(self._up)

    def send(self, peer: str, envelope) -> None:
        """Send on the link to ``peer``; :class:`LinkClosed` if there is none."""
        link = self._up.get(peer)
        if link is None:
            raise LinkClosed(f"{self.name} has no link to {peer}")
        link.send(envelope)

    async def wait_up(self, peer: str, timeout: float | None = None) -> Link:
        """Wait until a link to ``peer`` is established."""
        async with asyncio.timeout(timeout):
            while True:
                link = self._up.get(peer)
                if link is not None:
                    return link
                ev = self._changed[peer]
                ev.clear()
                await ev.wait()

    def stats(self) -> dict:
        """Per-peer link stats plus the manager's own counters (msgpack-ready)."""
        return {
            "node": self.name,
            "links": {peer: link.stats() for peer, link in sorted(self._up.items())},
            # connections whose peer has named itself: the up links, plus any duplicate of a
            # simultaneous dial not yet closed
            "open_links": sum(len(links) for links in self._live.values()),
            "dial_failures": self.dial_failures,
            "duplicates": self.duplicates,
        }

    # --- link hooks -------------------------------------------------------------------------

    def _admit(self, link: Link) -> Admission:
        peer = link.peer
        if self._closing:
            return ("closed", f"{self.name} is shutting down")
        if peer.startswith(P.CLIENT_PREFIX) and self.settings.accept_clients:
            self._live.setdefault(peer, set()).add(link)
            return None
        if peer not in self.neighbors:
            return (P.E_UNKNOWN_NODE, f"{peer!r} is not a neighbor of {self.name} (herd.links)")
        winner = min(self.name, peer)
        canonical = link.dialer == winner
        for other in list(self._live[peer]):
            if other is link:
                continue
            if other.is_up:
                # A link dialled by the winner replaces an established one when it completes
                # (the winner lost the old one: both ends agree). The loser's dial does not: it
                # is the late twin of a simultaneous dial, and the peer drops it too. (If the
                # established link is in fact dead, it goes down within the failure bound and
                # the next dial is taken.)
                if canonical:
                    continue
                self.duplicates += 1
                # The late twin of a simultaneous dial said HELLO before the peer took the link it
                # lost to, so before the peer's first heartbeat on that link (an interval later):
                # routine, DEBUG as every duplicate. After that heartbeat it is no twin but someone
                # using the peer's name (a relay), or the peer back behind a stale link: a warning.
                late_twin = other.heartbeats_in == 0
                message = f"already linked to {peer} by a link dialled by {winner}"
                return (P.E_DUPLICATE, message) if late_twin else (P.E_DUPLICATE, message, logging.WARNING)
            if canonical:
                self.duplicates += 1
                other.abort_handshake(P.E_DUPLICATE, f"simultaneous dial: keeping the link dialled by {winner}")
                self._live[peer].discard(other)
            else:
                self.duplicates += 1
                return (P.E_DUPLICATE, f"simultaneous dial: keeping the link dialled by {winner}")
        self._live[peer].add(link)
        self._notify(peer)
        return None

    def _link_up(self, link: Link) -> None:
        peer = link.peer
        old = self._up.get(peer)
        self._up[peer] = link
        if old is not None and old is not link:
            old.close("replaced by a newer link")
            self._live[peer].discard(old)
            self._on_link_down(old, "replaced by a newer link")
        self._notify(peer)
        self._on_link_up(link)

    def _link_closed(self, link: Link, reason: str) -> None:
        peer = link.peer
        if peer not in self._live:
            return
        self._live[peer].discard(link)
        if self._up.get(peer) is link:
            del self._up[peer]
            self._on_link_down(link, reason)
        if peer not in self.neighbors and not self._live[peer]:
            del self._live[peer]  # a client that left
        self._notify(peer)

    def _notify(self, peer: str) -> None:
        ev = self._changed.get(peer)
        if ev is not None:
            ev.set()

    # --- dialling ---------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.reconnect_max, self.reconnect_min * (2 ** min(attempt - 1, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"

    async def _keep(self, peer: str) -> None:
        attempt = 0
        changed = self._changed[peer]
        live = self._live[peer]
        while not self._closing:
            if live:
                changed.clear()
                await changed.wait()
                if not live:
                    attempt = max(attempt, 1)  # just lost it: breathe before redialling
                continue
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
                if live or self._closing:
                    continue
            host, port = self._addresses[peer]
            link = Link(
                self.settings,
                self._on_envelopes,
                outbound=True,
                peer=peer,
                admit=self._admit,
                on_up=self._link_up,
                on_down=self._link_closed,
            )
            live.add(link)
            try:
                await _open(link, host, port, own=False)  # the manager closes its links
            except LinkRefused as exc:
                live.discard(link)
                attempt += 1
                self.dial_failures += 1
                if exc.code != P.E_DUPLICATE:
                    log.log(
                        logging.WARNING if attempt == 1 else logging.DEBUG,
                        "%s: link to %s refused (%s): %s; retrying",
                        self.name,
                        peer,
                        exc.code,
                        exc.reason,
                    )
            except OSError as exc:
                live.discard(link)
                attempt += 1
                self.dial_failures += 1
                log.log(
                    logging.INFO if attempt == 1 else logging.DEBUG,
                    "%s: cannot reach %s at %s:%s (%s); retrying with backoff",
                    self.name,
                    peer,
                    host,
                    port,
                    exc,
                )
            else:
                attempt = 0
            self._notify(peer)

    async def close(self, reason: str = "shutdown", timeout: float = 2.0) -> None:
        """Stop dialling, close every link (BYE), stop listening; leaves no task behind."""
        self._closing = True
        for task in self._keepers:
            task.cancel()
        if self._keepers:
            await asyncio.gather(*self._keepers, return_exceptions=True)
        self._keepers = []
        links = [link for live in self._live.values() for link in live]
        for link in links:
            link.close(reason)
        await _wait_links_closed(links, timeout)
        if self._server is not None:
            await self._server.close(reason, timeout)
