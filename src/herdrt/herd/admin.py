"""The admin actor every herd node runs, ``$node``: the CLI's window on a node."""

from __future__ import annotations

from ..runtime.actor import Actor

__all__ = ["ADMIN_ACTOR", "AdminActor"]

#: The name of the admin actor on every node.
ADMIN_ACTOR = "$node"


class AdminActor(Actor):
    """Answers ``"status"`` (the node's :meth:`~herdrt.herd.node.HerdNode.herd_status`) and
    ``"ping"`` (``{"pong": node}``); ``{"op": ...}`` works too."""

    def receive(self, message, ctx):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "status":
            return self.node.herd_status()
        if op == "ping":
            return {"pong": self.node.name}
        raise ValueError(f"unknown admin request {op!r}; ask 'status' or 'ping'")
