"""The admin actor every herd node runs, ``$node``: the CLI's window on a node.

It answers asks of these shapes (a bare string for the ops that take no argument):

* ``"status"``: the node's :meth:`~herdrt.herd.node.HerdNode.herd_status`;
* ``"ping"``: ``{"pong": node}``;
* ``"actors"``: the node's actors (:func:`actors_report`);
* ``{"op": "owner", "kind": K, "key": KEY}``: which live node owns keyed actor ``(K, KEY)`` on
  the ring this node sees;
* ``{"op": "tell", "target": T, "message": M, "kind": K}``: a *confirmed* tell. ``T`` is
  ``NAME`` or ``NAME@NODE`` (or, with ``kind``, the key of a keyed actor). Answered
  ``{"told": path, "node": node}`` once the message is in the mailbox of a live actor on this node,
  or once the node that runs the target has confirmed it in turn; an unknown actor, a full
  mailbox or an unreachable node fails the ask with the herd's typed error (``ActorNotFound``,
  ``MailboxFull``, ``NodeUnavailable``, ...).

Anything else is refused with :class:`~herdrt.errors.BadRequest`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import ActorNotFound, BadRequest, HerdError
from ..runtime.actor import Actor, Deferred
from ..runtime.node import family_of
from .client import parse_target
from .placement import placement_key

if TYPE_CHECKING:
    from ..runtime.cell import Context
    from .node import HerdNode

__all__ = ["ADMIN_ACTOR", "AdminActor", "actors_report"]

#: The name of the admin actor on every node.
ADMIN_ACTOR = "$node"

_USAGE = (
    "ask 'status', 'ping' or 'actors', {'op': 'owner', 'kind': KIND, 'key': KEY} or "
    "{'op': 'tell', 'target': NAME[@NODE], 'message': MESSAGE, 'kind': KIND (optional)}"
)


class AdminActor(Actor):
    """Answers the admin requests of the module docstring; ``{"op": name}`` works for every op."""

    def __init__(self, status: Callable[[], dict[str, Any]]):
        self._status = status

    @property
    def herd_node(self) -> HerdNode:
        """The node, as the herd node it is (the admin actor runs on herd nodes only)."""
        return cast("HerdNode", self.node)

    def receive(self, message, ctx):
        op = message.get("op") if isinstance(message, dict) else message
        if op == "status":
            return self._status()
        if op == "ping":
            return {"pong": self.node.name}
        if op == "actors":
            return actors_report(self.node.stats())
        if op == "owner" and isinstance(message, dict):
            return self._owner(message)
        if op == "tell" and isinstance(message, dict):
            return self._tell(message, ctx)
        if op in ("owner", "tell"):
            raise BadRequest(f"admin request {op!r} takes arguments: {_USAGE}")
        raise BadRequest(f"unknown admin request {op!r}; {_USAGE}")

    def _owner(self, request: dict) -> dict[str, Any]:
        kind, key = request.get("kind"), request.get("key")
        if not isinstance(kind, str) or not isinstance(key, str):
            raise BadRequest(f"'owner' needs a string 'kind' and 'key', not {kind!r} and {key!r}")
        node = self.herd_node
        try:
            node.ref_for(kind, key)  # makes no actor; raises for a kind not registered here
            registered = True
        except ActorNotFound:
            registered = False
        return {
            "node": node.name,
            "kind": kind,
            "key": key,
            "ring_key": placement_key(kind, key),
            "owner": node.owner(kind, key),
            "live": sorted(node.membership.live()),
            "registered": registered,
        }

    def _tell(self, request: dict, ctx: Context) -> None:
        target, kind = request.get("target"), request.get("kind")
        if not isinstance(target, str) or not target or not (kind is None or isinstance(kind, str)):
            raise BadRequest(f"'tell' needs a string 'target' and an optional string 'kind', not {target!r}, {kind!r}")
        node = self.herd_node
        if kind is None:
            try:
                dest, name = parse_target(target, node.name)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            path = f"{name}@{dest}"
        else:
            dest, path = node.owner(kind, target), placement_key(kind, target)
        deferred = ctx.defer()  # every outcome below answers through it, herdrt's errors typed as they are
        try:
            if dest == node.name or request.get("forwarded"):
                ref = node.lookup(name) if kind is None else node.ref_for(kind, target)  # ActorNotFound
                ref.tell(request.get("message"))  # MailboxFull, ActorStopped
                deferred.reply({"told": path, "node": node.name})
                return
            if kind is not None:
                node.ref_for(kind, target)  # a kind not registered here: ActorNotFound, as for a local key
            # The target lives elsewhere: that node's admin actor delivers it and confirms.
            pending = node.lookup(f"{ADMIN_ACTOR}@{dest}").ask({**request, "forwarded": True})  # NodeUnavailable
        except HerdError as exc:
            deferred.fail(exc)
            return
        asyncio.ensure_future(pending).add_done_callback(lambda fut: _settle(deferred, fut))


def _settle(deferred: Deferred, fut: asyncio.Future) -> None:
    """Pass the outcome of a forwarded request on to the ask it answers."""
    if fut.cancelled():
        deferred.fail(HerdError("the forwarded request was cancelled"))
    elif fut.exception() is not None:
        exc = fut.exception()
        deferred.fail(exc if isinstance(exc, Exception) else HerdError(repr(exc)))
    else:
        deferred.reply(fut.result())


def actors_report(stats: dict[str, Any]) -> dict[str, Any]:
    """The actors of a node, from its :meth:`~herdrt.runtime.node.Node.stats`, msgpack-ready:
    ``{"node", "actors": [named actor rows], "keyed": [one row per kind of keyed actor]}``.

    A named actor's row: ``name``, ``messages``, ``failures``, ``restarts``, ``mailbox_depth``,
    ``mailbox_size`` (None: unbounded). A kind's row: ``kind``, ``running`` (keyed actors of that
    kind running here), ``messages``, ``failures``, ``mailbox_depth`` (the counts include its
    actors that have stopped, e.g. moved to another node)."""
    named = [
        {
            "name": name,
            "messages": s["messages"],
            "failures": s["failures"],
            "restarts": s["restarts"],
            "mailbox_depth": s["mailbox_depth"],
            "mailbox_size": None if s["mailbox_size"] >= sys.maxsize else s["mailbox_size"],
        }
        for name, s in sorted(stats["actors"].items())
        if family_of(name) is None
    ]
    keyed = [
        {
            "kind": kind,
            "running": view["actors"],
            "messages": view["messages"],
            "failures": view["failures"],
            "mailbox_depth": view["mailbox_depth"],
        }
        for kind, view in sorted(stats["families"].items())
    ]
    return {"node": stats["node"], "actors": named, "keyed": keyed}
