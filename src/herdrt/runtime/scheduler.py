"""The batch scheduler and the per-actor cell (mailbox, batch runner, supervision, stop).

How a message moves: ``ref.tell`` appends ``(message, corr)`` to the cell's deque. If the cell was
idle it goes on the scheduler's run queue, and only when that queue goes from empty to non-empty
is one ``loop.call_soon(drain)`` issued. ``drain`` pops cells and lets each handle up to
``batch_budget`` messages in a plain loop — no task and no future per message — and hands the loop
back after ``time_slice`` seconds so I/O and other tasks run. A cell with messages left goes to
the back of the run queue, so a flooded actor cannot starve the others.

An ``async def`` handler is stepped eagerly in the batch; if it really waits (awaits a pending
future), its coroutine is moved into one asyncio task that drives it to the end, and the cell
takes no other message until then.

Statistics cost about two ``perf_counter`` calls per batch, none per message. The mailbox wait
is the time from the cell becoming runnable to its batch starting (the wait of the batch's oldest
message; a message posted by a handler is stamped with the start of that handler's batch, so no
clock is read per tell inside a drain). Handler time is sampled as the batch's mean time per
message (exact for batches of one, and for async handlers that suspend). Samples are buffered in
lists and folded into ``OnlineStats`` with ``update_many`` every 256 batches or on ``stats()``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import types
import weakref
from functools import partial
from itertools import repeat
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .actor import Actor, Context, Supervision, Terminated, Timer, _check_policy
from ..core import OnlineStats
from ..errors import ActorError, ActorStopped, MailboxFull, RemoteError
from .mailbox import Overflow, check_msgpack
from .ref import ActorRef

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("herdrt.actor")

# Cell states.
_IDLE, _QUEUED, _RUNNING, _SUSPENDED, _STOPPING, _STOPPED = range(6)

_HOOK = object()  # stands for "a lifecycle hook" where a message is expected
_FLUSH_AT = 256  # buffered stats samples before folding them into OnlineStats
_ASYNC_CLASSES: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _receive_is_async(cls: type) -> bool:
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


class _Scheduler:
    """The run queue of one node, drained in batches from ``loop.call_soon`` callbacks."""

    __slots__ = ("loop", "runq", "armed", "batch_budget", "time_slice", "closed", "now")

    def __init__(self, loop: asyncio.AbstractEventLoop, batch_budget: int, time_slice: float):
        self.loop = loop
        self.runq: collections.deque[_Cell] = collections.deque()
        self.armed = False  # a drain is scheduled (cells arm it only on empty -> non-empty)
        self.batch_budget = batch_budget
        self.time_slice = time_slice
        self.closed = False
        # While draining: the start time of the batch running now (a message posted by a handler
        # is stamped with it instead of paying for another clock read); 0.0 outside a drain.
        self.now = 0.0

    def enqueue(self, cell: _Cell) -> None:
        self.runq.append(cell)
        if not self.armed:
            self.armed = True
            self.loop.call_soon(self.drain)

    def drain(self) -> None:
        if self.closed:
            self.runq.clear()
            return
        self._run()
        if self.runq:
            self.loop.call_soon(self.drain)  # let I/O and other tasks in, then go on
        else:
            self.armed = False

    def hold(self) -> bool:
        """Start handing a read's worth of arrivals to mailboxes: until :meth:`release`, posts
        schedule no drain (release runs them). Returns what :meth:`release` needs."""
        armed = self.armed
        self.armed = True
        return armed

    def release(self, armed: bool) -> None:
        """Run what the arrivals made runnable now, in the I/O callback that brought them,
        instead of a loop turn later: a request is handled and its reply queued before the read
        callback returns, so the link writes it at once. A drain is scheduled only for what the
        time slice leaves."""
        if self.closed:
            return
        if self.runq and self.now == 0.0:  # now != 0.0: called from inside a drain
            self._run()
        if not armed:
            if self.runq:
                self.loop.call_soon(self.drain)
            else:
                self.armed = False

    def _run(self) -> None:
        runq = self.runq
        budget = self.batch_budget
        t = perf_counter()
        end = t + self.time_slice
        while runq:
            self.now = t
            t = runq.popleft().run(budget, t)
            if t >= end:
                break
        self.now = 0.0

    def close(self) -> None:
        self.closed = True
        self.runq.clear()


class _Cell:
    """Everything the runtime keeps for one actor; the actor instance itself is replaceable."""

    __slots__ = (
        "node", "sched", "ref", "cls", "args", "kwargs", "actor", "receive", "is_async", "ctx",
        "mailbox", "capacity", "overflow", "state", "ready_at", "sys", "task", "timers", "watchers",
        "handler_stats", "wait_stats", "hbuf", "wbuf", "messages", "failures", "restarts", "dropped",
        "rejected", "restart_times", "stop_reason", "terminating", "done", "space_waiters",
        "waiting_on", "__weakref__",
    )  # fmt: skip

    def __init__(self, node: Node, cls: type, args: tuple, kwargs: dict, name: str, capacity: int, overflow: Overflow):
        self.node = node
        self.sched = node._sched
        post = self.post_checked if node.strict_messages else self.post
        self.ref = ActorRef(node, name, node.name, post, self)
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.actor: Actor | None = None
        self.receive = None
        self.is_async = _receive_is_async(cls)
        self.ctx = Context(self)
        self.mailbox: collections.deque = collections.deque()
        self.capacity = capacity
        self.overflow = overflow
        self.state = _IDLE
        self.ready_at = 0.0
        # Rarely used containers start as a shared empty tuple and are made on first use: a
        # spawn must stay cheap (10^5 actors).
        self.sys: list | tuple = ()
        self.task: asyncio.Task | None = None
        self.timers: set[Timer] | tuple = ()
        self.watchers: list | tuple = ()
        self.handler_stats = OnlineStats()
        self.wait_stats = OnlineStats()
        self.hbuf: list[float] = []  # buffered samples, folded in by flush_stats
        self.wbuf: list[float] = []
        self.messages = self.failures = self.restarts = self.dropped = self.rejected = 0
        self.restart_times: collections.deque[float] | None = None
        self.stop_reason: str | None = None
        self.terminating = False
        self.done: asyncio.Future | None = None
        self.space_waiters: collections.deque[asyncio.Future] | tuple = ()
        self.waiting_on: _Cell | None = None

    # -- construction ------------------------------------------------------------------------------

    def instantiate(self) -> None:
        """Build a fresh actor instance (``__init__`` sees ``self.ref`` and ``self.node``)."""
        cls = self.cls
        actor = cls.__new__(cls)
        actor._cell = self
        actor.__init__(*self.args, **self.kwargs)
        self.actor = actor
        self.receive = actor.receive

    def start(self) -> None:
        if type(self.actor).on_start is not Actor.on_start:
            self.sys = [("start", None)]
            self.make_runnable()

    def make_runnable(self) -> None:
        if self.state == _IDLE:
            self.state = _QUEUED
            self.ready_at = perf_counter()
            self.sched.enqueue(self)

    # -- delivery ----------------------------------------------------------------------------------

    def post(self, message: Any, corr: int = 0) -> None:
        """Append one message (``ref.tell`` is this bound method); the hot path."""
        mb = self.mailbox
        if len(mb) >= self.capacity:  # a stopped cell has capacity -1: always "full"
            return self._overflow(message, corr)
        mb.append((message, corr))
        if self.state == _IDLE:
            self.state = _QUEUED
            sched = self.sched
            self.ready_at = sched.now or perf_counter()
            sched.runq.append(self)
            if not sched.armed:
                sched.armed = True
                sched.loop.call_soon(sched.drain)

    def post_many(self, messages: list) -> int:
        """Append several tells in order (a TELLS envelope); returns how many could not be
        posted (full mailbox under ``reject``/``block``, ``drop_newest``, or a stopped actor)."""
        mb = self.mailbox
        if len(mb) + len(messages) > self.capacity:
            lost = 0
            for message in messages:
                try:
                    self.post(message)
                except (MailboxFull, ActorStopped):
                    lost += 1
            return lost
        mb.extend(zip(messages, repeat(0)))
        if mb:
            self.make_runnable()
        return 0

    def post_checked(self, message: Any, corr: int = 0) -> None:
        """``post`` behind the strict-mode msgpack check."""
        check_msgpack(message)
        self.post(message, corr)

    def post_system(self, message: Any) -> None:
        """Deliver a runtime notice (e.g. ``Terminated``): ignores capacity, skips strict mode."""
        if self.capacity >= 0:
            self.mailbox.append((message, 0))
            self.make_runnable()

    def post_timer(self, message: Any) -> None:
        try:
            self.post(message, 0)
        except (MailboxFull, ActorStopped) as exc:
            log.warning("actor %s: timer message %r not delivered: %s", self.ref.path, message, exc)

    def _overflow(self, message: Any, corr: int) -> None:
        if self.capacity < 0:
            raise ActorStopped(f"actor {self.ref.path} is stopped ({self.stop_reason})")
        policy = self.overflow
        if policy is Overflow.DROP_OLDEST:
            _, old_corr = self.mailbox.popleft()
            self.dropped += 1
            if old_corr:
                self.node._fail(old_corr, MailboxFull(f"ask dropped from the full mailbox of {self.ref.path} (drop_oldest)"))
            self.post(message, corr)
            return
        if policy is Overflow.DROP_NEWEST:
            self.dropped += 1
            if corr:
                raise MailboxFull(f"mailbox of {self.ref.path} is full ({self.capacity}); ask dropped (drop_newest)")
            return
        self.rejected += 1
        raise MailboxFull(f"mailbox of {self.ref.path} is full ({self.capacity}, policy {policy.value})")

    async def send(self, message: Any) -> None:
        await self.wait_room()
        self.ref.tell(message)

    async def wait_room(self) -> None:
        """Wait while the mailbox is full under the ``block`` policy (others apply at post)."""
        while len(self.mailbox) >= self.capacity:
            if self.capacity < 0:
                raise ActorStopped(f"actor {self.ref.path} is stopped ({self.stop_reason})")
            if self.overflow is not Overflow.BLOCK:
                return
            waiter = self.node._loop.create_future()
            if not self.space_waiters:
                self.space_waiters = collections.deque()
            self.space_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.done():
                    waiter.cancel()
                raise

    def _wake_senders(self) -> None:
        waiters = self.space_waiters
        room = self.capacity - len(self.mailbox)
        while waiters and room > 0:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                room -= 1

    # -- running -----------------------------------------------------------------------------------

    def run(self, budget: int, t0: float) -> float:
        """Handle up to ``budget`` messages; called by the scheduler. Returns the end time."""
        if self.state != _QUEUED:  # stopped while waiting in the run queue
            return t0
        node = self.node
        self.state = _RUNNING
        self.wbuf.append(t0 - self.ready_at)
        node._current = self
        n = 0
        try:
            if self.sys and not self._run_hooks():
                if self.state == _RUNNING:
                    self._after_message(t0)
                return perf_counter()
            if self.is_async:
                n = self._batch_async(budget)
            else:
                # The hot loop, inlined: one message at a time, no task, no future.
                mb = self.mailbox
                ctx = self.ctx
                recv = self.receive
                complete = node._complete
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
                        if not self._failed(exc, message, corr):
                            break
                        recv = self.receive  # a restart put a fresh instance in place
        finally:
            node._current = None
        t1 = perf_counter()
        if n:
            self.messages += n
            hbuf = self.hbuf
            hbuf.append((t1 - t0) / n)
            if len(hbuf) >= _FLUSH_AT:
                self.flush_stats()
        if self.state == _RUNNING:
            if self.stop_reason is not None or self.space_waiters or self.sys:
                self._after_message(t1)
            elif self.mailbox:
                self.state = _QUEUED  # budget spent: to the back of the run queue
                self.ready_at = t1
                self.sched.runq.append(self)
            else:
                self.state = _IDLE
        return t1

    def _batch_async(self, budget: int) -> int:
        mb = self.mailbox
        ctx = self.ctx
        node = self.node
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
                        node._complete(corr, stop.value)
                        ctx._corr = 0
                    continue
                self._suspend(coro, yielded, message, corr)
                return n
            except Exception as exc:
                if not self._failed(exc, message, corr):
                    break
        return n

    def _run_hooks(self) -> bool:
        """Run queued lifecycle hooks; False if the cell cannot go on to messages now."""
        while self.sys:
            kind, exc = self.sys.pop(0)
            try:
                r = self.actor.on_start() if kind == "start" else self.actor.on_restart(exc)
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
        self.state = _SUSPENDED
        task = self.task = self.node._loop.create_task(self._resume(coro, yielded, message, corr))
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
                self.node._fail(corr, ActorStopped(f"actor {self.ref.path} stopped while handling the ask"))

    async def _resume(self, coro, yielded, message, corr: int) -> None:
        """Drive a handler (or hook) coroutine that had to wait, to its end."""
        node = self.node
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
                prev = node._current
                node._current = self
                self.waiting_on = None
                try:
                    yielded = coro.send(None) if thrown is None else coro.throw(thrown)
                finally:
                    node._current = prev
        except StopIteration as stop:
            if ctx._corr:
                try:
                    node._complete(corr, stop.value)
                except Exception as exc:  # the reply failed the strict check
                    failure = exc
                ctx._corr = 0
        except asyncio.CancelledError:
            if ctx._corr:
                ctx._corr = 0
                node._fail(corr, ActorStopped(f"actor {self.ref.path} stopped while handling the ask"))
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
                self._failed(failure, message, corr)
        if self.state == _SUSPENDED:
            self.state = _RUNNING
            self._after_message(perf_counter())

    def _after_message(self, now: float) -> None:
        """The cell (RUNNING) finished a batch or a suspended handler: stop, requeue or idle."""
        if self.space_waiters:
            self._wake_senders()
        if self.stop_reason is not None:
            self.state = _STOPPING
            self._begin_terminate()
        elif self.mailbox or self.sys:
            self.state = _QUEUED
            self.ready_at = now
            self.sched.enqueue(self)
        else:
            self.state = _IDLE

    # -- supervision -------------------------------------------------------------------------------

    def _failed(self, exc: Exception, message: Any, corr: int) -> bool:
        """Apply supervision after a handler raised; True if the batch may go on."""
        self.failures += 1
        self.ctx._corr = 0
        path = self.ref.path
        log.error("actor %s failed handling %.200r", path, message, exc_info=exc)
        policy = Supervision.RESTART
        actor = self.actor
        try:
            policy = _check_policy(actor.supervision)
            override = actor.on_failure(exc)
            if override is not None:
                policy = _check_policy(override)
        except Exception:
            log.exception("actor %s: on_failure raised; applying the %s policy", path, policy.value)
        retry = policy is Supervision.RESTART and actor.retry_failed_message
        if corr and not retry:
            self.node._fail(corr, RemoteError(type(exc).__name__, str(exc)))
        what = f"{type(exc).__name__}: {exc}"
        if policy is Supervision.RESUME:
            return True
        if policy is Supervision.STOP:
            self.request_stop(f"stopped after failure: {what}")
            return False
        now = perf_counter()
        times = self.restart_times
        if times is None:
            times = self.restart_times = collections.deque()
        times.append(now)
        while times and times[0] < now - actor.restart_window:
            times.popleft()
        if len(times) > actor.max_restarts:
            if corr and retry:
                self.node._fail(corr, RemoteError(type(exc).__name__, str(exc)))
            log.error("actor %s: more than %d restarts in %ss; stopping it", path, actor.max_restarts, actor.restart_window)
            self.request_stop(f"too many restarts: {what}")
            return False
        if retry:
            self.mailbox.appendleft((message, corr))
        for timer in list(self.timers):
            timer.cancel()
        self.restarts += 1
        try:
            self.instantiate()
        except Exception as init_exc:
            log.exception("actor %s: __init__ failed on restart; stopping it", path)
            self.request_stop(f"restart failed: {type(init_exc).__name__}: {init_exc}")
            return False
        if not self.sys:
            self.sys = []
        self.sys.append(("restart", exc))
        return False  # let the run loop call on_restart before the next message

    # -- stopping ----------------------------------------------------------------------------------

    def request_stop(self, reason: str, *, begin: bool = True) -> None:
        """Refuse new messages, fail what is queued, and stop once no handler is running
        (``begin=False``: the caller runs ``_terminate`` itself)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.capacity = -1
        for timer in list(self.timers):
            timer.cancel()
        node = self.node
        undelivered = 0
        mb = self.mailbox
        while mb:
            _, corr = mb.popleft()
            if corr:
                node._fail(corr, ActorStopped(f"actor {self.ref.path} stopped before handling the ask ({reason})"))
            else:
                undelivered += 1
        node.dead_letters += undelivered
        if self.state in (_IDLE, _QUEUED):
            self.state = _STOPPING
            if begin:
                self._begin_terminate()
        # RUNNING or SUSPENDED: _after_message starts the stop when the handler is done.

    def _begin_terminate(self) -> None:
        if not self.terminating:
            self.terminating = True
            self.node._track(self.node._loop.create_task(self._terminate()))

    async def stop(self, reason: str) -> None:
        """Stop and wait until ``on_stop`` has run (called from outside this actor)."""
        if self.state == _RUNNING or (self.state == _SUSPENDED and self.node._current is self):
            raise ActorError(f"actor {self.ref.path} cannot await its own stop; call self.stop()")
        if self.state == _STOPPED:
            return
        self.request_stop(reason, begin=False)
        if self.state == _SUSPENDED and self.task is not None:
            self.task.cancel()  # the handler in progress ends with CancelledError
        if not self.terminating:
            self.terminating = True
            await self._terminate()
        elif self.state != _STOPPED:
            if self.done is None:
                self.done = self.node._loop.create_future()
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
        self.state = _STOPPING
        actor = self.actor
        if actor is not None:
            try:
                r = actor.on_stop()
                if isinstance(r, types.CoroutineType):
                    await r
            except Exception:
                log.exception("actor %s: on_stop failed", self.ref.path)
        while self.space_waiters:
            w = self.space_waiters.popleft()
            if not w.done():
                w.set_exception(ActorStopped(f"actor {self.ref.path} stopped ({self.stop_reason})"))
        self.state = _STOPPED
        self.flush_stats()
        self.node._remove(self)
        watchers, self.watchers = self.watchers, ()
        if watchers:
            notice = Terminated(self.ref, self.stop_reason or "stopped")
            for watcher in watchers:
                self.node._notify(watcher, notice)
        self.actor = None
        self.receive = None
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- timers ------------------------------------------------------------------------------------

    def add_timer(self, delay: float, message: Any, interval: float | None) -> Timer:
        if self.capacity < 0:
            raise ActorStopped(f"actor {self.ref.path} is stopped")
        timer = Timer(self, message, interval)
        timer._handle = self.node._loop.call_later(max(0.0, delay), timer._fire)
        if not self.timers:
            self.timers = set()
        self.timers.add(timer)
        return timer

    # -- statistics --------------------------------------------------------------------------------

    def flush_stats(self) -> None:
        if self.hbuf:
            self.handler_stats.update_many(self.hbuf)
            self.hbuf.clear()
        if self.wbuf:
            self.wait_stats.update_many(self.wbuf)
            self.wbuf.clear()

    def stats(self) -> dict:
        self.flush_stats()
        return {
            "name": self.ref.name,
            "messages": self.messages,
            "failures": self.failures,
            "restarts": self.restarts,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "mailbox_depth": len(self.mailbox),
            "mailbox_size": self.capacity if self.capacity >= 0 else 0,
            "handler_time": self.handler_stats.to_dict(),
            "mailbox_wait": self.wait_stats.to_dict(),
        }
