"""An actor's mailbox: a bounded FIFO of ``(message, corr)`` entries and its overflow policy.

``corr`` is 0 for a tell and the ask's correlation id otherwise, so every entry is msgpack-able
as it stands. The entries are in :attr:`Mailbox.queue`, a plain ``collections.deque`` that the
actor's cell appends to and pops from directly (its hot loop; a deque subclass would cost ~30 ns
a message); the :class:`Mailbox` adds the bound, the policy for a full mailbox, the counts of
what it dropped or refused, and the senders waiting for room.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ActorStopped, MailboxFull

__all__ = ["Overflow", "DEFAULT_MAILBOX_SIZE", "Mailbox"]

#: Mailbox capacity when neither the node nor ``spawn`` says otherwise.
DEFAULT_MAILBOX_SIZE = 10_000


class Overflow(str, enum.Enum):
    """What happens when a message arrives at a full mailbox.

    * ``block`` (the default): ``await ref.send(m)`` and ``await ref.ask(m)`` wait for room;
      ``ref.tell(m)`` cannot wait, so it raises :class:`~herdrt.errors.MailboxFull`.
    * ``reject``: ``tell``, ``send`` and ``ask`` all raise ``MailboxFull`` at once.
    * ``drop_oldest``: the oldest queued message is dropped to make room.
    * ``drop_newest``: the arriving message is dropped.

    Every rejection and drop is counted (``rejected`` / ``dropped`` in :meth:`Node.stats`). A
    dropped ask fails its asker with ``MailboxFull`` at once, so nobody waits for a timeout.
    """

    BLOCK = "block"
    REJECT = "reject"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class Mailbox:
    """The ``(message, corr)`` queue of one actor, ``path`` naming it in errors.

    ``capacity`` is the bound (``sys.maxsize`` for unbounded; -1 once the actor stopped, so every
    post finds it "full" and :meth:`refuse` says why). The owner appends to :attr:`queue` while
    ``len(queue) < capacity`` and calls :meth:`refuse` otherwise."""

    __slots__ = ("queue", "capacity", "policy", "path", "dropped", "rejected", "waiters", "closed_reason")

    def __init__(self, capacity: int | None, policy: Overflow, path: str):
        self.queue: collections.deque[tuple[Any, int]] = collections.deque()
        self.capacity = sys.maxsize if capacity is None else capacity
        self.policy = policy
        self.path = path
        self.dropped = 0
        self.rejected = 0
        # Senders waiting for room: the empty tuple until the first one (made on first use).
        self.waiters: collections.deque[asyncio.Future[None]] | tuple[()] = ()
        self.closed_reason: str | None = None

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def room(self) -> int:
        """How many more messages fit (0 when full or closed)."""
        return max(0, self.capacity - len(self.queue))

    def refuse(self, corr: int) -> int:
        """A message (ask ``corr``, or a tell: 0) meets the mailbox full: apply the policy.

        Raises :class:`ActorStopped` (closed) or :class:`MailboxFull` (``reject``/``block``, or
        an ask under ``drop_newest``); returns 0 if the message is dropped (``drop_newest``), or
        the corr of the ask dropped to make room (``drop_oldest``: the caller fails that ask,
        then appends) — -1 when the oldest entry dropped was a tell."""
        if self.capacity < 0:
            raise ActorStopped(f"actor {self.path} is stopped ({self.closed_reason})")
        policy = self.policy
        if policy is Overflow.DROP_OLDEST:
            _, old_corr = self.queue.popleft()
            self.dropped += 1
            return old_corr or -1
        if policy is Overflow.DROP_NEWEST:
            self.dropped += 1
            if corr:
                raise MailboxFull(f"mailbox of {self.path} is full ({self.capacity}); ask dropped (drop_newest)")
            return 0
        self.rejected += 1
        raise MailboxFull(f"mailbox of {self.path} is full ({self.capacity}, policy {policy.value})")

    async def wait_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait while the mailbox is full under the ``block`` policy (other policies apply at post)."""
        while len(self.queue) >= self.capacity:
            if self.capacity < 0:
                raise ActorStopped(f"actor {self.path} is stopped ({self.closed_reason})")
            if self.policy is not Overflow.BLOCK:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self.waiters
            if not waiters:
                waiters = self.waiters = collections.deque()
            waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.done():
                    waiter.cancel()
                raise

    def when_room(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once: the next time the actor has worked its queue below the
        capacity, or when it stops (flow control: the herd grants credit then). Waits in line
        with the senders waiting for room."""
        waiters = self.waiters
        if not waiters:
            waiters = self.waiters = collections.deque()
        waiters.append(_RoomCall(callback))  # type: ignore[arg-type]  # a future's duck

    def wake_senders(self) -> None:
        """Let waiting senders go, as many as there is room for."""
        waiters = self.waiters
        room = self.capacity - len(self.queue)
        while waiters and room > 0:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                room -= 1

    def close(self, reason: str) -> tuple[list[int], list[Any]]:
        """Refuse everything from now on (the actor stops) and empty the queue: returns the corrs
        of the asks that were queued (to fail) and the tells that were (dead letters)."""
        self.capacity = -1
        self.closed_reason = reason
        queue = self.queue
        asks = [corr for _, corr in queue if corr]
        tells = [message for message, corr in queue if not corr]
        queue.clear()
        return asks, tells

    def fail_senders(self) -> None:
        """Fail every sender still waiting for room (the actor has stopped)."""
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_exception(ActorStopped(f"actor {self.path} stopped ({self.closed_reason})"))


class _RoomCall:
    """A callback waiting in :attr:`Mailbox.waiters` as a sender's future would: called once, when
    woken or when the actor stops."""

    __slots__ = ("callback", "called")

    def __init__(self, callback: Callable[[], Any]):
        self.callback = callback
        self.called = False

    def done(self) -> bool:
        return self.called

    def set_result(self, _result: Any) -> None:
        if not self.called:
            self.called = True
            self.callback()

    def set_exception(self, _exc: BaseException) -> None:
        self.set_result(None)

    def cancel(self) -> None:
        self.called = True
