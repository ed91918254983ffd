"""One node: its local actors, their scheduler, its asks in flight — and the seams the layers
above use (the herd's links, the bridge), so that none of them reaches into the runtime:

* delivery to a local actor: :meth:`Node.deliver`, :meth:`Node.deliver_many`,
  :meth:`Node.deliver_ask` (an ask from elsewhere, answered through a
  :class:`~herdrt.runtime.asks.ReplyProxy`);
* an actor's room: :meth:`Node.mailbox` (flow control reads it);
* names: :meth:`Node.spawn` registers one, :meth:`Node.release` frees one at once, ``name in node``;
* asks: ``node.asks.complete`` / ``node.asks.fail`` (:class:`~herdrt.runtime.asks.Asks`) and
  :meth:`Node.resolve` for an outcome that came back over a link;
* keyed actors moving between nodes: :meth:`Node.hand_off`, :meth:`Node.take_over`;
* the way out: :meth:`Node.remote_poster`, which the herd overrides.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, overload

from ..core import OnlineStats, QuantileSketch
from ..errors import ActorError, ActorNotFound, ActorStopped, NodeUnavailable, RemoteError
from .actor import Actor, Terminated
from .asks import Asks, CallbackReply, ReplyProxy
from .cell import STOPPED, Cell, Watcher, notify, quantiles
from .deadletters import DeadLetter, DeadLetters
from .mailbox import DEFAULT_MAILBOX_SIZE, Mailbox, Overflow
from .ref import ActorRef, Poster, Sender, cell_of
from .scheduler import Scheduler

__all__ = ["Node", "run"]

log = logging.getLogger("herdrt.node")


class Node:
    """A node: spawns and runs actors on the running event loop (uvloop or stdlib asyncio).

    Use it as an async context manager (``async with Node("a") as node:``); leaving the block
    stops every actor in reverse order of spawn, runs their ``on_stop``, fails pending asks with
    :class:`ActorStopped`, and leaves no tasks behind.

    Options: ``mailbox_size`` (default capacity, ``None`` for unbounded) and ``overflow`` (an
    :class:`Overflow` policy) for actors that do not choose; ``ask_timeout`` (seconds);
    ``strict_messages`` checks every message and reply survives msgpack unchanged, so what works
    on one node works across the herd; ``batch_budget`` (messages an actor handles before the
    next actor's turn) and ``time_slice`` (seconds of handlers before the loop gets control back).
    """

    def __init__(
        self,
        name: str = "node",
        *,
        mailbox_size: int | None = DEFAULT_MAILBOX_SIZE,
        overflow: Overflow | str = Overflow.BLOCK,
        ask_timeout: float = 5.0,
        strict_messages: bool = False,
        batch_budget: int = 128,
        time_slice: float = 0.002,
    ):
        if "@" in name or not name:
            raise ValueError(f"bad node name {name!r}")
        if batch_budget < 1 or time_slice <= 0 or ask_timeout <= 0:
            raise ValueError("batch_budget, time_slice and ask_timeout must be positive")
        self.name = name
        self.mailbox_size = mailbox_size
        self.overflow = Overflow(overflow)
        self.ask_timeout = ask_timeout
        self.strict_messages = strict_messages
        #: Messages this node took in and could not deliver (:mod:`herdrt.runtime.deadletters`).
        self.dead_letters = DeadLetters(name)
        #: The run queue of the actors (bound to the loop the node starts on).
        self.scheduler = Scheduler(batch_budget, time_slice)
        #: The asks this node waits on.
        self.asks = Asks(self.scheduler, ask_timeout, strict_messages)
        self._cells: dict[str, Cell] = {}
        self._names = itertools.count(1).__next__
        self._retired: dict[str, float] = dict.fromkeys(_COUNTS, 0)
        self._retired_handler = OnlineStats()
        self._retired_wait = OnlineStats()
        self._families: dict[str, _Family] = {}
        self._closing = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        if self.scheduler.loop is None:
            self.scheduler.loop = asyncio.get_running_loop()
        return self.scheduler.loop

    async def start(self) -> Node:
        """Bind the node to the running loop (``async with`` and the first ``spawn`` do it too)."""
        self._bind()
        return self

    async def __aenter__(self) -> Node:
        return await self.start()

    @property
    def closing(self) -> bool:
        """True once :meth:`shutdown` has begun."""
        return self._closing

    async def __aexit__(self, *exc_info) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every actor (last spawned first), fail every pending ask, release the scheduler."""
        if self._closed:
            return
        self._closing = True
        for cell in reversed(list(self._cells.values())):
            await cell.stop("node shutdown")
        while self.scheduler.tasks:
            await asyncio.gather(*list(self.scheduler.tasks), return_exceptions=True)
        self.asks.close(lambda: ActorStopped(f"node {self.name} shut down before the reply"))
        self.scheduler.close()
        self._closed = True

    # -- actors --------------------------------------------------------------------------------

    def spawn(
        self,
        actor_cls: type[Actor],
        *args: Any,
        name: str | None = None,
        mailbox_size: int | None | object = ...,
        overflow: Overflow | str | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Start an actor of ``actor_cls`` (built with ``*args, **kwargs``) and return its ref.

        ``name`` must be unique on the node (one is made up if omitted); ``mailbox_size`` (``None``
        for unbounded) and ``overflow`` default to the node's. ``on_start`` runs before the first
        message; if ``__init__`` raises, ``spawn`` raises.
        """
        self._bind()
        if self._closing:
            raise ActorError(f"node {self.name} is shutting down")
        if not (isinstance(actor_cls, type) and issubclass(actor_cls, Actor)):
            raise TypeError(f"spawn needs an Actor subclass, not {actor_cls!r}")
        if name is None:
            name = f"{actor_cls.__name__.lower()}-{self._names()}"
            while name in self._cells:
                name = f"{actor_cls.__name__.lower()}-{self._names()}"
        elif not name or "@" in name:
            raise ValueError(f"bad actor name {name!r}")
        elif name in self._cells:
            raise ActorError(f"an actor named {name!r} already runs on node {self.name}")
        size = self.mailbox_size if mailbox_size is ... else mailbox_size
        if size is not None and not (isinstance(size, int) and size >= 1):
            raise ValueError(f"mailbox_size must be a positive int or None, not {size!r}")
        policy = self.overflow if overflow is None else Overflow(overflow)
        cell = Cell(self, actor_cls, args, kwargs, name, size, policy)
        cell.instantiate()
        self._cells[name] = cell
        cell.start()
        return cell.ref

    def lookup(self, name: str) -> ActorRef:
        """The ref of the live actor ``name`` (or ``name@node``); raises :class:`ActorNotFound`."""
        actor_name, _, node_name = name.partition("@")
        if node_name and node_name != self.name:
            return self._remote_ref(actor_name, node_name)
        cell = self._cells.get(actor_name)
        if cell is None:
            raise ActorNotFound(f"no actor {actor_name!r} on node {self.name}")
        return cell.ref

    async def stop(self, ref: ActorRef | str) -> None:
        """Stop an actor and wait until its ``on_stop`` has run; a handler in progress is cancelled.

        Queued asks fail with :class:`ActorStopped`; watchers get :class:`Terminated`. Inside an
        actor's own handler, call ``self.stop()`` instead.
        """
        cell = self._local_cell(ref)
        if cell is not None:
            await cell.stop("stopped")

    def watch(self, ref: ActorRef | str, watcher: Watcher) -> None:
        """Tell ``watcher`` (an ActorRef, or a callable) a :class:`Terminated` when ``ref`` stops.

        If it has already stopped, the notice is sent at once (reason ``"not running"``).
        """
        cell: Cell | None
        if isinstance(ref, str):
            cell = self._local_cell(ref)  # a name nobody runs: ActorNotFound
            watched = cell.ref
        else:
            cell = self._local_cell(ref, missing_ok=True)
            watched = ref
        if cell is None or cell.state == STOPPED:
            notify(watcher, Terminated(watched, "not running"), self.scheduler)
        else:
            if not cell.watchers:
                cell.watchers = []
            cell.watchers.append(watcher)

    def unwatch(self, ref: ActorRef | str, watcher: Watcher) -> None:
        cell = self._local_cell(ref, missing_ok=True)
        if cell is not None:
            watchers = cell.watchers
            if watchers:  # (the empty tuple: no watchers yet)
                try:
                    watchers.remove(watcher)
                except ValueError:  # not watching
                    pass

    def actors(self) -> list[ActorRef]:
        """Refs of the live local actors, in spawn order."""
        return [c.ref for c in self._cells.values()]

    def __contains__(self, name: str) -> bool:
        """Whether a local actor is called ``name``."""
        return name in self._cells

    def release(self, name: str) -> None:
        """Free the name ``name`` at once (it can be spawned again right away) and stop its actor
        in the background, in order: queued asks fail with ``ActorStopped``, ``on_stop`` runs.
        Used by the bridge when a service stops serving a name."""
        cell = self._cells.pop(name, None)
        if cell is not None:
            self.scheduler.track(self.scheduler.loop.create_task(cell.stop("released")))

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-actor and node-wide statistics as plain dicts (msgpack-ready).

        ``actors`` maps each live actor's name to its counts (messages, failures, restarts, dropped,
        rejected, mailbox_depth) and ``OnlineStats`` dicts for ``handler_time`` and ``mailbox_wait``
        (seconds). ``total`` is the node-level merge, including actors that have stopped.
        """
        actors = {}
        handler = self._retired_handler.copy()
        wait = self._retired_wait.copy()
        totals: dict[str, Any] = dict(self._retired)
        depth = 0
        families = {kind: family.retired_view() for kind, family in self._families.items()}
        for name, cell in self._cells.items():
            s = actors[name] = cell.stats()
            for key in totals:
                totals[key] += s[key]
            depth += s["mailbox_depth"]
            handler.merge(cell.handler_stats)
            wait.merge(cell.wait_stats)
            kind = family_of(name)
            if kind is not None:
                view = families.get(kind)
                if view is None:
                    view = families[kind] = self._family(kind).retired_view()
                view["actors"] += 1
                view["mailbox_depth"] += s["mailbox_depth"]
                for key in _COUNTS:
                    view[key] += s[key]
                view["handler_time"].merge(cell.handler_stats)
        for kind, view in families.items():
            view["handler_time"] = view["handler_time"].to_dict()
            view["handler_quantiles"] = quantiles(self._families[kind].sketch)
        totals.update(
            mailbox_depth=depth,
            actors=len(actors),
            handler_time=handler.to_dict(),
            mailbox_wait=wait.to_dict(),
        )
        return {
            "node": self.name,
            "dead_letters": self.dead_letters.stats(),
            "asks_pending": len(self.asks),
            "actors": actors,
            "families": families,
            "total": totals,
        }

    def on_dead_letter(self, callback: Callable[[DeadLetter], Any]) -> Callable[[], None]:
        """Call ``callback(letter)`` (a :class:`~herdrt.runtime.deadletters.DeadLetter`) for every
        message this node takes in and cannot deliver; returns a function that unsubscribes.
        It runs on the node's loop, inside the code that lost the message: keep it short."""
        return self.dead_letters.subscribe(callback)

    # -- delivery: the seams the herd's links and the bridge use --------------------------------

    def deliver(self, target: str, message: Any, reply: Callable[[bool, Any], None] | None = None) -> None:
        """Deliver one inbound envelope to the local actor ``target``: the entry point for links.

        A tell passes ``reply=None``; one that cannot be delivered is a dead letter (recorded
        here) and raises as a local tell would (:class:`~herdrt.errors.ActorNotFound`,
        ``MailboxFull``, ``ActorStopped``). For an ask, ``reply(ok, value)`` is called exactly
        once: ``(True, result)``, or ``(False, (type_name, message))`` when the handler raised,
        the actor stopped, or no reply came within the node's ``ask_timeout`` — every value
        msgpack-able, so a link can send it back as it is.
        """
        if reply is None:
            cell = self._cells.get(target)
            if cell is None:
                self.dead_letters.record(f"{target}@{self.name}", "unknown_actor", message)
                raise ActorNotFound(f"no actor {target!r} on node {self.name}")
            cell.post_inbound(message)
        else:
            self.deliver_ask(target, message, CallbackReply(reply))

    def deliver_many(self, target: str, messages: list, origin: str | None = None, credited: bool = False) -> int:
        """Deliver several tells, in order, to the local actor ``target`` (a TELLS envelope).

        Each one that cannot be taken (a full mailbox, a stopped actor) is a dead letter,
        recorded here (``origin``: the node that sent them, to be told); returns how many that
        was. ``credited``: the sender held credit for them (herd flow control), so they are
        taken even past the mailbox's capacity — the credit is what bounds them. Raises
        :class:`~herdrt.errors.ActorNotFound` (every message a dead letter) if there is no such actor."""
        cell = self._cells.get(target)
        if cell is None:
            self.dead_letters.record(
                f"{target}@{self.name}", "unknown_actor", messages[0] if messages else None, len(messages), origin
            )
            raise ActorNotFound(f"no actor {target!r} on node {self.name}")
        return cell.post_many(messages, origin, credited)

    def deliver_ask(self, target: str, message: Any, entry: ReplyProxy) -> None:
        """Deliver an ask that came from elsewhere to the local actor ``target``; ``entry`` stands
        in for the asker and gets the outcome (its ``send(ok, value)``), within ``ask_timeout``.
        Raises as :meth:`deliver` does."""
        self.asks.post(self._cell(target).ref.tell, message, entry)

    def mailbox(self, name: str) -> Mailbox | None:
        """The mailbox of the local actor ``name`` (None if there is none): how much it holds
        (``len``) and how much room it has left (``room``), for flow control."""
        cell = self._cells.get(name)
        return cell.mailbox if cell is not None else None

    def _cell(self, target: str) -> Cell:
        cell = self._cells.get(target)
        if cell is None:
            raise ActorNotFound(f"no actor {target!r} on node {self.name}")
        return cell

    # -- keyed actors that move between nodes (the herd's placement) -----------------------------

    def hand_off(self, name: str) -> Any:
        """The state the local actor ``name`` hands over before it moves to another node (its
        ``on_handoff()``), or None if it has none or the hook failed (logged)."""
        cell = self._cells.get(name)
        if cell is None or cell.actor is None:
            return None
        try:
            return cell.actor.on_handoff()
        except Exception:
            log.exception("%s: on_handoff of %s failed; its state is not handed over", self.name, name)
            return None

    def take_over(self, name: str, state: Any) -> None:
        """Give the local actor ``name``, just activated, the state its previous copy handed over
        (its ``on_takeover(state)``, before its first message)."""
        actor = self._cell(name).actor
        assert actor is not None  # just activated
        actor.on_takeover(state)

    def resolve(self, corr: int, ok: bool, value: Any) -> None:
        """Complete this node's ask ``corr`` with an outcome that came back over a link.

        The mirror of :meth:`deliver`'s ``reply``: ``(True, result)`` answers the asker,
        ``(False, (type_name, message))`` fails it with :class:`RemoteError`. Unknown or expired
        ids are ignored (the asker already timed out).
        """
        if ok:
            fut = self.asks.take(corr)
            if fut is not None and not fut.done():
                fut.set_result(value)
        else:
            type_name, message = value
            self.asks.fail(corr, RemoteError(str(type_name), str(message)))

    def _route(self, name: str, node_name: str) -> Poster:
        """The poster ``post(message, corr=0)`` for ``name@node_name``; resolved once per ref."""
        if node_name == self.name:
            cell = self._cells.get(name)
            if cell is None:
                raise ActorNotFound(f"no actor {name!r} on node {self.name}")
            return cell.ref.tell
        return self.remote_poster(name, node_name)

    def remote_poster(self, name: str, node_name: str) -> Poster:
        """Override point for the herd: a poster ``post(message, corr=0)`` for ``name@node_name``.

        A link layer returns a function that sends the envelope ``(name, message, corr, self.name)``
        to ``node_name`` (``corr`` 0 for a tell; otherwise an ask registered in this node's pending
        table, to be completed with :meth:`resolve` when the reply frame comes back), raising
        :class:`NodeUnavailable` at once if the node is down. The far side hands the envelope to
        its :meth:`deliver`. Without links every other node is unreachable, and says so at once.
        """

        def unreachable(message: Any, corr: int = 0) -> None:
            raise NodeUnavailable(f"node {node_name} is not reachable from {self.name} (no herd links)")

        return unreachable

    def outflow(self, name: str, node_name: str) -> Sender:
        """Override point for the herd: what ``ref.send`` to ``name@node_name`` goes through (a
        credit window). Without links every other node is unreachable."""
        raise NodeUnavailable(f"node {node_name} is not reachable from {self.name} (no herd links)")

    def _remote_ref(self, name: str, node_name: str) -> ActorRef:
        return ActorRef(self, name, node_name, self._route(name, node_name))

    @overload
    def _local_cell(self, ref: ActorRef | str, missing_ok: Literal[False] = False) -> Cell: ...
    @overload
    def _local_cell(self, ref: ActorRef | str, missing_ok: bool) -> Cell | None: ...
    def _local_cell(self, ref: ActorRef | str, missing_ok: bool = False) -> Cell | None:
        if isinstance(ref, ActorRef):
            cell = cell_of(ref)
            if cell is not None and cell.node is self:
                return cell
            name = ref.name if ref.node_name == self.name else None
        else:
            name, _, node_name = ref.partition("@")
            if node_name and node_name != self.name:
                name = None
        cell = self._cells.get(name) if name is not None else None
        if cell is None and not missing_ok:
            raise ActorNotFound(f"no actor {ref!s} on node {self.name}")
        return cell

    # -- internal ------------------------------------------------------------------------------

    def retire(self, cell: Cell) -> None:
        """A cell that stopped leaves the node; its counts stay in the node's totals."""
        if self._cells.get(cell.ref.name) is cell:
            del self._cells[cell.ref.name]
        mb = cell.mailbox
        if not (cell.messages or cell.failures or mb.dropped or mb.rejected):
            return  # nothing to fold into the node totals
        r = self._retired
        r["messages"] += cell.messages
        r["busy"] += cell.busy
        r["failures"] += cell.failures
        r["restarts"] += cell.restarts
        r["dropped"] += mb.dropped
        r["rejected"] += mb.rejected
        self._retired_handler.merge(cell.handler_stats)
        self._retired_wait.merge(cell.wait_stats)
        kind = family_of(cell.ref.name)
        if kind is not None:
            self._family(kind).retire(cell)

    def handler_sketch(self, name: str) -> QuantileSketch:
        """The handler-time sketch for actor ``name``: its own, or its family's, shared."""
        kind = family_of(name)
        return QuantileSketch() if kind is None else self._family(kind).sketch

    def _family(self, kind: str) -> _Family:
        family = self._families.get(kind)
        if family is None:
            family = self._families[kind] = _Family()
        return family

    def __repr__(self) -> str:
        return f"<Node {self.name} actors={len(self._cells)}>"


_COUNTS = ("messages", "busy", "failures", "restarts", "dropped", "rejected")


def family_of(name: str) -> str | None:
    """The family of actor ``name``: ``"kind"`` for ``"kind:key"`` (keyed actors), else None."""
    kind, sep, _ = name.partition(":")
    return kind if sep else None


class _Family:
    """What the stopped members of a family leave behind, and the family's handler-time sketch."""

    __slots__ = ("counts", "handler", "sketch")

    def __init__(self) -> None:
        self.counts: dict[str, float] = dict.fromkeys(_COUNTS, 0)
        self.handler = OnlineStats()
        self.sketch = QuantileSketch()

    def retire(self, cell: Cell) -> None:
        c = self.counts
        c["messages"] += cell.messages
        c["busy"] += cell.busy
        c["failures"] += cell.failures
        c["restarts"] += cell.restarts
        c["dropped"] += cell.mailbox.dropped
        c["rejected"] += cell.mailbox.rejected
        self.handler.merge(cell.handler_stats)

    def retired_view(self) -> dict[str, Any]:
        return {"actors": 0, "mailbox_depth": 0, **self.counts, "handler_time": self.handler.copy()}


def run(main: Callable[[], Coroutine[Any, Any, Any]] | Coroutine[Any, Any, Any], *, use_uvloop: bool = True) -> Any:
    """Run ``main`` (a coroutine function or coroutine) to completion on uvloop (or stdlib asyncio)."""
    coro = main() if callable(main) else main
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
