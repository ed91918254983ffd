"""The admin actor every herd node runs, ``$node``: the CLI's window on a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..runtime.actor import Actor

__all__ = ["ADMIN_ACTOR", "AdminActor"]

#: The name of the admin actor on every node.
ADMIN_ACTOR = "$node"


class AdminActor(Actor):
    """Answers ``"status"`` (the node's :meth:`~herdrt.herd.node.HerdNode.herd_status`) and
    ``"ping"`` (``{"pong": node}``); ``{"op": ...}`` works too."""

    def __init__(self, status: Callable[[], dict[str, Any]]):
        self._status = status

    def receive(self, message, ctx):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "status":
            return self._status()
        if op == "ping":
            return {"pong": self.node.name}
        raise ValueError(f"unknown admin request {op!r}; ask 'status' or 'ping'")
