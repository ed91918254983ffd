"""The cell of one actor: its mailbox, the batch that runs its handler, async handlers that have
to wait, its lifecycle hooks, stopping, and its timers. (Supervision, applied when a handler
raises, is :mod:`herdrt.runtime.supervision`; asks are :mod:`herdrt.runtime.asks`.)

An ``async def`` handler is stepped eagerly in the batch; if it really waits (awaits a pending
future), its coroutine is moved into one asyncio task that drives it to the end, and the cell
takes no other message until then.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import types
import weakref
from collections.abc import Callable
from functools import partial
from itertools import repeat
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeAlias

from ..core import OnlineStats, QuantileSketch
from ..errors import ActorError, ActorStopped, MailboxFull
from .actor import Actor, Deferred, Terminated, Timer, bind
from .mailbox import Mailbox, Overflow
from .ref import ActorRef, cell_of
from .strict import check_msgpack
from .supervision import handle_failure

if TYPE_CHECKING:
    from .node import Node
    from .scheduler import Scheduler

__all__ = ["Cell", "Context", "Watcher", "notify", "IDLE", "QUEUED", "RUNNING", "SUSPENDED", "STOPPING", "STOPPED"]

log = logging.getLogger("herdrt.actor")

# Cell states.
IDLE, QUEUED, RUNNING, SUSPENDED, STOPPING, STOPPED = range(6)

_HOOK = object()  # stands for "a lifecycle hook" where a message is expected
_FLUSH_AT = 256  # buffered stats samples before folding them into OnlineStats
_ASYNC_CLASSES: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()

#: Who is told when an actor stops: an ActorRef, or a plain or async callable.
Watcher: TypeAlias = ActorRef | Callable[[Terminated], Any]


def _receive_is_async(cls: type[Actor]) -> bool:
    flag = _ASYNC_CLASSES.get(cls)
    if flag is None:
        flag = _ASYNC_CLASSES[cls] = inspect.iscoroutinefunction(cls.receive)
    return flag


class _Yield:
    """Re-yields what a hand-stepped coroutine yielded, so the task driving it waits for it."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield self.value


class Context:
    """What a handler knows about the message it is handling; valid until the handler returns.

    ``ctx.reply(value)`` answers an ask (a handler's return value is the reply otherwise);
    ``ctx.defer()`` takes the answer along to give it later, from anywhere (the actor goes on
    with other messages meanwhile); ``ctx.is_ask`` says whether anyone waits for a reply.
    """

    __slots__ = ("_cell", "_corr")

    def __init__(self, cell: Cell):
        self._cell = cell
        self._corr = 0

    @property
    def ref(self) -> ActorRef:
        """The ref of the actor handling the message."""
        return self._cell.ref

    @property
    def node(self) -> Node:
        return self._cell.node

    @property
    def is_ask(self) -> bool:
        """True while the message being handled is an unanswered ask."""
        return self._corr != 0

    def reply(self, value: Any) -> None:
        """Answer the ask being handled (once; later replies and replies to tells are ignored)."""
        corr = self._corr
        if corr:
            self._corr = 0
            self._cell.asks.complete(corr, value)

    def defer(self) -> Deferred:
        """Answer the ask being handled later: returns a :class:`Deferred` to answer it with,
        and the handler's return value is then not the reply. The asker's timeout still applies.
        Raises :class:`~herdrt.errors.ActorError` when there is no unanswered ask to defer."""
        corr = self._corr
        if not corr:
            raise ActorError(
                f"{self._cell.ref.path}: defer() needs an unanswered ask (this is a tell, or it was answered)"
            )
        self._corr = 0
        return Deferred(self._cell.asks, corr)


