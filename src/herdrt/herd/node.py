"""A herd node: a :class:`~herdrt.runtime.node.Node` whose actors reach every other node of the herd.

What it adds to a plain node:

* **Links** to its neighbors (:class:`~herdrt.herd.links.LinkManager`: authenticated TCP, framed,
  coalesced writes), and remote refs (``node.lookup("name@Other")``) whose ``tell``/``ask`` become
  TELL/ASK envelopes, answered by REPLY envelopes.
* **Membership**: every node floods its live links (MEMBERSHIP, newest incarnation and sequence
  wins); each node derives the live graph and routes a message for a non-neighbor through the next
  hop on it. No route: :class:`~herdrt.errors.NodeUnavailable` at once, not a timeout.
* **Failure detection**: a dropped TCP connection takes its link down at once; a peer that stays
  connected but silent is caught by a phi-accrual detector over the link's arrivals. When a node
  leaves the live set, asks waiting on it fail with ``NodeUnavailable`` and it leaves the ring.
* **Broadcast**: ``broadcast(topic, message)`` floods along the links; each node delivers it once
  to its ``subscribe``-rs (deduplicated by origin, incarnation and sequence) and passes it on.
* **Keyed actors**: ``register_kind(kind, cls)`` then ``ref_for(kind, key)``: the MD5 ring over
  the live nodes picks the owner, which activates the actor on its first message. When membership
  changes, a node stops the keyed actors it no longer owns, after ``on_handoff()``, whose state
  travels (HANDOFF) to the new owner and reaches the new copy's ``on_takeover(state)``.
* **Clients** (the ``herdrt`` CLI): links from names starting with ``~`` that prove the herd
  secret may send TELL/ASK; the node they dial performs them on their behalf.
* An admin actor, ``$node``, answers ``"status"`` and ``"ping"`` asks.

Delivery is at-most-once. Tells to a node that is unreachable raise ``NodeUnavailable`` and are
counted in ``undeliverable``; envelopes still queued on a link that drops are counted in
``lost_on_links``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..config import HerdConfig
from ..core import HashRing
from ..errors import (
    ActorNotFound,
    ActorStopped,
    AskDeadlock,
    AskTimeout,
    HerdError,
    MailboxFull,
    NodeUnavailable,
    RemoteError,
)
from ..ratelog import RateLog
from ..runtime.actor import Actor
from ..runtime.asks import ReplyProxy
from ..runtime.node import Node
from ..runtime.ref import ActorRef
from ..runtime.strict import check_msgpack
from . import protocol as P
from .backpressure import Backpressure
from .link import Link, LinkClosed, LinkOverflow, LinkSettings
from .links import LinkManager
from .membership import LinkState, PhiAccrualDetector, ReportPacer, ReportRefused, check_report

__all__ = ["HerdNode", "ADMIN_ACTOR", "placement_key", "ring_shares"]

log = logging.getLogger("herdrt.herd")
#: Membership reports a second each origin may have applied (a burst of REPORT_BURST); more wait.
REPORT_RATE = 10.0
REPORT_BURST = 32

#: The admin actor every herd node runs.
ADMIN_ACTOR = "$node"

# Errors that keep their type when they cross the herd (anything else arrives as RemoteError).
_TYPED = {
    cls.__name__: cls for cls in (ActorNotFound, ActorStopped, MailboxFull, NodeUnavailable, AskTimeout, AskDeadlock)
}
_SEEN_FLOODS = 65536  # broadcast ids remembered for de-duplication
_MISSING = object()
# Kinds addressed to one node (dest_node second): delivered there, forwarded by the others.
_ROUTED = frozenset((P.TELL, P.TELLS, P.ASK, P.REPLY, P.HANDOFF))
_TELLS, _REPLY = P.TELLS, P.REPLY


def placement_key(kind: str, key: str) -> str:
    """The ring key of keyed actor ``(kind, key)``: ``"<kind>:<key>"`` (PROTOCOL.md, Placement)."""
    return f"{kind}:{key}"


def _keyed_name(kind: str, key: str) -> str:
    # A local actor name may not hold "@" (refs are "name@node"); escape it reversibly.
    return placement_key(kind, key).replace("%", "%25").replace("@", "%40")


def ring_shares(ring: HashRing) -> dict[str, float]:
    """The fraction of the 32-bit hash space each node of ``ring`` owns."""
    points = ring.points()
    shares = {node: 0 for node in ring.nodes}
    if not points:
        return {}
    prev = points[-1][0] - (1 << 32)
    for point, node in points:
        shares[node] += point - prev
        prev = point
    return {node: span / (1 << 32) for node, span in shares.items()}


class _Admin(Actor):
    """Answers the CLI: ``"status"`` (membership, links, ring shares, counters) and ``"ping"``."""

    def receive(self, message, ctx):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "status":
            return self.node.herd_status()
        if op == "ping":
            return {"pong": self.node.name}
        raise ValueError(f"unknown admin request {op!r}; ask 'status' or 'ping'")


class HerdNode(Node):
    """One node of a herd, configured by a :class:`~herdrt.config.HerdConfig`.

    ``async with HerdNode(config, "Bona") as node:`` listens for links, dials its neighbors and
    runs until the block ends. ``listen`` and ``addresses`` override where it listens and where it
    dials its neighbors (tests use port 0). Other keyword arguments go to :class:`Node`.
    """

    def __init__(
        self,
        config: HerdConfig,
        name: str,
        *,
        listen: tuple[str, int] | None = None,
        addresses: dict[str, tuple[str, int]] | None = None,
        **node_options: Any,
    ):
        config.node(name)  # a clear error for an unknown name
        node_options.setdefault("mailbox_size", config.mailbox_size)
        node_options.setdefault("overflow", config.mailbox_overflow)
        super().__init__(name, **node_options)
        self.config = config
        self.incarnation = time.time_ns()
        self.links: LinkManager | None = None
        self.membership = LinkState(name)
        self._listen = listen
        self._addresses = addresses
        self._live: set[str] = {name}
        self._ring = HashRing([name])
        self._kinds: dict[str, tuple[type[Actor], tuple, dict]] = {}
        self._keyed: dict[str, tuple[str, str]] = {}  # local actor name -> (kind, key)
        self._handoffs: dict[tuple[str, str], Any] = {}
        self._remote_asks: dict[int, str] = {}  # corr -> node asked
        self._subscribers: dict[str, list] = {}
        self._flood_seq = 0
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._detectors: dict[str, PhiAccrualDetector] = {}
        self._neighbor_sets = {n: frozenset(config.neighbors(n)) for n in config.nodes}
        self._pacer: ReportPacer | None = None
        self.ratelog = RateLog(log)  # per-message events: counted in counters, logged rate-limited
        self._fd_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._route_epoch = 0  # bumped whenever links or membership change: cached routes expire
        self._backpressure: Backpressure | None = None  # links held back while an actor they feed lags
        self._shutdown_hooks: list[Callable[[], Any]] = []
        self._membership_hooks: list[Callable[[set, set], None]] = []
        self._status: dict[str, Callable[[], Any]] = {}  # herd_status() entries of the layers above
        self.counters = {
            "asks_out": 0,
            "tells_in": 0,
            "asks_in": 0,
            "replies_in": 0,
            "forwarded": 0,
            "undeliverable": 0,
            "lost_on_links": 0,
            "unknown_actor": 0,
            "bad_envelopes": 0,
            "throttled": 0,
            "broadcasts": 0,
            "floods_delivered": 0,
            "activations": 0,
            "handoffs_out": 0,
            "handoffs_in": 0,
            "rebalances": 0,
            "suspected": 0,
            "flood_overflows": 0,
            "reports_refused": 0,
            "reports_paced": 0,
            "reports_redirected": 0,
            "refutations": 0,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> HerdNode:
        """Listen for links, dial the neighbors, start the admin actor and the failure detector."""
        if self._started:
            return self
        await super().start()
        loop = self.scheduler.loop
        self._backpressure = Backpressure(loop)
        self._pacer = ReportPacer(REPORT_RATE, REPORT_BURST, loop.call_later, self._paced_report)
        settings = LinkSettings.from_config(self.config, self.name, accept_clients=True)
        self.links = LinkManager(
            self.config,
            self.name,
            self._on_envelopes,
            on_link_up=self._link_up,
            on_link_down=self._link_down,
            settings=settings,
            listen=self._listen,
            addresses=self._addresses,
        )
        await self.links.start()
        self._started = True
        self.spawn(_Admin, name=ADMIN_ACTOR, mailbox_size=256)
        self._report()
        self._fd_timer = loop.call_later(self.config.heartbeat_interval / 2, self._check_failures)
        return self

    async def __aenter__(self) -> HerdNode:
        return await self.start()

    def on_shutdown(self, hook: Callable[[], Any]) -> None:
        """Call ``hook()`` (plain or async) when the node shuts down, before its actors stop."""
        self._shutdown_hooks.append(hook)

    def add_status(self, name: str, report: Callable[[], Any]) -> None:
        """Show ``report()`` (msgpack-ready) as ``herd_status()[name]``: the counters of a layer
        above the node (the bridge, an application) next to the node's own."""
        if name in _STATUS_KEYS:
            raise ValueError(f"{name!r} is one of the node's own status entries")
        self._status[name] = report

    def on_membership(self, hook: Callable[[set, set], None]) -> None:
        """Call ``hook(came, gone)`` (sets of node names) whenever the live set changes."""
        self._membership_hooks.append(hook)

    async def shutdown(self) -> None:
        """Run the shutdown hooks, stop every actor, then close every link (with BYE)."""
        if self._fd_timer is not None:
            self._fd_timer.cancel()
            self._fd_timer = None
        if self._backpressure is not None:
            self._backpressure.close()
        if self._pacer is not None:
            self._pacer.close()
        hooks, self._shutdown_hooks = self._shutdown_hooks, []
        for hook in reversed(hooks):
            try:
                result = hook()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
            except Exception:
                log.exception("%s: shutdown hook %r failed", self.name, hook)
        await super().shutdown()
        if self.links is not None:
            await self.links.close("node shutdown")

    @property
    def address(self) -> tuple[str, int]:
        """Where this node listens for herd links."""
        return self.links.address

    # -- routing -------------------------------------------------------------------------------

    def _link_to(self, dest: str) -> Link:
        """The link a message for ``dest`` leaves by: direct, else the next hop; NodeUnavailable."""
        links = self.links
        link = links.link(dest) if links is not None else None
        if link is None:
            hop = self.membership.next_hop(dest)
            link = links.link(hop) if hop is not None and links is not None else None
            if link is None:
                self.counters["undeliverable"] += 1
                if dest not in self.config.nodes:
                    raise NodeUnavailable(
                        f"{dest!r} is not a node of this herd (nodes: {', '.join(self.config.nodes)})"
                    )
                raise NodeUnavailable(
                    f"node {dest} is unreachable from {self.name} (live: {', '.join(sorted(self._live))})"
                )
        return link

    def _send(self, dest: str, env: list, urgent: bool = False) -> None:
        link = self._link_to(dest)
        try:
            link.send(env, urgent)
        except LinkClosed as exc:
            self.counters["undeliverable"] += 1
            raise NodeUnavailable(f"node {dest}: {exc}") from None

    def remote_poster(self, name: str | list, node_name: str):
        """Posters for ``name@node_name`` (``name``: an actor name or ``[kind, key]``): TELL and ASK
        envelopes routed over the herd.

        The hot path of every remote tell: the link is looked up once and kept until routing
        changes (``_route_epoch``), so a tell costs one envelope and one ``Link.send``."""
        me = self.name
        remote_asks = self._remote_asks
        strict = self.strict_messages
        ask_kind = P.ASK
        route = [None, -1]  # the link towards node_name, and the routing epoch it was chosen in

        def post(message: Any, corr: int = 0) -> None:
            if strict:
                check_msgpack(message)
            link = route[0]
            if route[1] != self._route_epoch or link is None:
                link = route[0] = self._link_to(node_name)
                route[1] = self._route_epoch
            try:
                if corr:
                    remote_asks[corr] = node_name
                    self.counters["asks_out"] += 1
                    link.send([ask_kind, node_name, name, message, me, corr], True)
                else:
                    link.send_tell(node_name, name, message)
            except LinkClosed as exc:
                route[0] = None
                if corr:
                    del remote_asks[corr]
                self.counters["undeliverable"] += 1
                raise NodeUnavailable(f"node {node_name}: {exc}") from None
            except LinkOverflow:
                if corr:
                    del remote_asks[corr]
                raise

        return post

    def resolve(self, corr: int, ok: bool, value: Any) -> None:
        """Complete a remote ask; herdrt's own errors keep their type across the herd."""
        self._remote_asks.pop(corr, None)
        if not ok:
            try:
                type_name, message = value
            except (TypeError, ValueError):
                type_name, message = "RemoteError", repr(value)
            cls = _TYPED.get(type_name)
            if cls is not None:
                self.asks.fail(corr, cls(str(message)))
                return
            value = (type_name, message)
        Node.resolve(self, corr, ok, value)  # (not super(): this is the path of every reply)

    def _reply(self, src: str, corr: int, ok: bool, value: Any, link: Link | None = None) -> None:
        """Send ask ``corr``'s outcome to the asker's node ``src``: back over ``link`` (the link
        the ask came in on) when that is the link to ``src``, else routed."""
        if src == self.name:
            self.resolve(corr, ok, value)
            return
        env = [P.REPLY, src, corr, ok, value]
        try:
            if link is not None and link.peer == src:
                try:
                    link.send(env, True)  # urgent: the asker waits for it
                    return
                except LinkClosed:
                    pass  # routed below, if another way is left
            self._send(src, env, True)
        except (NodeUnavailable, LinkOverflow) as exc:
            # The asker's node is gone or not reading: its ask fails there (NodeUnavailable or
            # AskTimeout); the handler that answered must not fail for it.
            self.counters["undeliverable"] += 1
            self.ratelog.info(("reply lost", src), "%s: reply to %s (ask %d) lost: %s", self.name, src, corr, exc)

    # -- inbound ---------------------------------------------------------------------------------

    def _on_envelopes(self, link: Link, envs: list) -> None:
        if link.peer.startswith(P.CLIENT_PREFIX):
            for env in envs:
                self._guarded(link, self._from_client, link, env)
            return
        # Arrivals go to mailboxes first; the actors they wake run right after (release), in
        # this read callback, so replies leave in the write that ends it.
        sched = self.scheduler
        armed = sched.hold()
        try:
            self._dispatch(link, envs)
        finally:
            sched.release(armed)

    def _dispatch(self, link: Link, envs: list) -> None:
        # Two hot paths inline: REPLY to this node, and TELLS to a named actor here (tells are
        # counted per read, and a lagging actor holds the link back). The rest takes _envelope.
        me = self.name
        deliver_many = self.deliver_many
        tells = lost = 0
        fed = []  # the actors this read fed: flow control looks at their backlogs
        for env in envs:
            try:
                if env.__class__ is list and len(env) > 3 and env[1] == me:
                    kind = env[0]
                    if kind == _REPLY and len(env) == 5:
                        self.counters["replies_in"] += 1
                        self.resolve(env[2], bool(env[3]), env[4])
                        continue
                    if (
                        kind == _TELLS
                        and len(env) == 4
                        and env[2].__class__ is str
                        and env[3].__class__ is list
                        and env[2] in self
                    ):
                        target = env[2]
                        tells += len(env[3])
                        lost += deliver_many(target, env[3])
                        if not fed or fed[-1] != target:
                            fed.append(target)
                        continue
                self._envelope(link, env)
            except (IndexError, TypeError, ValueError, KeyError, P.ProtocolError) as exc:
                self._bad_envelope(link, env, exc)
        if tells:
            self.counters["tells_in"] += tells
            if lost:
                self.counters["undeliverable"] += lost
                self.ratelog.info(
                    ("tells dropped", link.peer),
                    "%s: %d tells from %s dropped: mailbox full or actor stopped",
                    me,
                    lost,
                    link.peer,
                )
            hold = self._backpressure.check
            for target in fed:
                mailbox = self.mailbox(target)
                if mailbox is not None and hold(link, mailbox, link.pause_reading, link.resume_reading):
                    self.counters["throttled"] += 1
                    break

    def _guarded(self, link: Link, handler, *args) -> None:
        try:
            handler(*args)
        except (IndexError, TypeError, ValueError, KeyError, P.ProtocolError) as exc:
            self._bad_envelope(link, args[-1], exc)

    def _bad_envelope(self, link: Link, env: Any, exc: Exception) -> None:
        self.counters["bad_envelopes"] += 1
        self.ratelog.warning(
            ("bad envelope", link.peer), "%s: bad envelope from %s dropped (%s): %.200r", self.name, link.peer, exc, env
        )

    def _envelope(self, link: Link, env: list) -> None:
        kind = env[0]
        if kind in _ROUTED:
            if env[1] == self.name:
                self._arrived(link, kind, env)
            else:
                self.counters["forwarded"] += 1
                self._forward(env)
        elif kind == P.MEMBERSHIP:
            self._on_membership(link, env)
        elif kind == P.FLOOD:
            self._on_flood(link, env)
        elif kind == P.ERROR:
            _, code, message = P.parse_error(env)
            self.resolve(env[1], False, ("NodeUnavailable" if code == P.E_OVERFLOW else "RemoteError", message))
        else:
            raise ValueError(f"unexpected envelope kind {kind!r}")

    def _forward(self, env: list) -> None:
        try:
            self._send(env[1], env)
        except (NodeUnavailable, LinkOverflow) as exc:
            if isinstance(exc, LinkOverflow):  # the next hop does not read: dropped, counted
                self.counters["undeliverable"] += 1
            if env[0] == P.ASK:  # tell the asker now rather than let it time out
                self._reply(env[4], env[5], False, ("NodeUnavailable", str(exc)))

    def _arrived(self, link: Link, kind: int, env: list) -> None:
        if kind == P.TELL or kind == P.TELLS:
            bodies = (env[3],) if kind == P.TELL else env[3]
            if kind == P.TELLS and bodies.__class__ is not list:
                raise P.ProtocolError(f"TELLS carries a list of bodies, not {P.describe(bodies)}")
            self.counters["tells_in"] += len(bodies)
            try:
                lost = self.deliver_many(self._local_name(env[2]), list(bodies))
            except HerdError as exc:
                self.counters["unknown_actor" if isinstance(exc, ActorNotFound) else "undeliverable"] += len(bodies)
                self.ratelog.info(
                    ("tells dropped", link.peer),
                    "%s: %d tell(s) to %.80r dropped: %s",
                    self.name,
                    len(bodies),
                    env[2],
                    exc,
                )
                return
            if lost:
                self.counters["undeliverable"] += lost
                self.ratelog.info(
                    ("tells dropped", link.peer),
                    "%s: %d tell(s) to %.80r dropped: mailbox full or actor stopped",
                    self.name,
                    lost,
                    env[2],
                )
        elif kind == P.ASK:
            self.counters["asks_in"] += 1
            proxy = _LinkReply(self, link, env[4], env[5])
            try:
                self.deliver_ask(self._local_name(env[2]), env[3], proxy)
            except HerdError as exc:
                if isinstance(exc, ActorNotFound):
                    self.counters["unknown_actor"] += 1
                proxy.set_exception(exc)
        elif kind == P.REPLY:
            self.counters["replies_in"] += 1
            self.resolve(env[2], bool(env[3]), env[4])
        else:  # HANDOFF
            _, _, kind_name, key, state = env
            self.counters["handoffs_in"] += 1
            self._handoffs[(kind_name, key)] = state

    def _local_name(self, target) -> str:
        """The local actor name of ``target``: an actor name, or ``[kind, key]`` (a keyed actor,
        activated here on demand)."""
        if target.__class__ is str:
            return target
        kind, key = target
        return self._activate(kind, key)

    def _from_client(self, link: Link, env: list) -> None:
        """A client's TELL/ASK: performed by this node on the client's behalf."""
        kind = env[0]
        if kind not in (P.TELL, P.ASK):
            raise ValueError(f"clients may send TELL and ASK only, not {P.kind_name(kind)}")

        def respond(corr: int, ok: bool, value: Any) -> None:
            try:
                link.send([P.REPLY, link.peer, corr, ok, value], True)
            except (LinkClosed, LinkOverflow) as exc:  # the client left, or does not read
                self.counters["undeliverable"] += 1
                self.ratelog.info(
                    ("reply lost", link.peer), "%s: reply to client %s lost: %s", self.name, link.peer, exc
                )

        target = env[2] if env[2].__class__ is list else f"{env[2]}@{env[1]}"
        self.perform(link.peer, target, env[3], env[5] if kind == P.ASK else None, respond)

    def perform(
        self, who: str, target: str | list, body: Any, corr: Any, respond: Callable[[Any, bool, Any], None]
    ) -> None:
        """A tell (``corr`` None) or ask performed on behalf of ``who`` (a client or a bridge service).

        ``target`` is ``"name@node"`` or ``[kind, key]``. An ask's outcome goes to
        ``respond(corr, ok, value)`` exactly once (``value`` on failure: ``[type_name, message]``);
        a failed tell is logged. Used by client links and by :mod:`herdrt.bridge`.
        """
        try:
            ref = self.ref_for(*target) if target.__class__ is list else self.lookup(target)
            if corr is None:
                ref.tell(body)
                return
            fut = asyncio.ensure_future(ref.ask(body))
        except HerdError as exc:
            if corr is not None:
                respond(corr, False, [type(exc).__name__, str(exc)])
            else:
                if isinstance(exc, ActorNotFound):
                    self.counters["unknown_actor"] += 1
                self.ratelog.info(
                    ("tell failed", who), "%s: %s's tell to %.80s failed: %s", self.name, who, target, exc
                )
            return

        def answer(fut: asyncio.Future) -> None:
            if fut.cancelled():
                respond(corr, False, ["ActorStopped", "the ask was cancelled"])
            elif fut.exception() is not None:
                exc = fut.exception()
                respond(corr, False, [getattr(exc, "type_name", type(exc).__name__), getattr(exc, "message", str(exc))])
            else:
                respond(corr, True, fut.result())

        fut.add_done_callback(answer)

    # -- links and membership ----------------------------------------------------------------------

    def _link_up(self, link: Link) -> None:
        peer = link.peer
        link.on_dropped = lambda env, exc: self._dropped(link, env, exc)
        if peer.startswith(P.CLIENT_PREFIX):
            log.debug("%s: client %s connected", self.name, peer)
            return
        det = self._detectors[peer] = PhiAccrualDetector(self.config.heartbeat_interval, self.config.failure_threshold)
        det.heartbeat(link.last_heard)
        log.info("%s: link to %s up", self.name, peer)
        # Bring the new neighbor up to date with everything we know, then tell all about the link.
        try:
            for origin, seq, nbrs in self.membership.reports():
                if origin != self.name:
                    link.send([P.MEMBERSHIP, origin, seq[0], seq[1], sorted(nbrs)])
        except (LinkClosed, LinkOverflow):
            pass  # gone again already (its link-down reports), or a peer that does not read
        self._report()

    def _dropped(self, link: Link, env: list, exc: Exception) -> None:
        """A link dropped ``env`` unsent (too big for the peer, or not msgpack): answer for it,
        so an asker learns why at once instead of timing out."""
        kind = env[0]
        problem = (type(exc).__name__, f"{P.kind_name(kind)} not sent to {link.peer}: {exc}")
        if kind == P.ASK:
            _, _, _, _, src, corr = env
            if src == self.name:
                self._remote_asks.pop(corr, None)
                self.asks.fail(corr, exc if isinstance(exc, HerdError) else RemoteError(*problem))
            else:  # forwarded for another node's asker
                self._reply(src, corr, False, problem)
        elif kind == P.REPLY:
            _, dest, corr, ok, _ = env
            if ok is not False:  # the value could not travel: the asker gets the reason instead
                self._reply(dest, corr, False, problem, link)
        elif kind in (P.TELL, P.TELLS):
            self.counters["undeliverable"] += 1

    def _link_down(self, link: Link, reason: str) -> None:
        peer = link.peer
        self.counters["lost_on_links"] += getattr(link, "lost_on_close", 0)
        self._backpressure.forget(link)
        if peer.startswith(P.CLIENT_PREFIX):
            return
        self._detectors.pop(peer, None)
        log.warning("%s: link to %s down: %s", self.name, peer, reason)
        if not self.closing:
            self._report()

    def _neighbor_links(self):
        """(peer, link) of every established link to a node (not closing, not a client)."""
        return [
            (peer, link) for peer, link in self.links.up.items() if link.is_up and not peer.startswith(P.CLIENT_PREFIX)
        ]

    def _flood(self, env: list, skip: tuple = ()) -> None:
        """Send ``env`` on every neighbor link except those to the peers in ``skip``. A link
        that cannot take it is passed over: it is closing (its link-down floods a report of its
        own), or its peer does not read (counted)."""
        for peer, link in self._neighbor_links():
            if peer in skip:
                continue
            try:
                link.send(env)
            except LinkClosed:
                pass
            except LinkOverflow:
                self.counters["flood_overflows"] += 1
                self.ratelog.warning(
                    ("flood overflow", peer),
                    "%s: %s not sent to %s: its link is full",
                    self.name,
                    P.kind_name(env[0]),
                    peer,
                )

    def _report(self) -> None:
        """Flood this node's live links (after any link change)."""
        live = [peer for peer, _ in self._neighbor_links()]
        seq, nbrs = self.membership.local_report(live)
        self._flood([P.MEMBERSHIP, self.name, self.incarnation, seq, sorted(nbrs)])
        self._membership_changed()

    def _on_membership(self, link: Link, env: list) -> None:
        try:
            origin, incarnation, seq, nbrs = check_report(env, self._neighbor_sets, self.config.max_clock_skew)
        except ReportRefused as exc:
            self.counters["reports_refused"] += 1
            self.ratelog.warning(("report", link.peer), "%s: MEMBERSHIP from %s refused: %s", self.name, link.peer, exc)
            return
        version = (incarnation, seq)
        if origin == self.name:
            # A report about this node newer than its own: forged, or left from a life whose clock
            # ran ahead. Refute it (SWIM/Lifeguard): outgrow it and flood the truth.
            if version > (self.incarnation, self.membership.seq_of(self.name)):
                self._refute(link.peer, version)
            return
        if not self.membership.is_newer(origin, version):
            return  # a copy that came round another way: the common case, and cheap
        if origin != link.peer:
            direct = self.links.link(origin)
            if direct is not None and direct.is_up:
                # This node hears `origin` itself, which sends every report of its own straight
                # here: a newer one from elsewhere is not its word. Pass it to the origin only,
                # which refutes it if it is false.
                self.counters["reports_redirected"] += 1
                try:
                    direct.send(env)
                except (LinkClosed, LinkOverflow):
                    pass
                return
        if self._pacer.admit(origin, (link.peer, env)):
            self._take_report(link.peer, env)
        else:
            self.counters["reports_paced"] += 1

    def _paced_report(self, origin: str) -> None:
        pending = self._pacer.take(origin)
        if pending is not None and not self.closing:
            peer, env = pending
            if self.membership.is_newer(origin, (env[2], env[3])):
                self._take_report(peer, env)

    def _take_report(self, peer: str, env: list) -> None:
        _, origin, incarnation, seq, nbrs = env
        if self.membership.apply(origin, (incarnation, seq), nbrs):
            # Onwards to every neighbor but the sender: the origin's neighbors pass it to the
            # origin, which refutes it if it is forged.
            self._flood(env, (peer,))
            self._membership_changed()

    def _refute(self, via: str, version: tuple[int, int]) -> None:
        self.counters["refutations"] += 1
        self.incarnation = max(time.time_ns(), version[0] + 1)
        self.ratelog.warning(
            ("refute",),
            "%s: a report about this node newer than its own (incarnation %d, "
            "seq %d) came via %s; refuted with incarnation %d",
            self.name,
            *version,
            via,
            self.incarnation,
        )
        self._report()

    def _membership_changed(self) -> None:
        self._route_epoch += 1
        live = self.membership.live()
        if live == self._live:
            return
        gone, came = self._live - live, live - self._live
        self._live = live
        for node in sorted(came):
            log.info("%s: node %s up", self.name, node)
        for node in sorted(gone):
            log.warning("%s: node %s down (no live route)", self.name, node)
        if gone:
            for corr, dest in list(self._remote_asks.items()):
                if dest in gone:
                    del self._remote_asks[corr]
                    self.asks.fail(corr, NodeUnavailable(f"node {dest} went down before it replied"))
        self._ring = HashRing(sorted(live), vnodes=self._ring.vnodes)
        self._rebalance()
        for hook in self._membership_hooks:
            try:
                hook(came, gone)
            except Exception:
                log.exception("%s: membership hook %r failed", self.name, hook)

    def _check_failures(self) -> None:
        loop = self.scheduler.loop
        self._fd_timer = loop.call_later(self.config.heartbeat_interval / 2, self._check_failures)
        self.ratelog.flush()
        now = loop.time()
        for peer, link in self._neighbor_links():
            det = self._detectors.get(peer)
            if det is None or link.reading_paused:
                continue  # a link we stopped reading (backpressure) is not a silent peer
            if det.last_heard is None or link.last_heard > det.last_heard:
                det.heartbeat(link.last_heard)
            if not det.is_available(now):
                self.counters["suspected"] += 1
                silent = now - det.last_heard
                log.warning(
                    "%s: %s silent for %.2fs (phi %.1f): dropping the link", self.name, peer, silent, det.phi(now)
                )
                link.abort(f"failure detector: silent for {silent:.2f}s")

    # -- broadcast -------------------------------------------------------------------------------

    def subscribe(self, topic: str, target: ActorRef | Callable[[Any], Any]) -> None:
        """Deliver every broadcast on ``topic`` (from any node, this one included) to ``target``:
        an actor ref (told the message) or a plain callable."""
        self._subscribers.setdefault(topic, []).append(target)

    def unsubscribe(self, topic: str, target) -> None:
        subs = self._subscribers.get(topic, [])
        if target in subs:
            subs.remove(target)

    def broadcast(self, topic: str, message: Any) -> None:
        """Flood ``message`` to every reachable node's subscribers of ``topic``, once each."""
        if self.strict_messages:
            check_msgpack(message)
        self._flood_seq += 1
        env = [P.FLOOD, self.name, self.incarnation, self._flood_seq, topic, message]
        self._seen_before((self.name, self.incarnation, self._flood_seq))
        self.counters["broadcasts"] += 1
        self._flood(env)
        self._deliver_flood(topic, message)

    def _seen_before(self, key: tuple) -> bool:
        seen = self._seen
        if key in seen:
            return True
        seen[key] = None
        if len(seen) > _SEEN_FLOODS:
            seen.popitem(last=False)
        return False

    def _on_flood(self, link: Link, env: list) -> None:
        _, origin, incarnation, seq, topic, message = env
        if self._seen_before((origin, incarnation, seq)):
            return
        self._flood(env, (link.peer, origin))
        self._deliver_flood(topic, message)

    def _deliver_flood(self, topic: str, message: Any) -> None:
        for target in list(self._subscribers.get(topic, ())):
            try:
                if isinstance(target, ActorRef):
                    target.tell(message)
                else:
                    target(message)
                self.counters["floods_delivered"] += 1
            except Exception:
                log.exception("%s: subscriber %r of %r failed", self.name, target, topic)

    # -- keyed actors ----------------------------------------------------------------------------

    def register_kind(self, kind: str, actor_cls: type[Actor], *args: Any, **spawn_options: Any) -> None:
        """Make ``kind`` activatable here: ``actor_cls(*args)`` on the first message for a key this
        node owns. Register the same kinds on every node."""
        if not (isinstance(actor_cls, type) and issubclass(actor_cls, Actor)):
            raise TypeError(f"register_kind needs an Actor subclass, not {actor_cls!r}")
        self._kinds[kind] = (actor_cls, args, spawn_options)

    def owner(self, kind: str, key: str) -> str:
        """The live node that owns keyed actor ``(kind, key)`` now."""
        return self._ring.lookup(placement_key(kind, str(key)))

    def ref_for(self, kind: str, key: str) -> ActorRef:
        """A ref to keyed actor ``(kind, key)``, wherever the ring places it at each message."""
        if kind not in self._kinds:
            raise ActorNotFound(f"no actor kind {kind!r} is registered on {self.name}; call register_kind first")
        key = str(key)
        ring_key = placement_key(kind, key)
        remote: dict[str, Callable[..., None]] = {}  # owner -> poster, made on first use
        me = self.name

        def post(message: Any, corr: int = 0) -> None:
            owner = self._ring.lookup(ring_key)
            if owner == me:
                poster = self.lookup(self._activate(kind, key)).tell
                poster(message, corr) if corr else poster(message)
                return
            poster = remote.get(owner)
            if poster is None:
                poster = remote[owner] = self.remote_poster([kind, key], owner)
            poster(message, corr)

        return ActorRef(self, ring_key, "*", post)

    def _activate(self, kind: str, key: str) -> str:
        """The local name of keyed actor ``(kind, key)``, spawned here if it does not run yet."""
        name = _keyed_name(kind, key)
        if name not in self:
            try:
                cls, args, options = self._kinds[kind]
            except KeyError:
                raise ActorNotFound(f"no actor kind {kind!r} is registered on {self.name}") from None
            self.spawn(cls, *args, name=name, **options)
            self._keyed[name] = (kind, key)
            self.counters["activations"] += 1
            state = self._handoffs.pop((kind, key), _MISSING)
            if state is not _MISSING:
                self.take_over(name, state)
        return name

    def _rebalance(self) -> None:
        """Stop the keyed actors this node no longer owns, handing their state to the new owner."""
        moved = 0
        for name, (kind, key) in list(self._keyed.items()):
            owner = self._ring.lookup(placement_key(kind, key))
            if owner == self.name:
                continue
            del self._keyed[name]
            if name not in self:
                continue
            moved += 1
            state = self.hand_off(name)
            if state is not None:
                try:
                    self._send(owner, [P.HANDOFF, owner, kind, key, state])
                    self.counters["handoffs_out"] += 1
                except NodeUnavailable as exc:
                    log.warning("%s: hand-off of %s to %s lost: %s", self.name, name, owner, exc)
            self.scheduler.track(asyncio.ensure_future(self.stop(name)))
        if moved:
            self.counters["rebalances"] += 1
            log.info("%s: rebalance: %d keyed actors moved to their new owners", self.name, moved)
        if self._remote_asks and len(self._remote_asks) > 2 * len(self.asks) + 1024:
            # asks that timed out leave their route behind; sweep now and then
            for corr in [c for c in self._remote_asks if not self.asks.waiting(c)]:
                del self._remote_asks[corr]

    # -- status ----------------------------------------------------------------------------------

    def herd_status(self) -> dict:
        """This node's view of the herd (msgpack-ready): membership, links, ring shares, stats."""
        links = self.links.stats()["links"] if self.links is not None else {}
        return {
            "node": self.name,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
            "address": list(self.address) if self.links is not None else None,
            "live": sorted(self._live),
            "nodes": list(self.config.nodes),
            "links": {
                peer: {
                    k: v
                    for k, v in s.items()
                    if k in ("frames_in", "frames_out", "bytes_in", "bytes_out", "queued", "overflows", "rtt", "errors")
                }
                for peer, s in links.items()
                if not peer.startswith(P.CLIENT_PREFIX)
            },
            "clients": sum(peer.startswith(P.CLIENT_PREFIX) for peer in links),
            "ring_share": ring_shares(self._ring),
            "actors": len(self.actors()),
            "keyed_actors": len(self._keyed),
            "counters": dict(self.counters),
            "stats": self.stats()["total"],
            **{name: report() for name, report in self._status.items()},
        }


#: What herd_status() itself reports (add_status may not take these names).
_STATUS_KEYS = frozenset(
    (
        "node",
        "pid",
        "incarnation",
        "address",
        "live",
        "nodes",
        "links",
        "clients",
        "ring_share",
        "actors",
        "keyed_actors",
        "counters",
        "stats",
    )
)


class _LinkReply(ReplyProxy):
    """The pending-ask entry of an ask that came over a link: the outcome goes back as a REPLY."""

    __slots__ = ("node", "link", "src", "corr")

    def __init__(self, node: HerdNode, link: Link, src: str, corr: int):
        self._done = False
        self.node = node
        self.link = link
        self.src = src
        self.corr = corr

    def send(self, ok: bool, value: Any) -> None:
        self.node._reply(self.src, self.corr, ok, value, self.link)
