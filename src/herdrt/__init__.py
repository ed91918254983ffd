"""herdrt — a herd of cooperating actor nodes.

The compiled core (framing, MD5 hash ring, online statistics) is re-exported here; see
:mod:`herdrt.core` for how the implementation is chosen.
"""

from .core import (
    DEFAULT_MAX_FRAME_SIZE,
    IMPLEMENTATION,
    FrameDecoder,
    HashRing,
    OnlineStats,
    QuantileSketch,
    encode_frame,
    encode_frames,
    jump_hash,
    md5_shard,
)
from .errors import (
    ActorError,
    ActorNotFound,
    ActorStopped,
    AskDeadlock,
    AskTimeout,
    EmptyRingError,
    FrameError,
    FrameTooLarge,
    HerdError,
    MailboxFull,
    NodeUnavailable,
    RemoteError,
)
from .runtime import Actor, ActorRef, Context, Deferred, Node, Overflow, Supervision, Terminated, Timer, run

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "DEFAULT_MAX_FRAME_SIZE",
    "encode_frame",
    "encode_frames",
    "FrameDecoder",
    "HashRing",
    "md5_shard",
    "jump_hash",
    "OnlineStats",
    "QuantileSketch",
    "HerdError",
    "FrameError",
    "FrameTooLarge",
    "EmptyRingError",
    # the actor runtime
    "Actor",
    "ActorRef",
    "Context",
    "Deferred",
    "Node",
    "Overflow",
    "Supervision",
    "Terminated",
    "Timer",
    "run",
    "ActorError",
    "ActorNotFound",
    "ActorStopped",
    "AskDeadlock",
    "AskTimeout",
    "MailboxFull",
    "NodeUnavailable",
    "RemoteError",
]
