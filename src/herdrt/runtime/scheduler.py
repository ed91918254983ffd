"""The batch scheduler: the run queue of one node's actor cells (:mod:`herdrt.runtime.cell`).

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
from time import perf_counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell import Cell

__all__ = ["Scheduler"]


class Scheduler:
    """The run queue of one node, drained in batches from ``loop.call_soon`` callbacks.

    It also knows which cell's handler runs right now (``current``: asks made from it are checked
    for deadlocks) and keeps the runtime's own tasks (``track``) so shutdown can wait for them."""

    __slots__ = ("loop", "runq", "armed", "batch_budget", "time_slice", "closed", "now", "current", "tasks")

    def __init__(self, batch_budget: int, time_slice: float):
        # Late binding: the node binds its scheduler to the loop it runs on when it starts
        # (``Node._bind``: ``async with``, ``start`` or the first ``spawn``); nothing runs before.
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # bound by Node when it starts
        self.runq: collections.deque[Cell] = collections.deque()
        self.armed = False  # a drain is scheduled (cells arm it only on empty -> non-empty)
        self.batch_budget = batch_budget
        self.time_slice = time_slice
        self.closed = False
        # While draining: the start time of the batch running now (a message posted by a handler
        # is stamped with it instead of paying for another clock read); 0.0 outside a drain.
        self.now = 0.0
        self.current: Cell | None = None  # the cell whose handler code is running right now
        self.tasks: set[asyncio.Task] = set()  # stops and async watchers still running

    def enqueue(self, cell: Cell) -> None:
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

    def track(self, task: asyncio.Task) -> None:
        """Keep ``task`` until it is done (shutdown waits for the runtime's tasks)."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        self.closed = True
        self.runq.clear()
