"""The actor runtime of one node: actors, refs, mailboxes, the batch scheduler, supervision, asks.

Lower than the herd: nothing here knows about links or other nodes, except through the seams a
:class:`Node` offers the layers above it (see :mod:`herdrt.runtime.node`).
"""

from .actor import Actor, Deferred, Supervision, Terminated, Timer
from .cell import Context
from .deadletters import DeadLetter
from .mailbox import Overflow
from .node import Node, run
from .ref import ActorRef

__all__ = [
    "Actor",
    "ActorRef",
    "Context",
    "DeadLetter",
    "Deferred",
    "Node",
    "Overflow",
    "Supervision",
    "Terminated",
    "Timer",
    "run",
]
