"""Supervision: what happens to an actor whose handler raised (its :class:`Supervision` policy).

``restart`` (the default) builds a fresh instance (``__init__``, then ``on_restart``), unless the
actor restarted more than ``max_restarts`` times within ``restart_window`` seconds: then it stops
for good and its watchers are told. ``resume`` keeps the instance; ``stop`` stops it. An ask
whose handler raised fails with :class:`~herdrt.errors.RemoteError` (unless the message is
retried on the fresh instance, ``retry_failed_message``). ``on_failure(exc)`` may choose the
policy for one failure.

A handler that raises :class:`~herdrt.errors.BadRequest` refuses the message instead: that is the
sender's error, not a failure. The actor keeps its instance (no policy applies, ``failures`` does
not count it), an asker gets a ``RemoteError`` naming ``BadRequest``, and the refusal is logged at
INFO without a traceback (rate-limited per actor: a sender may make it once per message).
"""

from __future__ import annotations

import collections
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, RemoteError
from ..ratelog import RateLog
from .actor import Supervision, check_policy

if TYPE_CHECKING:
    from .cell import Cell

__all__ = ["handle_failure"]

log = logging.getLogger("herdrt.actor")
_refusals = RateLog(log)  # refusals come once per message a sender sends: at most a line per actor every 5 s


def handle_failure(cell: Cell, exc: Exception, message: Any, corr: int) -> bool:
    """Apply the actor's supervision after its handler raised on ``message`` (ask ``corr``, or a
    tell: 0); True if the batch may go on with the next message."""
    if isinstance(exc, BadRequest):
        return _refuse(cell, exc, message, corr)
    cell.failures += 1
    path = cell.ref.path
    log.error("actor %s failed handling %.200r", path, message, exc_info=exc)
    policy = Supervision.RESTART
    actor = cell.actor
    assert actor is not None  # its handler just ran on it
    try:
        policy = check_policy(actor.supervision)
        override = actor.on_failure(exc)
        if override is not None:
            policy = check_policy(override)
    except Exception:
        log.exception("actor %s: on_failure raised; applying the %s policy", path, policy.value)
    retry = policy is Supervision.RESTART and actor.retry_failed_message
    if corr and not retry:
        cell.asks.fail(corr, RemoteError(type(exc).__name__, str(exc)))
    what = f"{type(exc).__name__}: {exc}"
    if policy is Supervision.RESUME:
        return True
    if policy is Supervision.STOP:
        cell.request_stop(f"stopped after failure: {what}")
        return False
    now = perf_counter()
    times = cell.restart_times
    if times is None:
        times = cell.restart_times = collections.deque()
    times.append(now)
    while times and times[0] < now - actor.restart_window:
        times.popleft()
    if len(times) > actor.max_restarts:
        if corr and retry:
            cell.asks.fail(corr, RemoteError(type(exc).__name__, str(exc)))
        log.error("actor %s: more than %d restarts in %ss; stopping it", path, actor.max_restarts, actor.restart_window)
        cell.request_stop(f"too many restarts: {what}")
        return False
    if retry:
        cell.queue.appendleft((message, corr))
    for timer in list(cell.timers):
        timer.cancel()
    cell.restarts += 1
    try:
        cell.instantiate()
    except Exception as init_exc:
        log.exception("actor %s: __init__ failed on restart; stopping it", path)
        cell.request_stop(f"restart failed: {type(init_exc).__name__}: {init_exc}")
        return False
    if not cell.sys:
        cell.sys = []
    cell.sys.append(("restart", exc))
    return False  # let the run loop call on_restart before the next message


def _refuse(cell: Cell, exc: BadRequest, message: Any, corr: int) -> bool:
    """The handler refused ``message`` with :class:`~herdrt.errors.BadRequest`: answer the asker
    (ask ``corr``; a tell: 0) with it and go on with the next message; nothing else changes."""
    if corr:  # named BadRequest even for a subclass: askers test type_name == "BadRequest"
        cell.asks.fail(corr, RemoteError(BadRequest.__name__, str(exc)))
    path = cell.ref.path
    _refusals.info(path, "actor %s refused %.200r: %s", path, message, exc)
    return True
