"""Mailbox policies and the strict-message check.

A mailbox is a bounded ``collections.deque`` of ``(message, corr)`` entries owned by the actor's
cell (see :mod:`herdrt.runtime.scheduler`): ``corr`` is 0 for a tell and the ask's correlation id otherwise,
so every entry is msgpack-able as it stands.
"""

from __future__ import annotations

import enum

import msgpack

__all__ = ["Overflow", "DEFAULT_MAILBOX_SIZE", "check_msgpack"]

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


def check_msgpack(value, what: str = "message") -> None:
    """Raise ``TypeError`` unless ``value`` survives a msgpack round trip unchanged.

    This is what ``Node(strict_messages=True)`` runs on every message and reply: code that passes
    it locally sends the same values across the herd. Tuples (which come back as lists), sets,
    custom objects and non-string map keys fail.
    """
    try:
        back = msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} {value!r} cannot be sent as msgpack: {exc}") from None
    if back != value or type(back) is not type(value):
        raise TypeError(
            f"{what} {value!r} does not survive msgpack unchanged (comes back as {back!r}); "
            "use lists, dicts with str keys, str, bytes, int, float, bool and None"
        )
