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
* An admin actor, ``$node``, answers ``"status"``, ``"ping"`` and ``"actors"`` asks, tells whom a
  key belongs to and performs confirmed tells (:mod:`herdrt.herd.admin`).
* **Joining**: ``await node.wait_for()`` returns once the herd is joined as this node sees it
  (every node of the herd file live, the links to its neighbors up); before that, an ask to a node
  not yet reached fails at once with ``NodeUnavailable``.

The node holds the routing and the dispatch of what arrives; the other concerns are parts it owns:
:class:`~herdrt.herd.membership.Membership` (``node.membership``), :class:`~herdrt.herd.broadcast.Broadcasts`,
:class:`~herdrt.herd.placement.Placement` (``node.placement``), and the admin actor (:mod:`herdrt.herd.admin`).

Delivery is at-most-once. Tells to a node that is unreachable raise ``NodeUnavailable`` and are
counted in ``undeliverable``; envelopes still queued on a link that drops are counted in
``lost_on_links``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from ..config import HerdConfig
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
from ..runtime.node import Node, family_of
from ..runtime.ref import ActorRef, Sender
from ..runtime.strict import check_msgpack
from . import protocol as P
from .admin import ADMIN_ACTOR, AdminActor
from .backpressure import Backpressure
from .broadcast import Broadcasts
from .credit import Inflows, LocalSender, Outflows
from .link import Link, LinkClosed, LinkOverflow, LinkSettings
from .links import LinkManager
from .membership import Membership
from .placement import Placement, ring_shares

__all__ = ["HerdNode"]

log = logging.getLogger("herdrt.herd")

# Errors that keep their type when they cross the herd (anything else arrives as RemoteError).
_TYPED = {
    cls.__name__: cls for cls in (ActorNotFound, ActorStopped, MailboxFull, NodeUnavailable, AskTimeout, AskDeadlock)
}
# Kinds addressed to one node (dest_node second): delivered there, forwarded by the others.
_ROUTED = frozenset((P.TELL, P.TELLS, P.ASK, P.REPLY, P.HANDOFF, P.SEND, P.CREDIT, P.DEAD_LETTERS))
# Kinds that credit bounds or that keep credit flowing: they pass outside a link's max_queued.
_CREDITED = frozenset((P.SEND, P.CREDIT, P.DEAD_LETTERS))
SWEEP_INTERVAL = 30.0  #: seconds between sweeps of idle credit windows
#: How a link's close reason starts when the peer said BYE (PROTOCOL.md, *Closing*): a close on purpose.
_BYE_PREFIX = "closed by the peer: "
_TELLS, _REPLY = P.TELLS, P.REPLY


def dead_reason(exc: Exception) -> str:
    """The dead-letter reason for a tell that raised ``exc``."""
    if isinstance(exc, LinkOverflow):
        return "link_overflow"
    if isinstance(exc, MailboxFull):
        return "mailbox_full"
    if isinstance(exc, ActorStopped):
        return "actor_stopped"
    if isinstance(exc, ActorNotFound):
        return "unknown_actor"
    return "no_route"


