"""Dead letters: messages a node took in but could not deliver, never lost without a trace.

A *dead letter* is a tell whose sender was not told it failed: ``tell`` returned (or the message
came from another node), and then the message could not reach its actor. A failure the sender
hears of at once is not one — a local ``tell`` into a full ``reject`` mailbox raises
:class:`~herdrt.errors.MailboxFull`, an ask fails its asker. Every dead letter is

* counted by reason and by target (the target table is bounded: past ``max_targets`` names
  the rest are counted together, so a flood to a million names costs no memory);
* logged, rate-limited (one line per reason per few seconds, saying how many were held back);
* handed to every subscriber (:meth:`DeadLetters.subscribe`, or ``node.on_dead_letter``);
* when the tell came from another node (``origin``), kept for a report to that node, so a flood
  that loses messages shows on the sender's side too: the herd sends :meth:`take_reports` to
  each origin now and then, and the origin adds what it hears with :meth:`reported`.

The reasons are the strings in :data:`REASONS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ratelog import RateLog

__all__ = ["DeadLetter", "DeadLetters", "REASONS"]

log = logging.getLogger("herdrt.deadletters")

#: Why a message became a dead letter.
REASONS = {
    "mailbox_full": "the target's mailbox was full (policy reject or block)",
    "dropped_newest": "the target's mailbox was full and its policy dropped the arriving message",
    "dropped_oldest": "the target's mailbox was full and its policy dropped this, its oldest message",
    "actor_stopped": "the target stopped before handling it",
    "unknown_actor": "no actor by that name on the target node",
    "no_route": "no live route to the target's node",
    "link_overflow": "the link towards the target's node had max_queued messages waiting",
    "link_closed": "the link it waited on closed before sending it",
    "unencodable": "msgpack cannot carry it, or it is over the peer's max_frame_size",
    "service_unavailable": "the bridge service serving the target is evicted, disconnected or backed up",
    "in_doubt": "sent with credit, but the path to the target's node failed before it confirmed receipt "
    "(some may have arrived)",
}

#: Targets counted by name before the rest are counted together as ``OTHER``.
MAX_TARGETS = 1000
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter (or ``count`` of them, when they were reported by number)."""

    target: str  #: where it was going: ``"name@node"``, or ``"[kind, key]"`` for a keyed actor
    reason: str  #: one of :data:`REASONS`
    node: str  #: the node that could not deliver it
    message: Any = None  #: the message itself, when the node that lost it held it
    count: int = 1


class DeadLetters:
    """The dead letters of one node: counts, a rate-limited log, subscribers."""

    def __init__(self, node: str, *, max_targets: int = MAX_TARGETS):
        self.node = node
        self.max_targets = max_targets
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self.by_target: dict[str, int] = {}
        # What other nodes reported of the tells sent from here.
        self.reported_total = 0
        self.reported_by_reason: dict[str, int] = {}
        self.reported_by_node: dict[str, int] = {}
        self._reports: dict[str, dict[tuple[str, str], int]] = {}  # origin -> (target, reason) -> count
        self._subscribers: list[Callable[[DeadLetter], Any]] = []
        self._ratelog = RateLog(log)

    def _bounded(self, table: dict, key: Any, count: int, other: Any) -> None:
        if key in table or len(table) < self.max_targets:
            table[key] = table.get(key, 0) + count
        else:
            table[other] = table.get(other, 0) + count

    def record(self, target: str, reason: str, message: Any = None, count: int = 1, origin: str | None = None) -> None:
        """Count ``count`` dead letters to ``target`` for ``reason`` (``message``: the one lost;
        ``origin``: the node that sent it, when another node did, to be told in a report)."""
        if count <= 0:
            return
        self.total += count
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        self._bounded(self.by_target, target, count, OTHER)
        if origin is not None and origin != self.node:
            pending = self._reports.get(origin)
            if pending is None:
                pending = self._reports[origin] = {}
            self._bounded(pending, (target, reason), count, (OTHER, reason))
        self._ratelog.warning(
            reason,
            "%s: %d dead letter(s) to %.80s: %s (%d in all)",
            self.node,
            count,
            target,
            REASONS.get(reason, reason),
            self.total,
        )
        if self._subscribers:
            self._publish(DeadLetter(target, reason, self.node, message, count))

    def take_reports(self) -> dict[str, list[list]]:
        """The dead letters of tells from other nodes since the last call, by origin node:
        ``{origin: [[target, reason, count], ...]}`` (what a DEAD_LETTERS envelope carries)."""
        reports, self._reports = self._reports, {}
        return {origin: [[t, r, n] for (t, r), n in pending.items()] for origin, pending in reports.items()}

    def reported(self, by: str, target: str, reason: str, count: int) -> None:
        """Node ``by`` reports ``count`` dead letters of tells sent from this node to ``target``:
        counted apart from this node's own (``stats()["reported"]``), logged, and handed to the
        subscribers as a :class:`DeadLetter` whose ``node`` is ``by``."""
        if count <= 0:
            return
        self.reported_total += count
        self.reported_by_reason[reason] = self.reported_by_reason.get(reason, 0) + count
        self._bounded(self.reported_by_node, by, count, OTHER)
        self._ratelog.warning(
            ("reported", reason),
            "%s: %s reports %d dead letter(s) of tells from here to %.80s: %s",
            self.node,
            by,
            count,
            target,
            REASONS.get(reason, reason),
        )
        self._publish(DeadLetter(target, reason, by, None, count))

    def _publish(self, letter: DeadLetter) -> None:
        for callback in list(self._subscribers):
            try:
                callback(letter)
            except Exception:
                log.exception("%s: a dead-letter subscriber raised", self.node)

    def subscribe(self, callback: Callable[[DeadLetter], Any]) -> Callable[[], None]:
        """Call ``callback(letter)`` for every dead letter from now on; returns the unsubscriber.
        It runs on the node's loop, inside the code that lost the message: keep it short."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def flush_log(self) -> None:
        """Log the held-back counts whose interval is over (a node calls it now and then)."""
        self._ratelog.flush()

    def stats(self) -> dict[str, Any]:
        """``total``, ``by_reason`` and ``by_target`` of this node's own dead letters, and
        ``reported``: ``total``, ``by_reason`` and ``by_node`` of those other nodes reported of
        tells sent from here (msgpack-ready)."""
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason),
            "by_target": dict(self.by_target),
            "reported": {
                "total": self.reported_total,
                "by_reason": dict(self.reported_by_reason),
                "by_node": dict(self.reported_by_node),
            },
        }
