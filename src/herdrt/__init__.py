"""herdrt — a herd of cooperating actor nodes.

What an application uses: actors on one node (:class:`Actor`, :class:`Node`, refs, supervision),
a node of a herd (:class:`HerdNode`, configured by :func:`load_config`), a client of a herd
(:class:`HerdClient`), and the errors. The building blocks below them live in their packages:
:mod:`herdrt.core` (framing, hash ring, online statistics: compiled, with a pure-Python twin),
:mod:`herdrt.runtime`, :mod:`herdrt.herd`, :mod:`herdrt.bridge` (see ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConfigError, HerdConfig, load_config
from .errors import (
    ActorError,
    ActorNotFound,
    ActorStopped,
    AskDeadlock,
    AskTimeout,
    BadRequest,
    HerdError,
    MailboxFull,
    NodeUnavailable,
    RemoteError,
)
from .runtime import Actor, ActorRef, Context, DeadLetter, Deferred, Node, Overflow, Supervision, Terminated, Timer, run

if TYPE_CHECKING:
    from .herd import HerdClient, HerdNode

__version__ = "0.1.0"

__all__ = [
    # actors on one node
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
    # a herd
    "HerdNode",
    "HerdClient",
    "HerdConfig",
    "load_config",
    # errors
    "HerdError",
    "ActorError",
    "ActorNotFound",
    "ActorStopped",
    "AskDeadlock",
    "AskTimeout",
    "BadRequest",
    "MailboxFull",
    "NodeUnavailable",
    "RemoteError",
    "ConfigError",
]


def __getattr__(name: str):
    # The herd (links, TLS, cryptography) is imported on first use: `import herdrt` stays light
    # for programs that only run actors on one node.
    if name in ("HerdNode", "HerdClient"):
        from . import herd

        return getattr(herd, name)
    raise AttributeError(f"module 'herdrt' has no attribute {name!r}")