class HerdNode(Node):
    """One node of a herd, configured by a :class:`~herdrt.config.HerdConfig`.

    ``async with HerdNode(config, "Bona") as node:`` listens for links, dials its neighbors and
    runs until the block ends; ``await node.wait_for()`` there waits until the herd is joined
    (before that, an ask to a node not reached yet fails at once with ``NodeUnavailable``).
    ``listen`` and ``addresses`` override where it listens and where it dials its neighbors
    (tests use port 0). Other keyword arguments go to :class:`Node`.
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
        #: The links to the neighbors and the link server (listening once the node starts).
        self.links = LinkManager(
            config,
            name,
            self._on_envelopes,
            on_link_up=self._link_up,
            on_link_down=self._link_down,
            settings=LinkSettings.from_config(config, name, accept_clients=True),
            listen=listen,
            addresses=addresses,
        )
        self._remote_asks: dict[int, str] = {}  # corr -> node asked
        self.ratelog = RateLog(log)  # per-message events: counted in counters, logged rate-limited
        self._tick_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._backpressure = Backpressure()  # links held back while an actor they feed lags
        #: Who is live, the routes, the failure detectors (:mod:`herdrt.herd.membership`).
        self.membership = Membership(self, self._live_changed)
        #: Keyed actors on the ring (:mod:`herdrt.herd.placement`).
        self.placement = Placement(self)
        self._broadcasts = Broadcasts(self)
        #: Credit windows (:mod:`herdrt.herd.credit`): ours to other nodes' actors, theirs to ours.
        self.outflows = Outflows(self, self._link_to)
        self.inflows = Inflows(self, self._local_name, self.send_control)
        self._sweep_at = 0.0
        self._shutdown_hooks: list[Callable[[], Any]] = []
        self._membership_hooks: list[Callable[[set, set], None]] = []
        self._herd_waiters: list[asyncio.Future] = []  # wait_for() calls, woken on link and membership changes
        self._shutting_down = False
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
            "dead_letter_reports_out": 0,
            "dead_letter_reports_in": 0,
            "dead_letter_reports_lost": 0,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> HerdNode:
        """Listen for links, dial the neighbors, start the admin actor and the failure detector."""
        if self._started:
            return self
        await super().start()
        loop = self.scheduler.loop
        await self.links.start()
        self._started = True
        self.spawn(AdminActor, self.herd_status, name=ADMIN_ACTOR, mailbox_size=256)
        self.membership.start()
        self._tick_timer = loop.call_later(self.config.heartbeat_interval / 2, self._tick)
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

    async def wait_for(self, nodes: Iterable[str] | str | None = None, timeout: float | None = 10.0) -> None:
        """Wait until the herd is joined, as this node sees it: every node in ``nodes`` (a name or
        names; default every node of the herd file) is live (reachable over live links, per
        membership) and, for those that are this node's neighbors, the direct link is up.

        Returns at once if that holds already; otherwise it wakes on each link and membership
        change (no polling). A node's own name is always satisfied. Raises :class:`TimeoutError`
        after ``timeout`` seconds (``None``: wait as long as it takes) naming the nodes still
        missing and what to check; :class:`ValueError` for a name that is not in the herd file;
        :class:`RuntimeError` if the node is not started; :class:`NodeUnavailable` if it shuts
        down meanwhile.
        """
        if nodes is None:
            names = list(self.config.nodes)
        else:
            names = [nodes] if isinstance(nodes, str) else list(nodes)
            unknown = [n for n in names if n not in self.config.nodes]
            if unknown:
                raise ValueError(
                    f"{', '.join(map(repr, unknown))} not in the herd file (nodes: {', '.join(self.config.nodes)})"
                )
        if not self._started:
            raise RuntimeError(f"node {self.name} is not started: `await node.start()` or `async with` it first")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self._not_joined(names):
                    if self._shutting_down:
                        raise NodeUnavailable(f"node {self.name} is shutting down")
                    waiter = loop.create_future()
                    self._herd_waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._herd_waiters:
                            self._herd_waiters.remove(waiter)
        except TimeoutError:
            missing = self._not_joined(names)
            if missing:  # (else joined in the very turn the time ran out)
                raise TimeoutError(self._join_problem(missing, timeout)) from None

    def _not_joined(self, names: list[str]) -> dict[str, str]:
        """The nodes of ``names`` this node does not have yet, each with what is missing."""
        live = self.membership.live()
        neighbors = self.links.neighbors
        missing = {}
        for name in names:
            if name not in live:
                missing[name] = "no link up to it" if name in neighbors else "no route to it over live links"
            elif name in neighbors:
                link = self.links.link(name)
                if link is None or not link.is_up:
                    missing[name] = f"live, but its link to {self.name} is not up"
        return missing

    def _join_problem(self, missing: dict[str, str], timeout: float | None) -> str:
        """What :meth:`wait_for` says when it times out: who is missing, and what to check."""
        where = ", ".join(f"{name} at {':'.join(map(str, self.config.node(name).address))}" for name in missing)
        return (
            f"{self.name}: after {timeout:g} s still waiting for "
            + "; ".join(f"{name} ({why})" for name, why in missing.items())
            + f". Live as {self.name} sees it: {', '.join(sorted(self.membership.live()))}. "
            "Check that those nodes are started (`herdrt serve --config FILE --node NAME`, or a HerdNode "
            f"in a program of yours), that they listen where the herd file ({self.config.source}) says "
            f"({where}), and that they use the same herd secret as {self.name} (a link with another "
            "secret is refused, and both nodes log why)."
        )

    def _wake_waiters(self) -> None:
        waiters, self._herd_waiters = self._herd_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def shutdown(self) -> None:
        """Run the shutdown hooks, stop every actor, then close every link (with BYE)."""
        self._shutting_down = True
        self._wake_waiters()  # wait_for() calls raise NodeUnavailable
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        self._backpressure.close()
        self.membership.close()
        self.outflows.close(NodeUnavailable(f"node {self.name} is shutting down"))
        hooks, self._shutdown_hooks = self._shutdown_hooks, []
        for hook in reversed(hooks):
            try:
                result = hook()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
            except Exception:
                log.exception("%s: shutdown hook %r failed", self.name, hook)
        await super().shutdown()
        if self._started:
            self.membership.leave()
        await self.links.close("node shutdown")

    @property
    def started(self) -> bool:
        """True once :meth:`start` has bound the node's links (and still while it shuts down)."""
        return self._started

    @property
    def address(self) -> tuple[str, int]:
        """Where this node listens for herd links."""
        return self.links.address

    @property
    def incarnation(self) -> int:
        """This node's incarnation (its start time in ns, raised when it refutes a report)."""
        return self.membership.incarnation

    def _tick(self) -> None:
        loop = self.scheduler.loop
        self._tick_timer = loop.call_later(self.config.heartbeat_interval / 2, self._tick)
        self.ratelog.flush()
        self._report_dead_letters()
        self.dead_letters.flush_log()
        now = loop.time()
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_INTERVAL
            self.outflows.sweep()
            self.inflows.sweep()
        self.membership.check_failures(now)

    def _report_dead_letters(self) -> None:
        """Tell each node whose tells became dead letters here how many, for which reasons."""
        for origin, items in self.dead_letters.take_reports().items():
            for start in range(0, len(items), 256):
                try:
                    self.send_control(origin, [P.DEAD_LETTERS, origin, self.name, items[start : start + 256]])
                    self.counters["dead_letter_reports_out"] += 1
                except (NodeUnavailable, LinkOverflow):
                    self.counters["dead_letter_reports_lost"] += 1

    def _on_dead_letter_report(self, env: list) -> None:
        """``[DEAD_LETTERS, me, reporter, [[target, reason, count], ...]]``."""
        _, _, by, items = env[:4]
        if by.__class__ is not str or items.__class__ is not list:
            raise P.ProtocolError("DEAD_LETTERS is [18, dest_node, src_node:str, [[target, reason, count], ...]]")
        self.counters["dead_letter_reports_in"] += 1
        reported = self.dead_letters.reported
        for item in items:
            if item.__class__ is list and len(item) >= 3 and item[2].__class__ is int:
                reported(by, str(item[0]), str(item[1]), item[2])

    # -- routing -------------------------------------------------------------------------------

    def _link_to(self, dest: str) -> Link:
        """The link a message for ``dest`` leaves by: direct, else the next hop; NodeUnavailable."""
        links = self.links
        link = links.link(dest)
        if link is None:
            hop = self.membership.next_hop(dest)
            link = links.link(hop) if hop is not None else None
            if link is None:
                self.counters["undeliverable"] += 1
                if dest not in self.config.nodes:
                    raise NodeUnavailable(
                        f"{dest!r} is not a node of this herd (nodes: {', '.join(self.config.nodes)})"
                    )
                live = ", ".join(sorted(self.membership.live()))
                raise NodeUnavailable(f"node {dest} is unreachable from {self.name} (live: {live})")
        return link

    def send_to(self, dest: str, env: list, urgent: bool = False) -> None:
        """Send a node-layer envelope to node ``dest``: over the link to it, else the next hop.
        Raises :class:`NodeUnavailable` when no route is left."""
        link = self._link_to(dest)
        try:
            link.send(env, urgent)
        except LinkClosed as exc:
            self.counters["undeliverable"] += 1
            raise NodeUnavailable(f"node {dest}: {exc}") from None

    def send_control(self, dest: str, env: list) -> None:
        """:meth:`send_to` for the kinds credit bounds (SEND, CREDIT, DEAD_LETTERS): outside the
        link's ``max_queued``. Raises NodeUnavailable when no route is left."""
        link = self._link_to(dest)
        try:
            link.send_control(env)
        except LinkClosed as exc:
            raise NodeUnavailable(f"node {dest}: {exc}") from None

    def outflow(self, name: str, node_name: str) -> Sender:
        """The credit window from this node to ``name@node_name``: what a remote ``ref.send``
        goes through (:mod:`herdrt.herd.credit`). ``node_name`` ``"*"``: the keyed actor
        ``"kind:key"`` wherever the ring places it now. Raises NodeUnavailable."""
        if node_name == "*":
            kind, _, key = name.partition(":")
            owner = self.placement.owner(kind, key)
            if owner == self.name:
                return LocalSender(self.lookup(self.placement.activate(kind, key)))
            return self.outflows.get(owner, [kind, key])
        return self.outflows.get(node_name, name)

    def remote_poster(self, name: str | list, node_name: str):
        """Posters for ``name@node_name`` (``name``: an actor name or ``[kind, key]``): TELL and ASK
        envelopes routed over the herd.

        The hot path of every remote tell: the link is looked up once and kept until routing
        changes (``membership.epoch``), so a tell costs one envelope and one ``Link.send``."""
        me = self.name
        remote_asks = self._remote_asks
        strict = self.strict_messages
        ask_kind = P.ASK
        membership = self.membership
        route: list[Any] = [None, -1]  # the link towards node_name, and the routing epoch it was chosen in

        def post(message: Any, corr: int = 0) -> None:
            if strict:
                check_msgpack(message)
            link = route[0]
            if route[1] != membership.epoch or link is None:
                link = route[0] = self._link_to(node_name)
                route[1] = membership.epoch
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
            self.send_to(src, env, True)
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
        tells = 0
        fed: list[str] = []  # the actors this read fed: flow control looks at their backlogs
        for env in envs:
            try:
                if env.__class__ is list and len(env) > 3 and env[1] == me:
                    kind = env[0]
                    if kind == _REPLY and len(env) >= 5:
                        self.counters["replies_in"] += 1
                        self.resolve(env[2], bool(env[3]), env[4])
                        continue
                    if kind == _TELLS and env[2].__class__ is str and env[3].__class__ is list and env[2] in self:
                        target = env[2]
                        tells += len(env[3])
                        deliver_many(target, env[3], env[4] if len(env) > 4 else None)
                        if not fed or fed[-1] != target:
                            fed.append(target)
                        continue
                self._envelope(link, env)
            except (IndexError, TypeError, ValueError, KeyError, P.ProtocolError) as exc:
                self._bad_envelope(link, env, exc)
        if tells:
            self.counters["tells_in"] += tells  # (those that found no room are dead letters)
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
            self.membership.on_report(link.peer, env)
        elif kind == P.FLOOD:
            self._broadcasts.on_flood(link.peer, env)
        elif kind == P.ERROR:
            _, code, message = P.parse_error(env)
            self.resolve(env[1], False, ("NodeUnavailable" if code == P.E_OVERFLOW else "RemoteError", message))
        else:
            raise ValueError(f"unexpected envelope kind {kind!r}")

    def _forward(self, env: list) -> None:
        kind = env[0]
        try:
            if kind in _CREDITED:
                self.send_control(env[1], env)
            else:
                self.send_to(env[1], env)
        except (NodeUnavailable, LinkOverflow) as exc:
            if kind == P.ASK:  # tell the asker now rather than let it time out
                self._reply(env[4], env[5], False, ("NodeUnavailable", str(exc)))
            elif kind == P.TELL or kind == P.TELLS or kind == P.SEND:
                reason = "link_overflow" if isinstance(exc, LinkOverflow) else "no_route"
                self.dead_envelope(env, reason)
            elif isinstance(exc, LinkOverflow):
                self.counters["undeliverable"] += 1

    def _arrived(self, link: Link, kind: int, env: list) -> None:
        if kind == P.TELL or kind == P.TELLS:
            bodies = (env[3],) if kind == P.TELL else env[3]
            if kind == P.TELLS and bodies.__class__ is not list:
                raise P.ProtocolError(f"TELLS carries a list of bodies, not {P.describe(bodies)}")
            self.counters["tells_in"] += len(bodies)
            try:
                name = self._local_name(env[2])
            except HerdError:  # a keyed actor of a kind not registered here
                self.counters["unknown_actor"] += len(bodies)
                self.dead_envelope(env, "unknown_actor")
                return
            try:  # what finds no room is a dead letter, reported to the sender's node
                self.deliver_many(name, list(bodies), env[4] if len(env) > 4 else None)
            except ActorNotFound:
                self.counters["unknown_actor"] += len(bodies)
        elif kind == P.SEND:
            self.inflows.on_send(env)
        elif kind == P.CREDIT:
            self.outflows.on_credit(env)
        elif kind == P.DEAD_LETTERS:
            self._on_dead_letter_report(env)
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
            kind_name, key, state = env[2:5]
            self.counters["handoffs_in"] += 1
            self.placement.handed_over(kind_name, key, state)

    def _local_name(self, target) -> str:
        """The local actor name of ``target``: an actor name, or ``[kind, key]`` (a keyed actor,
        activated here on demand)."""
        if target.__class__ is str:
            return target
        kind, key = target
        return self.placement.activate(kind, key)

    def _from_client(self, link: Link, env: list) -> None:
        """A client's TELL, TELLS or ASK: performed by this node on the client's behalf. Any
        other kind is refused with ERROR protocol, and the link closed."""
        kind = env[0]
        if kind not in (P.TELL, P.TELLS, P.ASK):
            self.counters["bad_envelopes"] += 1
            link.refuse(P.E_PROTOCOL, f"clients may send TELL, TELLS and ASK only, not {P.kind_name(kind)}")
            return

        def respond(corr: int, ok: bool, value: Any) -> None:
            try:
                link.send([P.REPLY, link.peer, corr, ok, value], True)
            except (LinkClosed, LinkOverflow) as exc:  # the client left, or does not read
                self.counters["undeliverable"] += 1
                self.ratelog.info(
                    ("reply lost", link.peer), "%s: reply to client %s lost: %s", self.name, link.peer, exc
                )

        target = env[2] if env[2].__class__ is list else f"{env[2]}@{env[1]}"
        if kind == P.TELL:
            self.perform_tell(link.peer, target, env[3])
        elif kind == P.TELLS:
            if env[3].__class__ is not list:
                raise P.ProtocolError(f"TELLS carries a list of bodies, not {P.describe(env[3])}")
            for body in env[3]:
                self.perform_tell(link.peer, target, body)
        else:
            self.perform_ask(link.peer, target, env[3], env[5], respond)

    def _target_ref(self, target: str | list):
        return self.ref_for(*target) if isinstance(target, list) else self.lookup(target)

    def perform_tell(self, who: str, target: str | list, body: Any) -> bool:
        """A tell performed on behalf of ``who`` (a client or a bridge service): ``target`` is
        ``"name@node"`` or ``[kind, key]``. False if it failed here: it is then a dead letter."""
        try:
            self._target_ref(target).tell(body)
        except HerdError as exc:
            if isinstance(exc, ActorNotFound):
                self.counters["unknown_actor"] += 1
            path = target if isinstance(target, str) else f"{target!r}"
            self.dead_letters.record(path, dead_reason(exc), body)
            return False
        return True

    def perform_ask(
        self, who: str, target: str | list, body: Any, corr: Any, respond: Callable[[Any, bool, Any], None]
    ) -> None:
        """An ask performed on behalf of ``who``: its outcome goes to ``respond(corr, ok, value)``
        exactly once (``value`` on failure: ``[type_name, message]``)."""
        try:
            fut = asyncio.ensure_future(self._target_ref(target).ask(body))
        except HerdError as exc:
            respond(corr, False, [type(exc).__name__, str(exc)])
            return

        def answer(fut: asyncio.Future) -> None:
            if fut.cancelled():
                respond(corr, False, ["ActorStopped", "the ask was cancelled"])
                return
            exc = fut.exception()
            if exc is not None:
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
        log.info("%s: link to %s up", self.name, peer)
        self.membership.link_up(link)
        self._wake_waiters()

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
        elif kind in (P.TELL, P.TELLS, P.SEND):
            self.dead_envelope(env, "unencodable")

    def dead_envelope(self, env: list, reason: str) -> None:
        """Record the tells of a TELL, TELLS or SEND envelope that will not be delivered as dead letters."""
        target = env[2]
        path = f"{target}@{env[1]}" if target.__class__ is str else repr(target)  # [kind, key]: placed anywhere
        origin = env[4] if len(env) > 4 and env[4].__class__ is str else None
        record = self.dead_letters.record
        for body in (env[3],) if env[0] == P.TELL else env[3]:
            record(path, reason, body, 1, origin)

    def _link_down(self, link: Link, reason: str) -> None:
        peer = link.peer
        self.counters["lost_on_links"] += link.lost_on_close
        lost, link.lost = link.lost, []
        me = self.name
        for env in lost:
            if env.__class__ is list and env and (env[0] == P.TELL or env[0] == P.TELLS):
                self.dead_envelope(env, "link_closed")
            elif env.__class__ is list and env and env[0] == P.SEND and env[4] != me:
                self.dead_envelope(env, "link_closed")  # passed on for another: reported to it
        self.outflows.link_down(link)  # ours are in doubt: their windows count them
        self._backpressure.forget(link)
        if peer.startswith(P.CLIENT_PREFIX):
            return
        # This node closing, or the peer saying BYE (it shuts down, or closes this link on purpose),
        # is an orderly end: INFO. A link lost any other way is a warning.
        orderly = self.closing or reason.startswith(_BYE_PREFIX)
        log.log(logging.INFO if orderly else logging.WARNING, "%s: link to %s down: %s", self.name, peer, reason)
        self.membership.link_down(peer, orderly=orderly)
        self._wake_waiters()

    def neighbor_links(self) -> list[tuple[str, Link]]:
        """(peer, link) of every established link to a node (not closing, not a client)."""
        return [
            (peer, link) for peer, link in self.links.up.items() if link.is_up and not peer.startswith(P.CLIENT_PREFIX)
        ]

    def flood(self, env: list, skip: tuple = ()) -> None:
        """Send ``env`` on every neighbor link except those to the peers in ``skip``. A link
        that cannot take it is passed over: it is closing (its link-down floods a report of its
        own), or its peer does not read (counted)."""
        for peer, link in self.neighbor_links():
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

    def _live_changed(self, came: set, gone: set) -> None:
        if gone:
            live = self.membership.live()
            self.outflows.unreachable(live)
            for node in gone:
                self.inflows.forget_node(node)
            for corr, dest in list(self._remote_asks.items()):
                if dest in gone:
                    del self._remote_asks[corr]
                    self.asks.fail(corr, NodeUnavailable(f"node {dest} went down before it replied"))
        self.placement.rebalance(self.membership.live())
        if self._remote_asks and len(self._remote_asks) > 2 * len(self.asks) + 1024:
            # asks that timed out leave their route behind; sweep now and then
            for corr in [c for c in self._remote_asks if not self.asks.waiting(c)]:
                del self._remote_asks[corr]
        for hook in self._membership_hooks:
            try:
                hook(came, gone)
            except Exception:
                log.exception("%s: membership hook %r failed", self.name, hook)
        self._wake_waiters()

    # -- broadcast (herd/broadcast.py) ---------------------------------------------------------

    def subscribe(self, topic: str, target: ActorRef | Callable[[Any], Any]) -> None:
        """Deliver every broadcast on ``topic`` (from any node, this one included) to ``target``:
        an actor ref (told the message) or a plain callable."""
        self._broadcasts.subscribe(topic, target)

    def unsubscribe(self, topic: str, target) -> None:
        self._broadcasts.unsubscribe(topic, target)

    def broadcast(self, topic: str, message: Any) -> None:
        """Flood ``message`` to every reachable node's subscribers of ``topic``, once each."""
        self._broadcasts.broadcast(topic, message)

    # -- keyed actors (herd/placement.py) --------------------------------------------------------

    def register_kind(self, kind: str, actor_cls: type[Actor], *args: Any, **spawn_options: Any) -> None:
        """Make ``kind`` activatable here: ``actor_cls(*args)`` on the first message for a key this
        node owns. Register the same kinds on every node."""
        self.placement.register_kind(kind, actor_cls, args, spawn_options)

    def owner(self, kind: str, key: str) -> str:
        """The live node that owns keyed actor ``(kind, key)`` now."""
        return self.placement.owner(kind, key)

    def ref_for(self, kind: str, key: str) -> ActorRef:
        """A ref to keyed actor ``(kind, key)``, wherever the ring places it at each message."""
        return self.placement.ref_for(kind, key)

    # -- status ----------------------------------------------------------------------------------

    def herd_status(self, stats: dict | None = None) -> dict:
        """This node's view of the herd (msgpack-ready): membership, links, ring shares, stats, and
        its busiest actors. ``stats``: this node's :meth:`stats`, when the caller has it already."""
        if stats is None:
            stats = self.stats()
        links = self.links.stats()["links"]
        return {
            "node": self.name,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
            "address": list(self.address) if self.started else None,
            "live": sorted(self.membership.live()),
            "nodes": list(self.config.nodes),
            "links": {
                peer: {k: v for k, v in s.items() if k in _LINK_KEYS}
                for peer, s in links.items()
                if not peer.startswith(P.CLIENT_PREFIX)
            },
            "clients": sum(peer.startswith(P.CLIENT_PREFIX) for peer in links),
            "ring_share": ring_shares(self.placement.ring),
            "actors": len(stats["actors"]),
            "keyed_actors": self.placement.running,
            "counters": dict(self.counters),
            "dead_letters": self.dead_letters.stats(),
            "credit": {"out": self.outflows.stats(), "in": self.inflows.stats()},
            "stats": stats["total"],
            "busiest": busiest(stats),
            **{name: report() for name, report in self._status.items()},
        }


def busiest(stats: dict, n: int = 10) -> list[dict]:
    """The ``n`` actors of ``stats`` (a node's :meth:`~herdrt.runtime.node.Node.stats`) that
    handled the most messages, a family of keyed actors counted as one (``"kind:*"``)."""
    rows = [(name, s) for name, s in stats["actors"].items() if family_of(name) is None] + [
        (f"{kind}:*", s) for kind, s in stats["families"].items()
    ]
    rows.sort(key=lambda row: -row[1]["messages"])
    return [
        {
            "actor": name,
            "messages": s["messages"],
            "failures": s["failures"],
            "mailbox_depth": s["mailbox_depth"],
            "handler_mean": s["handler_time"]["mean"] if s["handler_time"]["count"] else None,
            "handler_p99": s["handler_quantiles"]["p99"],
        }
        for name, s in rows[:n]
    ]


#: The link statistics herd_status() shows per peer.
_LINK_KEYS = frozenset(
    (
        "state",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "queued",
        "overflows",
        "heartbeats_in",
        "rtt",
        "last_rtt",
        "errors",
    )
)


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
        "dead_letters",
        "credit",
        "stats",
        "busiest",
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
