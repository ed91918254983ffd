"""Every error herdrt raises, in one importable place.

Both implementations of the core (compiled ``_fast`` and the pure twin ``_pure``) raise these very
classes, so ``except herdrt.errors.FrameError`` works whichever one is active.
"""

from collections.abc import Sequence
from typing import Any

__all__ = [
    "HerdError",
    "FrameError",
    "FrameTooLarge",
    "RecordError",
    "EmptyRingError",
    "CompiledCoreMissing",
    "ActorError",
    "ActorNotFound",
    "ActorStopped",
    "MailboxFull",
    "AskTimeout",
    "AskDeadlock",
    "RemoteError",
    "NodeUnavailable",
    "BadRequest",
]


class HerdError(Exception):
    """Base class of herdrt's own errors."""


class FrameError(HerdError, ValueError):
    """A frame could not be decoded: its body is not valid msgpack, leaves trailing bytes, or the
    stream ended inside a frame. The decoder that raised it refuses further input."""

    #: What the same input held before the bad frame, decoded (it still counts).
    messages: Sequence[Any] = ()


class FrameTooLarge(FrameError):
    """A frame's length prefix is over the decoder's ``max_frame_size``. Raised from the 4-byte
    header alone, before anything of that size is allocated."""


class RecordError(HerdError, ValueError):
    """A sealed link record failed to open: forged, replayed, reordered, truncated or oversized.
    ``plain`` holds the plaintext of the good records before it in the same ``feed``."""

    plain = b""


class EmptyRingError(HerdError, LookupError):
    """A lookup on a hash ring that has no nodes."""


class CompiledCoreMissing(HerdError, ImportError):
    """``HERDRT_REQUIRE_COMPILED=1`` is set but the compiled core ``herdrt.core._fast`` cannot be imported."""


# --- actors and the herd -------------------------------------------------------------------------


class ActorError(HerdError):
    """Base class of errors about delivering to, or asking, an actor."""


class ActorNotFound(ActorError, LookupError):
    """No actor by that name (or ref) lives on the node asked."""


class ActorStopped(ActorError):
    """The actor stopped (or its node shut down) before it could take or answer the message."""


class MailboxFull(ActorError):
    """The actor's bounded mailbox is full and its overflow policy is ``reject``."""


class AskDeadlock(ActorError):
    """An ask that could never be answered: an actor asking itself, or closing a cycle of actors
    that wait on each other's replies. Raised at once instead of waiting for the timeout."""


class AskTimeout(ActorError, TimeoutError):
    """No reply came within the ask's timeout (the target may be busy, or waiting on the asker)."""


class RemoteError(ActorError):
    """The handler raised while answering an ask; carries the remote exception's type name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.message))


class NodeUnavailable(ActorError):
    """The node that hosts the target is down or unreachable; raised at once, not after a timeout."""


class BadRequest(HerdError, ValueError):
    """Raised by a handler to refuse a message as invalid: the sender's error, not the actor's.

    Supervision treats it as an answer, not a failure: no restart, not counted in ``failures``,
    logged at INFO without a traceback, and the batch goes on. An asker gets it as
    :class:`RemoteError` (``type_name == "BadRequest"``) carrying the message, on this node and
    across the herd; a refused tell is only logged. Say in the message what a valid one looks like.
    """
