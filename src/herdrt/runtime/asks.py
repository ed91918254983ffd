"""Asks: the pending-ask table of one node, its timeouts, and how an ask is posted.

An ask is a message posted with a correlation id (``corr``, never 0) whose entry in the table —
the asker's future, or a :class:`ReplyProxy` for an asker elsewhere — is completed with the
reply (:meth:`Asks.complete`) or failed (:meth:`Asks.fail`).

Timeouts cost no timer per ask. Correlation ids grow, so asks sharing a timeout form a *lane*
whose ticker (every timeout/4, only while it has asks pending) records the next id as a
watermark; once a watermark is a timeout old, every pending ask of the lane below it has waited at
least that long and fails. An ask therefore expires between 1 and 1.25 timeouts after it was
made, whatever timeout it asked for (a lane per distinct timeout; a lane with nothing pending
goes away). The node's default lane costs nothing per ask; another timeout, one dict entry.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import AskDeadlock, AskTimeout, RemoteError
from .cell import SUSPENDED
from .mailbox import Overflow
from .strict import check_msgpack

if TYPE_CHECKING:
    from .cell import Cell
    from .ref import ActorRef, Poster
    from .scheduler import Scheduler

__all__ = ["Asks", "ReplyProxy", "CallbackReply"]


class ReplyProxy:
    """Stands in the pending-ask table for an asker elsewhere (another node, a client, a
    service): passes the outcome on with :meth:`send` — ``(True, result)`` or
    ``(False, (type_name, message))``, msgpack-able as it is. Subclasses define ``send``."""

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


class CallbackReply(ReplyProxy):
    """The outcome goes to ``reply(ok, value)``."""

    __slots__ = ("_reply",)

    def __init__(self, reply: Callable[[bool, Any], None]):
        self._done = False
        self._reply = reply

    def send(self, ok: bool, value: Any) -> None:
        self._reply(ok, value)


class _Lane:
    """The asks of one timeout: a count (kept for the lanes other than the default, whose count
    is what the others leave of the table), the watermarks, the ticker."""

    __slots__ = ("timeout", "count", "marks", "ticker")

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.count = 0
        self.marks: collections.deque[tuple[float, int]] = collections.deque()
        self.ticker: asyncio.TimerHandle | None = None


class Asks:
    """The asks one node waits on (see the module docstring). ``pending`` maps each corr to its
    entry, in the order the asks were made; ``timeout`` is the node's default."""

    __slots__ = ("scheduler", "timeout", "strict", "pending", "next_corr", "_default", "_lanes", "_lane_of")

    def __init__(self, scheduler: Scheduler, timeout: float, strict: bool):
        self.scheduler = scheduler
        self.timeout = timeout
        self.strict = strict
        self.pending: dict[int, asyncio.Future[Any] | ReplyProxy] = {}
        self.next_corr = 1
        self._default = _Lane(timeout)
        self._lanes: dict[float, _Lane] = {}  # the other timeouts asked for
        # corr -> (lane, the actor asked), for the asks not on the default lane
        self._lane_of: dict[int, tuple[_Lane, str]] = {}

    def __len__(self) -> int:
        return len(self.pending)

    # -- asking ----------------------------------------------------------------------------------

    def ask(self, ref: ActorRef, cell: Cell | None, message: Any, timeout: float | None = None) -> Awaitable[Any]:
        """Post ``message`` to ``ref`` (``cell``: its cell if it is local) as an ask; an awaitable
        of the reply (``ref.ask`` is this, bound to the ref and its cell). Raises
        :class:`AskDeadlock` at once for an actor asking itself or closing a cycle of actors
        waiting on each other."""
        cur = self.scheduler.current
        if cell is not None:
            if cur is not None:
                _check_cycle(cur, cell)
            mb = cell.mailbox
            if len(cell.queue) >= mb.capacity and mb.policy is Overflow.BLOCK and mb.capacity > 0:
                return self._ask_when_room(ref, cell, message, timeout)
        fut: asyncio.Future[Any] = self.scheduler.loop.create_future()
        corr = self.next_corr
        self.next_corr = corr + 1
        self.pending[corr] = fut
        if timeout is not None and timeout != self.timeout:
            lane = self._lanes.get(timeout) or self._new_lane(corr, timeout)
            self._lane_of[corr] = (lane, ref.path)
            lane.count += 1
            if lane.ticker is None:
                self._arm(lane)
        elif self._default.ticker is None:
            self._arm(self._default)
        try:
            ref.tell(message, corr)  # tell is the poster: post(message, corr=0)
        except BaseException:
            self.take(corr)
            raise
        if cur is not None:
            cur.waiting_on = cell
        return fut

    async def _ask_when_room(self, ref: ActorRef, cell: Cell, message: Any, timeout: float | None) -> Any:
        """An ask to a full mailbox under ``block``: wait for room (within the timeout), then ask."""
        limit = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(cell.mailbox.wait_room(self.scheduler.loop), limit)
        except TimeoutError:
            raise AskTimeout(f"the mailbox of {ref.path} stayed full for {limit:g}s") from None
        return await self.ask(ref, cell, message, timeout)

    def post(self, post: Poster, message: Any, entry: ReplyProxy) -> None:
        """Post an ask that came from outside this node with ``post(message, corr)``; ``entry``
        stands for the asker and gets the outcome (within the node's default timeout)."""
        corr = self.next_corr
        self.next_corr = corr + 1
        self.pending[corr] = entry
        if self._default.ticker is None:
            self._arm(self._default)
        try:
            post(message, corr)
        except BaseException:
            self.take(corr)
            raise

    # -- outcomes --------------------------------------------------------------------------------

    def complete(self, corr: int, value: Any) -> None:
        """Answer ask ``corr`` (ignored if it is no longer pending: answered or timed out)."""
        if self.strict:
            check_msgpack(value, "reply")
        fut = self.take(corr)
        if fut is not None:
            try:
                fut.set_result(value)
            except asyncio.InvalidStateError:  # the asker gave up (cancelled)
                pass

    def fail(self, corr: int, exc: BaseException) -> None:
        """Fail ask ``corr`` with ``exc`` (ignored if it is no longer pending)."""
        fut = self.take(corr)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def take(self, corr: int) -> asyncio.Future[Any] | ReplyProxy | None:
        """Ask ``corr``'s entry (its future or reply proxy), off the table; None if it is gone."""
        entry = self.pending.pop(corr, None)
        if entry is not None and self._lane_of:
            own = self._lane_of.pop(corr, None)
            if own is not None:
                own[0].count -= 1
        return entry

    def waiting(self, corr: int) -> bool:
        """Whether ask ``corr`` is still pending."""
        return corr in self.pending

    def close(self, make_exc: Callable[[], BaseException]) -> None:
        """Fail every pending ask with ``make_exc()`` and stop the tickers (the node shuts down)."""
        pending, self.pending = self.pending, {}
        self._lane_of.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(make_exc())
        for lane in (self._default, *self._lanes.values()):
            if lane.ticker is not None:
                lane.ticker.cancel()
                lane.ticker = None
            lane.marks.clear()
            lane.count = 0
        self._lanes.clear()

    # -- timeouts --------------------------------------------------------------------------------

    def _new_lane(self, corr: int, timeout: float) -> _Lane:
        if not timeout > 0:
            del self.pending[corr]
            raise ValueError(f"ask timeout must be positive, not {timeout!r}")
        lane = self._lanes[timeout] = _Lane(timeout)
        return lane

    def _arm(self, lane: _Lane) -> None:
        lane.ticker = self.scheduler.loop.call_later(lane.timeout / 4, self._tick, lane)

    def _tick(self, lane: _Lane) -> None:
        lane.ticker = None
        now = self.scheduler.loop.time()
        marks = lane.marks
        marks.append((now, self.next_corr))
        horizon = now - lane.timeout
        expired_below = 0
        while marks and marks[0][0] <= horizon:
            expired_below = marks.popleft()[1]
        default = lane is self._default
        if expired_below:
            lane_of = self._lane_of
            late = []
            for corr in self.pending:
                if corr >= expired_below:
                    break
                own = lane_of.get(corr)
                if (own is None) if default else (own is not None and own[0] is lane):
                    late.append((corr, "" if own is None else f"from {own[1]} "))
            for corr, whom in late:
                fut = self.take(corr)
                if fut is not None and not fut.done():  # (None: a reply callback above took it)
                    fut.set_exception(
                        AskTimeout(
                            f"no reply {whom}within {lane.timeout:g}s (ask #{corr}; "
                            "the target may be busy, or waiting on the asker)"
                        )
                    )
        if (len(self.pending) > len(self._lane_of)) if default else lane.count > 0:
            self._arm(lane)
        else:
            marks.clear()
            if lane is not self._default:
                del self._lanes[lane.timeout]


def _check_cycle(cur: Cell, target: Cell) -> None:
    if target is cur:
        raise AskDeadlock(
            f"actor {cur.ref.path} asked itself: it would wait for a reply only it can give; "
            "use tell, or call the method directly"
        )
    c = target
    for _ in range(64):  # follow "suspended, waiting on" links (a chain on this node)
        if c.state != SUSPENDED:  # only a cell suspended on an ask waits on another
            return
        waited = c.waiting_on
        if waited is None:
            return
        if waited is cur:
            raise AskDeadlock(
                f"actor {cur.ref.path} asked {target.ref.path}, which (through a chain of asks) "
                "waits on it: that cycle would deadlock"
            )
        c = waited
