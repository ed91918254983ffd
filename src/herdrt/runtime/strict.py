"""Strict mode (``Node(strict_messages=True)``): every message and reply must survive msgpack."""

from __future__ import annotations

import msgpack

__all__ = ["check_msgpack"]


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
