"""One herd node: the local actors, their scheduler, asks in flight, and the way out to the herd."""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import sys
from typing import Any, Callable, Coroutine

from .actor import Actor, Terminated
from ..core import OnlineStats
from ..errors import ActorError, ActorNotFound, AskDeadlock, ActorStopped, AskTimeout, NodeUnavailable, RemoteError
from .mailbox import DEFAULT_MAILBOX_SIZE, Overflow, check_msgpack
from .ref import ActorRef
from .scheduler import _STOPPED, _SUSPENDED, _Cell, _Scheduler

__all__ = ["Node", "run"]

log = logging.getLogger("herdrt.node")

Watcher = ActorRef | Callable[[Terminated], Any]


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
        #: Tells that found their actor stopped (queued when it stopped) and were not delivered.
        self.dead_letters = 0
        self._batch_budget = batch_budget
        self._time_slice = time_slice
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sched: _Scheduler | None = None
        self._cells: dict[str, _Cell] = {}
        self._current: _Cell | None = None  # the cell whose handler code is running right now
        self._pending: dict[int, asyncio.Future] = {}
        self._next_corr = 1
        self._ticker: asyncio.TimerHandle | None = None
        self._marks: collections.deque[tuple[float, int]] = collections.deque()
        self._custom: dict[int, asyncio.TimerHandle] = {}
        self._stop_tasks: set[asyncio.Task] = set()
        self._names = itertools.count(1).__next__
        self._retired = {"messages": 0, "failures": 0, "restarts": 0, "dropped": 0, "rejected": 0}
        self._retired_handler = OnlineStats()
        self._retired_wait = OnlineStats()
        self._closing = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._sched = _Scheduler(loop, self._batch_budget, self._time_slice)
        return loop

    async def __aenter__(self) -> Node:
        self._bind()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every actor (last spawned first), fail every pending ask, release the scheduler."""
        if self._closed:
            return
        self._closing = True
        for cell in reversed(list(self._cells.values())):
            await cell.stop("node shutdown")
        while self._stop_tasks:
            await asyncio.gather(*list(self._stop_tasks), return_exceptions=True)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ActorStopped(f"node {self.name} shut down before the reply"))
        for handle in self._custom.values():
            handle.cancel()
        self._custom.clear()
        self._marks.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._sched is not None:
            self._sched.close()
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
        if size is None:
            capacity = sys.maxsize
        elif isinstance(size, int) and size >= 1:
            capacity = size
        else:
            raise ValueError(f"mailbox_size must be a positive int or None, not {size!r}")
        policy = self.overflow if overflow is None else Overflow(overflow)
        cell = _Cell(self, actor_cls, args, kwargs, name, capacity, policy)
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
        if isinstance(ref, str):
            cell = self._local_cell(ref)  # a name nobody runs: ActorNotFound
        else:
            cell = self._local_cell(ref, missing_ok=True)
        if cell is None or cell.state == _STOPPED:
            self._notify(watcher, Terminated(ref, "not running"))
        else:
            if not cell.watchers:
                cell.watchers = []
            cell.watchers.append(watcher)

    def unwatch(self, ref: ActorRef | str, watcher: Watcher) -> None:
        cell = self._local_cell(ref, missing_ok=True)
        if cell is not None:
            try:
                cell.watchers.remove(watcher)
            except (ValueError, AttributeError):  # not watching (AttributeError: no watchers yet)
                pass

    def actors(self) -> list[ActorRef]:
        """Refs of the live local actors, in spawn order."""
        return [c.ref for c in self._cells.values()]

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> dict:
        """Per-actor and node-wide statistics as plain dicts (msgpack-ready).

        ``actors`` maps each live actor's name to its counts (messages, failures, restarts, dropped,
        rejected, mailbox_depth) and ``OnlineStats`` dicts for ``handler_time`` and ``mailbox_wait``
        (seconds). ``total`` is the node-level merge, including actors that have stopped.
        """
        actors = {}
        handler = self._retired_handler.copy()
        wait = self._retired_wait.copy()
        totals = dict(self._retired)
        depth = 0
        for name, cell in self._cells.items():
            s = actors[name] = cell.stats()
            for key in totals:
                totals[key] += s[key]
            depth += s["mailbox_depth"]
            handler.merge(cell.handler_stats)
            wait.merge(cell.wait_stats)
        totals.update(
            mailbox_depth=depth,
            actors=len(actors),
            handler_time=handler.to_dict(),
            mailbox_wait=wait.to_dict(),
        )
        return {
            "node": self.name,
            "dead_letters": self.dead_letters,
            "asks_pending": len(self._pending),
            "actors": actors,
            "total": totals,
        }

    # -- delivery: the seam a herd link layer plugs into ----------------------------------------

    def deliver(
        self, target: str, message: Any, reply: Callable[[bool, Any], None] | None = None
    ) -> None:
        """Deliver one inbound envelope to the local actor ``target``: the entry point for links.

        A tell passes ``reply=None``. For an ask, ``reply(ok, value)`` is called exactly once:
        ``(True, result)``, or ``(False, (type_name, message))`` when the handler raised, the actor
        stopped, or no reply came within the node's ``ask_timeout`` — every value msgpack-able, so
        a link can send it back as it is. Overflow and stopped actors raise as for a local tell.
        """
        cell = self._cells.get(target)
        if cell is None:
            raise ActorNotFound(f"no actor {target!r} on node {self.name}")
        if reply is None:
            cell.ref.tell(message)
            return
        self._post_ask(cell, message, _CallbackReply(reply))

    def deliver_many(self, target: str, messages: list) -> int:
        """Deliver several tells, in order, to the local actor ``target`` (a TELLS envelope).

        Returns how many could not be taken (a full mailbox under ``reject``/``block`` or
        ``drop_newest``, a stopped actor): the caller counts them. Raises
        :class:`~herdrt.errors.ActorNotFound` if there is no such actor."""
        cell = self._cells.get(target)
        if cell is None:
            raise ActorNotFound(f"no actor {target!r} on node {self.name}")
        return cell.post_many(messages)

    def _post_ask(self, cell: _Cell, message: Any, proxy: _ReplyProxy) -> None:
        """Post an ask that came from outside this node; ``proxy`` stands in for the asker."""
        corr = self._next_corr
        self._next_corr = corr + 1
        self._pending[corr] = proxy
        try:
            cell.ref.tell(message, corr)  # the poster takes a correlation id
        except BaseException:
            del self._pending[corr]
            raise
        if self._ticker is None:
            self._arm_ticker()

    def resolve(self, corr: int, ok: bool, value: Any) -> None:
        """Complete this node's ask ``corr`` with an outcome that came back over a link.

        The mirror of :meth:`deliver`'s ``reply``: ``(True, result)`` answers the asker,
        ``(False, (type_name, message))`` fails it with :class:`RemoteError`. Unknown or expired
        ids are ignored (the asker already timed out).
        """
        if ok:
            fut = self._take(corr)
            if fut is not None and not fut.done():
                fut.set_result(value)
        else:
            type_name, message = value
            self._fail(corr, RemoteError(str(type_name), str(message)))

    def _route(self, name: str, node_name: str):
        """The poster ``post(message, corr=0)`` for ``name@node_name``; resolved once per ref."""
        if node_name == self.name:
            cell = self._cells.get(name)
            if cell is None:
                raise ActorNotFound(f"no actor {name!r} on node {self.name}")
            return cell.ref.tell
        return self._remote_poster(name, node_name)

    def _remote_poster(self, name: str, node_name: str):
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

    def _remote_ref(self, name: str, node_name: str) -> ActorRef:
        return ActorRef(self, name, node_name, self._route(name, node_name))

    def _local_cell(self, ref: ActorRef | str, missing_ok: bool = False) -> _Cell | None:
        if isinstance(ref, ActorRef):
            cell = ref._cell
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

    # -- asks ----------------------------------------------------------------------------------

    def _ask(self, ref: ActorRef, message: Any, timeout: float | None = None) -> asyncio.Future:
        cur = self._current
        cell = ref._cell
        if cell is not None:
            if cur is not None:
                self._check_cycle(cur, cell)
            if len(cell.mailbox) >= cell.capacity and cell.overflow is Overflow.BLOCK and cell.capacity > 0:
                return self._ask_when_room(ref, message, timeout)
        fut = self._loop.create_future()
        corr = self._next_corr
        self._next_corr = corr + 1
        pending = self._pending
        pending[corr] = fut
        try:
            ref.tell(message, corr)  # tell is the poster: post(message, corr=0)
        except BaseException:
            del pending[corr]
            raise
        if cur is not None:
            cur.waiting_on = cell
        if timeout is not None and timeout != self.ask_timeout:
            self._custom_deadline(corr, ref.path, timeout)
        elif self._ticker is None:
            self._arm_ticker()
        return fut

    async def _ask_when_room(self, ref: ActorRef, message: Any, timeout: float | None) -> Any:
        """An ask to a full mailbox under ``block``: wait for room (within the timeout), then ask."""
        limit = self.ask_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(ref._cell.wait_room(), limit)
        except asyncio.TimeoutError:
            raise AskTimeout(f"the mailbox of {ref.path} stayed full for {limit:g}s") from None
        return await self._ask(ref, message, timeout)

    # Ask timeouts. Asks with the node's default timeout cost nothing per ask: correlation ids
    # grow, so a periodic tick (every ask_timeout/4, only while asks are pending) records the
    # next id as a watermark; once a watermark is ask_timeout old, every pending id below it has
    # waited at least that long and fails. Asks expire between 1 and 1.25 timeouts. Asks with
    # their own timeout get a timer each (call_later is far dearer than the watermark).

    def _arm_ticker(self) -> None:
        self._ticker = self._loop.call_later(self.ask_timeout / 4, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = self._loop.time()
        marks = self._marks
        marks.append((now, self._next_corr))
        horizon = now - self.ask_timeout
        expired_below = 0
        while marks and marks[0][0] <= horizon:
            expired_below = marks.popleft()[1]
        pending = self._pending
        if expired_below:
            custom = self._custom
            late = []
            for corr in pending:
                if corr >= expired_below:
                    break
                if corr not in custom:
                    late.append(corr)
            for corr in late:
                fut = pending.pop(corr)
                if not fut.done():
                    fut.set_exception(AskTimeout(f"no reply within {self.ask_timeout:g}s (ask #{corr}; "
                                                 "the target may be busy, or waiting on the asker)"))
        if len(pending) > len(self._custom):
            self._arm_ticker()
        else:
            marks.clear()

    def _custom_deadline(self, corr: int, path: str, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("ask timeout must be positive")
        self._custom[corr] = self._loop.call_later(timeout, self._expire_one, corr, path, timeout)

    def _expire_one(self, corr: int, path: str, timeout: float) -> None:
        self._custom.pop(corr, None)
        fut = self._pending.pop(corr, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                AskTimeout(f"no reply from {path} within {timeout:g}s (it may be busy, or waiting on the asker)")
            )

    def _check_cycle(self, cur: _Cell, target: _Cell) -> None:
        if target is cur:
            raise AskDeadlock(
                f"actor {cur.ref.path} asked itself: it would wait for a reply only it can give; "
                "use tell, or call the method directly"
            )
        c = target
        for _ in range(64):  # follow "suspended, waiting on" links (a chain on this node)
            if c.state != _SUSPENDED:
                return
            c = c.waiting_on
            if c is None:
                return
            if c is cur:
                raise AskDeadlock(
                    f"actor {cur.ref.path} asked {target.ref.path}, which (through a chain of asks) "
                    "waits on it: that cycle would deadlock"
                )

    def _complete(self, corr: int, value: Any) -> None:
        """Answer ask ``corr`` (a remote asker's entry forwards the reply over its link)."""
        if self.strict_messages:
            check_msgpack(value, "reply")
        fut = self._take(corr)
        if fut is not None:
            try:
                fut.set_result(value)
            except asyncio.InvalidStateError:  # the asker gave up (cancelled)
                pass

    def _fail(self, corr: int, exc: BaseException) -> None:
        fut = self._take(corr)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _take(self, corr: int):
        """Ask ``corr``'s entry (its future or reply proxy), off the pending table; None if gone."""
        fut = self._pending.pop(corr, None)
        if fut is not None and self._custom:
            self._drop_custom(corr)
        return fut

    def _drop_custom(self, corr: int) -> None:
        handle = self._custom.pop(corr, None)
        if handle is not None:
            handle.cancel()

    # -- internal ------------------------------------------------------------------------------

    def _track(self, task: asyncio.Task) -> None:
        self._stop_tasks.add(task)
        task.add_done_callback(self._stop_tasks.discard)

    def _remove(self, cell: _Cell) -> None:
        if self._cells.get(cell.ref.name) is cell:
            del self._cells[cell.ref.name]
        if not (cell.messages or cell.failures or cell.dropped or cell.rejected):
            return  # nothing to fold into the node totals
        r = self._retired
        r["messages"] += cell.messages
        r["failures"] += cell.failures
        r["restarts"] += cell.restarts
        r["dropped"] += cell.dropped
        r["rejected"] += cell.rejected
        self._retired_handler.merge(cell.handler_stats)
        self._retired_wait.merge(cell.wait_stats)

    def _notify(self, watcher: Watcher, notice: Terminated) -> None:
        if isinstance(watcher, ActorRef):
            cell = watcher._cell
            if cell is not None:
                cell.post_system(notice)
            else:
                try:
                    watcher.tell(notice)
                except Exception:
                    log.warning("could not notify %s that %s stopped", watcher, notice.ref)
            return
        try:
            r = watcher(notice)
            if inspect.iscoroutine(r):
                self._track(self._loop.create_task(r))
        except Exception:
            log.exception("watcher %r of %s raised", watcher, notice.ref)

    def __repr__(self) -> str:
        return f"<Node {self.name} actors={len(self._cells)}>"


class _ReplyProxy:
    """Stands in the pending-ask table for an asker elsewhere (another node, a client, a
    service): passes the outcome on with :meth:`send` — ``(True, result)`` or
    ``(False, (type_name, message))``, msgpack-able as it is."""

    __slots__ = ("_done",)

    def __init__(self):
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._done = True
        self.send(True, value)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        if isinstance(exc, RemoteError):
            self.send(False, (exc.type_name, exc.message))
        else:
            self.send(False, (type(exc).__name__, str(exc)))

    def send(self, ok: bool, value: Any) -> None:
        raise NotImplementedError


class _CallbackReply(_ReplyProxy):
    """The outcome goes to ``reply(ok, value)`` (:meth:`Node.deliver`)."""

    __slots__ = ("_reply",)

    def __init__(self, reply: Callable[[bool, Any], None]):
        self._done = False
        self._reply = reply

    def send(self, ok: bool, value: Any) -> None:
        self._reply(ok, value)


def run(main: Callable[[], Coroutine[Any, Any, Any]] | Coroutine[Any, Any, Any], *, use_uvloop: bool = True) -> Any:
    """Run ``main`` (a coroutine function or coroutine) to completion on uvloop (or stdlib asyncio)."""
    coro = main() if callable(main) else main
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
