"""Backpressure on what feeds a node: stop reading a source while an actor it feeds lags behind.

A source is anything the node reads messages from — a herd link, the bridge's ZeroMQ socket.
While an actor it feeds has a backlog of ``min(BACKLOG_HIGH, half its mailbox)`` messages, the
source is not read; it is read again once that backlog is down to a quarter of the mark (or the
actor stopped). The peer's own bounded buffers then fill and push back on its senders, so a flood
costs bounded memory and the node stays responsive instead of stalling on a huge backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from ..runtime.mailbox import Mailbox

__all__ = ["BACKLOG_HIGH", "Backpressure"]

#: Most messages an actor may have waiting before its sources stop being read.
BACKLOG_HIGH = 8192
_POLL = 0.002  # seconds between looks at a held source's backlog


class Backpressure:
    """The sources one reader holds back; ``check`` after handing a read's messages to a mailbox."""

    def __init__(self) -> None:
        self._held: dict[Hashable, tuple[Mailbox, int, Callable[[], None]]] = {}  # source -> (mailbox, low, resume)
        self._timer: asyncio.TimerHandle | None = None

    def check(self, source: Hashable, mailbox: Mailbox, pause: Callable[[], None], resume: Callable[[], None]) -> bool:
        """Hold ``source`` back if ``mailbox`` (an actor's, :meth:`Node.mailbox`) has a deep
        backlog: ``pause()`` now, ``resume()`` once the backlog is down (or the actor stopped).
        True if it paused the source now."""
        high = min(BACKLOG_HIGH, max(mailbox.capacity // 2, 1))
        if len(mailbox) < high or source in self._held:
            return False
        pause()
        self._held[source] = (mailbox, high // 4, resume)
        if self._timer is None:  # (check runs on the loop: a source's read handed the messages over)
            self._timer = asyncio.get_running_loop().call_later(_POLL, self._poll)
        return True

    def holds(self, source: Hashable) -> bool:
        """Whether ``source`` is held back now."""
        return source in self._held

    def forget(self, source: Hashable) -> None:
        """Drop ``source`` without resuming it (it is closing)."""
        self._held.pop(source, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()

    def _poll(self) -> None:
        self._timer = None
        for source, (mailbox, low, resume) in list(self._held.items()):
            if len(mailbox) <= low or mailbox.capacity < 0:  # worked off, or the actor stopped
                del self._held[source]
                resume()
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(_POLL, self._poll)
