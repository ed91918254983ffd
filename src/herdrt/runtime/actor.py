"""The :class:`Actor` base class, deferred answers, timers, supervision policies and death notices.

(The per-message :class:`~herdrt.runtime.cell.Context` lives with the cell that runs handlers.)"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ActorError, HerdError, RemoteError

if TYPE_CHECKING:
    import asyncio

    from .asks import Asks
    from .cell import Cell, Context
    from .node import Node
    from .ref import ActorRef

__all__ = ["Actor", "Deferred", "Supervision", "Terminated", "Timer", "bind", "check_policy"]


class Supervision(str, enum.Enum):
    """What an actor does when its handler raises (see :attr:`Actor.supervision`)."""

    RESTART = "restart"  #: a fresh instance (``__init__`` then ``on_restart``); the default
    RESUME = "resume"  #: keep the instance and its state; go on with the next message
    STOP = "stop"  #: stop the actor; its watchers are told


@dataclass(frozen=True, slots=True)
class Terminated:
    """Delivered to watchers (see :meth:`Node.watch`) when the watched actor has stopped.

    ``reason`` is ``"stopped"`` for an orderly stop, ``"node shutdown"``, or says why supervision
    gave up (e.g. ``"too many restarts: ValueError: ..."``).
    """

    ref: ActorRef
    reason: str


class Deferred:
    """An ask to answer later (from :meth:`Context.defer`): call :meth:`reply` or :meth:`fail`
    once, from any code on the node's loop. ``id`` is unique among the node's pending asks."""

    __slots__ = ("_asks", "id")

    def __init__(self, asks: Asks, corr: int):
        self._asks = asks
        self.id = corr

    @property
    def waiting(self) -> bool:
        """True until the ask is answered, failed or timed out (no one waits any more)."""
        return self._asks.waiting(self.id)

    def reply(self, value: Any) -> None:
        """Answer the ask (ignored once it is answered or timed out)."""
        self._asks.complete(self.id, value)

    def fail(self, exc: Exception) -> None:
        """Fail the ask, as a handler raising ``exc`` would: the asker gets herdrt's own errors
        (``NodeUnavailable``, ``MailboxFull``, ...) as they are, anything else as a
        :class:`~herdrt.errors.RemoteError` naming its type — on this node and across the herd."""
        if not isinstance(exc, HerdError):
            exc = RemoteError(type(exc).__name__, str(exc))
        self._asks.fail(self.id, exc)

    def __repr__(self) -> str:
        return f"<Deferred ask #{self.id}{'' if self.waiting else ' (done)'}>"


class Timer:
    """A scheduled message to self (from :meth:`Actor.schedule` / :meth:`Actor.schedule_every`).

    Cancelled with :meth:`cancel`, and automatically when the actor stops or restarts.
    """

    __slots__ = ("_cell", "_handle", "message", "interval")

    def __init__(self, cell: Cell, message: Any, interval: float | None):
        self._cell = cell
        self._handle: asyncio.TimerHandle | None = None
        self.message = message
        self.interval = interval

    @property
    def active(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Fire after ``delay`` seconds (the cell calls this once)."""
        self._handle = loop.call_later(delay, self._fire)

    def cancel(self) -> None:
        """Stop the timer (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            timers = self._cell.timers
            if timers:  # (a set once a timer was added; the empty tuple before)
                timers.discard(self)

    def _fire(self) -> None:
        cell = self._cell
        if self.interval is None:
            self._handle = None
            timers = cell.timers
            if timers:
                timers.discard(self)
        else:
            self._handle = cell.sched.loop.call_later(self.interval, self._fire)
        cell.post_timer(self.message)


class Actor:
    """Base class of actors. Subclass it and define ``receive``.

    ``receive(self, message, ctx)`` may be a plain ``def`` (the fastest) or an ``async def`` that
    awaits other actors; either way an actor handles one message at a time, in order. An async
    handler starts running eagerly inside the scheduler, and only if it really has to wait does it
    continue in an asyncio task (the actor takes no other message until it has finished). Because
    that first step runs outside any task, ``asyncio.timeout()`` needs a task: use
    ``asyncio.wait_for`` or the ``timeout`` of ``ask``. A return value (or ``ctx.reply``) answers
    an ask; an exception reaches the asker as :class:`~herdrt.errors.RemoteError` and triggers
    :attr:`supervision`.

    Lifecycle hooks (plain or ``async``): ``on_start`` before the first message, ``on_stop`` when
    the actor stops, ``on_restart(exc)`` on the fresh instance after a restart (by default it calls
    ``on_start``), and ``on_failure(exc)`` (plain only) on the failing instance — it may return a
    :class:`Supervision` (or its string) to override the policy for this failure.

    Class attributes configure supervision: ``supervision`` (default ``"restart"``),
    ``max_restarts`` restarts within ``restart_window`` seconds before the actor stops for good,
    and ``retry_failed_message`` (re-deliver the failing message to the fresh instance).

    ``__init__`` runs with ``self.ref`` and ``self.node`` already set.
    """

    supervision: Supervision | str = Supervision.RESTART
    max_restarts: int = 3
    restart_window: float = 60.0
    retry_failed_message: bool = False

    _cell: Cell

    def receive(self, message: Any, ctx: Context) -> Any:
        """Handle one message; override (plain or ``async def``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define receive()")

    # -- lifecycle hooks ------------------------------------------------------------------------

    def on_start(self) -> Any:
        """Called before the first message (plain or async)."""

    def on_stop(self) -> Any:
        """Called once when the actor stops (plain or async); pending asks have already failed."""

    def on_failure(self, exc: BaseException) -> Supervision | str | None:
        """Called on the failing instance when a handler raised; may return a policy override."""
        return None

    def on_restart(self, exc: BaseException) -> Any:
        """Called on the fresh instance after a restart; by default runs ``on_start``."""
        return self.on_start()

    # -- keyed actors in a herd -----------------------------------------------------------------

    def on_handoff(self) -> Any:
        """A keyed actor whose key moves to another node (membership changed): return state to
        carry over (msgpack-able), or None. Called just before this copy stops."""
        return None

    def on_takeover(self, state: Any) -> None:
        """On the new owner, before the first message: the state ``on_handoff`` returned."""

    # -- context ---------------------------------------------------------------------------------

    @property
    def ref(self) -> ActorRef:
        """This actor's ref (``name@node``)."""
        return self._cell.ref

    @property
    def node(self) -> Node:
        """The node this actor lives on."""
        return self._cell.node

    @property
    def name(self) -> str:
        return self._cell.ref.name

    def stop(self) -> None:
        """Stop this actor after the current message (safe to call from its own handler)."""
        self._cell.request_stop("stopped")

    # -- timers ----------------------------------------------------------------------------------

    def schedule(self, delay: float, message: Any) -> Timer:
        """Tell ``message`` to this actor once, after ``delay`` seconds."""
        return self._cell.add_timer(delay, message, None)

    def schedule_every(self, interval: float, message: Any, *, initial_delay: float | None = None) -> Timer:
        """Tell ``message`` to this actor every ``interval`` seconds (first after ``initial_delay``,
        by default ``interval``)."""
        if interval <= 0:
            raise ValueError("schedule_every needs a positive interval")
        return self._cell.add_timer(interval if initial_delay is None else initial_delay, message, interval)

    def __repr__(self) -> str:
        cell = getattr(self, "_cell", None)
        return f"<{type(self).__name__} {cell.ref if cell is not None else '(unbound)'}>"


def bind(actor: Actor, cell: Cell) -> None:
    """Tie a new actor instance to the cell that runs it (before its ``__init__``)."""
    actor._cell = cell


def check_policy(value) -> Supervision:
    """The :class:`Supervision` named by ``value``; :class:`ActorError` for an unknown one."""
    try:
        return Supervision(value)
    except ValueError:
        raise ActorError(f"unknown supervision policy {value!r}; use restart, resume or stop") from None