class Cell:
    """Everything the runtime keeps for one actor; the actor instance itself is replaceable.

    Internal to the runtime (the layers above use the :class:`~herdrt.runtime.node.Node` seams),
    which is why its attributes are plain: the node, the actor's modules and the scheduler share them."""

    __slots__ = (
        "node", "sched", "asks", "ref", "cls", "args", "kwargs", "actor", "receive", "is_async", "ctx",
        "mailbox", "queue", "state", "ready_at", "sys", "task", "timers", "watchers", "handler_stats",
        "handler_sketch", "wait_stats", "hbuf", "wbuf", "messages", "busy", "failures", "restarts", "restart_times",
        "stop_reason", "terminating", "done", "waiting_on", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        node: Node,
        cls: type[Actor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        capacity: int | None,
        overflow: Overflow,
    ):
        self.node = node
        self.sched = node.scheduler
        self.asks = node.asks
        post = self.post_checked if node.strict_messages else self.post
        self.ref = ActorRef(node, name, node.name, post, self)
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.actor: Actor | None = None  # None until instantiate() and once stopped
        # The bound ``receive`` of ``actor``: the hot loop calls it without a check, and it is
        # only called while the actor runs (None before instantiate() and once stopped).
        self.receive: Callable[[Any, Context], Any] = None  # type: ignore[assignment]  # late-bound
        self.is_async = _receive_is_async(cls)
        self.ctx = Context(self)
        self.mailbox = Mailbox(capacity, overflow, self.ref.path)
        self.queue = self.mailbox.queue  # the hot paths append and pop the deque itself
        self.state = IDLE
        self.ready_at = 0.0
        # Rarely used containers start as a shared empty tuple and are made on first use: a
        # spawn must stay cheap (10^5 actors).
        self.sys: list[tuple[str, Exception | None]] | tuple[()] = ()  # hooks to run: ("start"|"restart", exc)
        self.task: asyncio.Task[None] | None = None
        self.timers: set[Timer] | tuple[()] = ()
        self.watchers: list[Watcher] | tuple[()] = ()
        self.handler_stats = OnlineStats()
        # Handler-time quantiles: made on the first flush (an actor that never ran costs nothing),
        # shared by a family of actors (node.handler_sketch): a million keyed actors, one sketch.
        self.handler_sketch: QuantileSketch | None = None
        self.wait_stats = OnlineStats()
        self.hbuf: list[float] = []  # buffered samples, folded in by flush_stats
        self.wbuf: list[float] = []
        self.messages = self.failures = self.restarts = 0
        self.busy = 0.0  # seconds spent in the handler, all messages
        self.restart_times: collections.deque[float] | None = None
        self.stop_reason: str | None = None
        self.terminating = False
        self.done: asyncio.Future[None] | None = None
        self.waiting_on: Cell | None = None

    # -- construction ------------------------------------------------------------------------------

    def instantiate(self) -> None:
        """Build a fresh actor instance (``__init__`` sees ``self.ref`` and ``self.node``)."""
        cls = self.cls
        actor = cls.__new__(cls)
        bind(actor, self)
        cls.__init__(actor, *self.args, **self.kwargs)
        self.actor = actor
        self.receive = actor.receive

    def start(self) -> None:
        actor = self.actor
        assert actor is not None  # spawn instantiated it
        if type(actor).on_start is not Actor.on_start:
            self.sys = [("start", None)]
            self.make_runnable()

    def make_runnable(self) -> None:
        if self.state == IDLE:
            self.state = QUEUED
            self.ready_at = perf_counter()
            self.sched.enqueue(self)

    # -- delivery ----------------------------------------------------------------------------------

    def post(self, message: Any, corr: int = 0) -> None:
        """Append one message (``ref.tell`` is this bound method); the hot path."""
        q = self.queue
        if len(q) >= self.mailbox.capacity:  # a stopped cell's mailbox has capacity -1: always "full"
            return self._overflow(message, corr)
        q.append((message, corr))
        if self.state == IDLE:
            self.state = QUEUED
            sched = self.sched
            self.ready_at = sched.now or perf_counter()
            sched.runq.append(self)
            if not sched.armed:
                sched.armed = True
                sched.loop.call_soon(sched.drain)

    def post_inbound(self, message: Any) -> None:
        """``ref.tell`` for a tell that came from elsewhere (its sender is not here to catch the
        error): one that cannot be posted is also recorded as a dead letter."""
        try:
            self.ref.tell(message)
        except (MailboxFull, ActorStopped) as exc:
            self._dead(message, "mailbox_full" if isinstance(exc, MailboxFull) else "actor_stopped")
            raise

    def post_many(self, messages: list[Any], origin: str | None = None, credited: bool = False) -> int:
        """Append several tells in order (a TELLS envelope from ``origin``, another node); returns
        how many could not be posted (a full mailbox, a stopped actor), each recorded as a dead
        letter. ``credited``: taken past the capacity (the sender's credit bounds them)."""
        q = self.queue
        capacity = self.mailbox.capacity
        if len(q) + len(messages) > capacity and not (credited and capacity >= 0):
            lost = 0
            for message in messages:
                try:
                    self.post(message)
                except MailboxFull:
                    lost += 1
                    self._dead(message, "mailbox_full", origin)
                except ActorStopped:
                    lost += 1
                    self._dead(message, "actor_stopped", origin)
            return lost
        q.extend(zip(messages, repeat(0)))
        if q:
            self.make_runnable()
        return 0

    def post_checked(self, message: Any, corr: int = 0) -> None:
        """``post`` behind the strict-mode msgpack check."""
        check_msgpack(message)
        self.post(message, corr)

    def post_system(self, message: Any) -> None:
        """Deliver a runtime notice (e.g. ``Terminated``): ignores capacity, skips strict mode."""
        if self.mailbox.capacity >= 0:
            self.queue.append((message, 0))
            self.make_runnable()

    def post_timer(self, message: Any) -> None:
        try:
            self.post(message, 0)
        except (MailboxFull, ActorStopped) as exc:
            self._dead(message, "mailbox_full" if isinstance(exc, MailboxFull) else "actor_stopped")

    def _overflow(self, message: Any, corr: int) -> None:
        queue = self.queue
        oldest = queue[0][0] if queue else None  # what drop_oldest drops, if it was a tell
        dropped = self.mailbox.refuse(corr)  # raises MailboxFull or ActorStopped per the policy
        if dropped:  # drop_oldest made room
            if dropped > 0:
                self.asks.fail(
                    dropped, MailboxFull(f"ask dropped from the full mailbox of {self.ref.path} (drop_oldest)")
                )
            else:
                self._dead(oldest, "dropped_oldest")
            self.post(message, corr)
        else:  # drop_newest dropped this tell
            self._dead(message, "dropped_newest")

    def _dead(self, message: Any, reason: str, origin: str | None = None) -> None:
        self.node.dead_letters.record(self.ref.path, reason, message, 1, origin)

    async def send(self, message: Any) -> None:
        await self.mailbox.wait_room(self.sched.loop)
        self.ref.tell(message)

    # -- running -----------------------------------------------------------------------------------

    def run(self, budget: int, t0: float) -> float:
        """Handle up to ``budget`` messages; called by the scheduler. Returns the end time."""
        if self.state != QUEUED:  # stopped while waiting in the run queue
            return t0
        sched = self.sched
        self.state = RUNNING
        self.wbuf.append(t0 - self.ready_at)
        sched.current = self
        n = 0
        try:
            if self.sys and not self._run_hooks():
                if self.state == RUNNING:
                    self._after_message(t0)
                return perf_counter()
            if self.is_async:
                n = self._batch_async(budget)
            else:
                # The hot loop, inlined: one message at a time, no task, no future.
                mb = self.queue
                ctx = self.ctx
                recv = self.receive
                complete = self.asks.complete
                while mb and n < budget:
                    message, corr = mb.popleft()
                    n += 1
                    try:
                        if corr:
                            ctx._corr = corr
                            result = recv(message, ctx)
                            if ctx._corr:
                                ctx._corr = 0
                                complete(corr, result)
                        else:
                            recv(message, ctx)
                    except Exception as exc:
                        ctx._corr = 0
                        if not handle_failure(self, exc, message, corr):
                            break
                        recv = self.receive  # a restart put a fresh instance in place
        finally:
            sched.current = None
        t1 = perf_counter()
        if n:
            self.messages += n
            dt = t1 - t0
            self.busy += dt
            hbuf = self.hbuf
            hbuf.append(dt / n)
            if len(hbuf) >= _FLUSH_AT:
                self.flush_stats()
        if self.state == RUNNING:
            if self.stop_reason is not None or self.mailbox.waiters or self.sys:
                self._after_message(t1)
            elif self.queue:
                self.state = QUEUED  # budget spent: to the back of the run queue
                self.ready_at = t1
                self.sched.runq.append(self)
            else:
                self.state = IDLE
        return t1

    def _batch_async(self, budget: int) -> int:
        mb = self.queue
        ctx = self.ctx
        complete = self.asks.complete
        n = 0
        while mb and n < budget:
            message, corr = mb.popleft()
            n += 1
            try:
                ctx._corr = corr
                coro = self.receive(message, ctx)
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:
                    if ctx._corr:
                        complete(corr, stop.value)
                        ctx._corr = 0
                    continue
                self._suspend(coro, yielded, message, corr)
                return n
            except Exception as exc:
                ctx._corr = 0
                if not handle_failure(self, exc, message, corr):
                    break
        return n

    def _run_hooks(self) -> bool:
        """Run queued lifecycle hooks; False if the cell cannot go on to messages now."""
        while self.sys:
            kind, exc = self.sys.pop(0)
            try:
                actor = self.actor
                assert actor is not None  # only a cell with an instance is run
                r = actor.on_start() if exc is None else actor.on_restart(exc)  # exc is None for "start"
                if isinstance(r, types.CoroutineType):
                    try:
                        yielded = r.send(None)
                    except StopIteration:
                        continue
                    self._suspend(r, yielded, _HOOK, 0)
                    return False
            except Exception as hook_exc:
                log.exception("actor %s: on_%s failed; stopping it", self.ref.path, kind)
                self.request_stop(f"on_{kind} failed: {type(hook_exc).__name__}: {hook_exc}")
                return False
        return True

    def _suspend(self, coro, yielded, message, corr: int) -> None:
        self.state = SUSPENDED
        task = self.task = self.sched.loop.create_task(self._resume(coro, yielded, message, corr))
        task.add_done_callback(partial(self._resume_cancelled, coro, corr))

    def _resume_cancelled(self, coro, corr: int, task: asyncio.Task) -> None:
        # A task cancelled before its first step never runs _resume's body (a stop right after
        # the handler suspended): close the handler and fail its ask here instead.
        if task.cancelled() and self.task is task:
            coro.close()
            self.task = None
            self.waiting_on = None
            if self.ctx._corr:
                self.ctx._corr = 0
                self.asks.fail(corr, ActorStopped(f"actor {self.ref.path} stopped while handling the ask"))

    async def _resume(self, coro, yielded, message, corr: int) -> None:
        """Drive a handler (or hook) coroutine that had to wait, to its end."""
        sched = self.sched
        ctx = self.ctx
        started = perf_counter()
        failure = None
        try:
            while True:
                thrown = None
                try:
                    await _Yield(yielded)
                except BaseException as exc:  # the awaited future failed, or we were cancelled
                    thrown = exc
                prev = sched.current
                sched.current = self
                self.waiting_on = None
                try:
                    yielded = coro.send(None) if thrown is None else coro.throw(thrown)
                finally:
                    sched.current = prev
        except StopIteration as stop:
            if ctx._corr:
                try:
                    self.asks.complete(corr, stop.value)
                except Exception as exc:  # the reply failed the strict check
                    failure = exc
                ctx._corr = 0
        except asyncio.CancelledError:
            if ctx._corr:
                ctx._corr = 0
                self.asks.fail(corr, ActorStopped(f"actor {self.ref.path} stopped while handling the ask"))
        except Exception as exc:
            failure = exc
        finally:
            coro.close()
        self.task = None
        self.waiting_on = None
        if message is not _HOOK:  # (the batch that started it already counted the message)
            self.hbuf.append(perf_counter() - started)
        if failure is not None:
            if message is _HOOK:
                log.error("actor %s: lifecycle hook failed; stopping it", self.ref.path, exc_info=failure)
                self.request_stop(f"hook failed: {type(failure).__name__}: {failure}")
            else:
                ctx._corr = 0
                handle_failure(self, failure, message, corr)
        if self.state == SUSPENDED:
            self.state = RUNNING
            self._after_message(perf_counter())

    def _after_message(self, now: float) -> None:
        """The cell (RUNNING) finished a batch or a suspended handler: stop, requeue or idle."""
        if self.mailbox.waiters:
            self.mailbox.wake_senders()
        if self.stop_reason is not None:
            self.state = STOPPING
            self._begin_terminate()
        elif self.queue or self.sys:
            self.state = QUEUED
            self.ready_at = now
            self.sched.enqueue(self)
        else:
            self.state = IDLE

    # -- stopping ----------------------------------------------------------------------------------

    def request_stop(self, reason: str, *, begin: bool = True) -> None:
        """Refuse new messages, fail what is queued, and stop once no handler is running
        (``begin=False``: the caller runs ``_terminate`` itself)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        for timer in list(self.timers):
            timer.cancel()
        asks, tells = self.mailbox.close(reason)
        for corr in asks:
            self.asks.fail(corr, ActorStopped(f"actor {self.ref.path} stopped before handling the ask ({reason})"))
        for message in tells:
            self._dead(message, "actor_stopped")
        if self.state in (IDLE, QUEUED):
            self.state = STOPPING
            if begin:
                self._begin_terminate()
        # RUNNING or SUSPENDED: _after_message starts the stop when the handler is done.

    def _begin_terminate(self) -> None:
        if not self.terminating:
            self.terminating = True
            self.sched.track(self.sched.loop.create_task(self._terminate()))

    async def stop(self, reason: str) -> None:
        """Stop and wait until ``on_stop`` has run (called from outside this actor)."""
        if self.state == RUNNING or (self.state == SUSPENDED and self.sched.current is self):
            raise ActorError(f"actor {self.ref.path} cannot await its own stop; call self.stop()")
        if self.state == STOPPED:
            return
        self.request_stop(reason, begin=False)
        if self.state == SUSPENDED and self.task is not None:
            self.task.cancel()  # the handler in progress ends with CancelledError
        if not self.terminating:
            self.terminating = True
            await self._terminate()
        elif self.state != STOPPED:
            if self.done is None:
                self.done = self.sched.loop.create_future()
            await asyncio.shield(self.done)

    async def _terminate(self) -> None:
        task = self.task
        me = asyncio.current_task()
        if task is not None and task is not me:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if me is not None and me.cancelling():
                    raise  # we are being cancelled ourselves, not just the handler task
        self.state = STOPPING
        actor = self.actor
        if actor is not None:
            try:
                r = actor.on_stop()
                if isinstance(r, types.CoroutineType):
                    await r
            except Exception:
                log.exception("actor %s: on_stop failed", self.ref.path)
        self.mailbox.fail_senders()
        self.state = STOPPED
        self.flush_stats()
        self.node.retire(self)
        watchers, self.watchers = self.watchers, ()
        if watchers:
            notice = Terminated(self.ref, self.stop_reason or "stopped")
            for watcher in watchers:
                notify(watcher, notice, self.sched)
        self.actor = None
        self.receive = None  # type: ignore[assignment]  # drop the instance; never called once stopped
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- timers ------------------------------------------------------------------------------------

    def add_timer(self, delay: float, message: Any, interval: float | None) -> Timer:
        if self.mailbox.capacity < 0:
            raise ActorStopped(f"actor {self.ref.path} is stopped")
        timer = Timer(self, message, interval)
        timer.start(self.sched.loop, max(0.0, delay))
        timers = self.timers
        if not timers:
            timers = self.timers = set()
        timers.add(timer)
        return timer

    # -- statistics --------------------------------------------------------------------------------

    def flush_stats(self) -> None:
        if self.hbuf:
            self.handler_stats.update_many(self.hbuf)
            sketch = self.handler_sketch
            if sketch is None:
                sketch = self.handler_sketch = self.node.handler_sketch(self.ref.name)
            sketch.add_many(self.hbuf)
            self.hbuf.clear()
        if self.wbuf:
            self.wait_stats.update_many(self.wbuf)
            self.wbuf.clear()

    def stats(self) -> dict[str, Any]:
        self.flush_stats()
        return {
            "name": self.ref.name,
            "messages": self.messages,
            "busy": self.busy,
            "failures": self.failures,
            "restarts": self.restarts,
            "dropped": self.mailbox.dropped,
            "rejected": self.mailbox.rejected,
            "mailbox_depth": len(self.queue),
            "mailbox_size": max(self.mailbox.capacity, 0),
            "handler_time": self.handler_stats.to_dict(),
            "handler_quantiles": quantiles(self.handler_sketch),
            "mailbox_wait": self.wait_stats.to_dict(),
        }


def quantiles(sketch: QuantileSketch | None) -> dict[str, float | None]:
    """p50, p90 and p99 of ``sketch`` (None while it holds no sample), msgpack-ready."""
    if sketch is None or not sketch.count:
        return {"p50": None, "p90": None, "p99": None}
    return {"p50": sketch.quantile(0.5), "p90": sketch.quantile(0.9), "p99": sketch.quantile(0.99)}


def notify(watcher: Watcher, notice: Terminated, sched: Scheduler) -> None:
    """Tell ``watcher`` (an ActorRef, or a plain or async callable) that an actor stopped."""
    if isinstance(watcher, ActorRef):
        cell = cell_of(watcher)
        if cell is not None:
            cell.post_system(notice)
            return
        try:
            watcher.tell(notice)
        except Exception:
            log.warning("could not notify %s that %s stopped", watcher, notice.ref)
        return
    try:
        r = watcher(notice)
        if inspect.iscoroutine(r):
            sched.track(sched.loop.create_task(r))
    except Exception:
        log.exception("watcher %r of %s raised", watcher, notice.ref)
