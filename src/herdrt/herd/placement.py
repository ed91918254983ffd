"""Keyed actors, placed on the MD5 ring of the live nodes (PROTOCOL.md, *Placement*).

``register_kind(kind, cls)`` on every node, then ``ref_for(kind, key)`` anywhere: each message
goes to the node that owns ``"<kind>:<key>"`` on the ring now, which activates the actor on its
first message. When membership changes, a node stops the keyed actors it no longer owns, after
their ``on_handoff()``, whose state travels (HANDOFF) to the new owner and reaches the new copy's
``on_takeover(state)`` before its first message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import HashRing
from ..errors import ActorNotFound, NodeUnavailable
from ..runtime.actor import Actor
from ..runtime.ref import ActorRef
from . import protocol as P

if TYPE_CHECKING:
    from .node import HerdNode

__all__ = ["Placement", "placement_key", "ring_shares"]

log = logging.getLogger("herdrt.herd")

_MISSING = object()


def placement_key(kind: str, key: str) -> str:
    """The ring key of keyed actor ``(kind, key)``: ``"<kind>:<key>"`` (PROTOCOL.md, Placement)."""
    return f"{kind}:{key}"


def _keyed_name(kind: str, key: str) -> str:
    # A local actor name may not hold "@" (refs are "name@node"); escape it reversibly.
    return placement_key(kind, key).replace("%", "%25").replace("@", "%40")


def ring_shares(ring: HashRing) -> dict[str, float]:
    """The fraction of the 32-bit hash space each node of ``ring`` owns."""
    points = ring.points()
    shares = {node: 0 for node in ring.nodes}
    if not points:
        return {}
    prev = points[-1][0] - (1 << 32)
    for point, node in points:
        shares[node] += point - prev
        prev = point
    return {node: span / (1 << 32) for node, span in shares.items()}


class Placement:
    """The keyed actors of one node: the kinds it can activate, the ring, who runs here."""

    def __init__(self, node: HerdNode):
        self.node = node
        self.ring = HashRing([node.name])
        self._kinds: dict[str, tuple[type[Actor], tuple, dict]] = {}
        self._keyed: dict[str, tuple[str, str]] = {}  # local actor name -> (kind, key)
        self._handoffs: dict[tuple[str, str], Any] = {}  # state handed over, waiting for its actor

    @property
    def running(self) -> int:
        """Keyed actors running here."""
        return len(self._keyed)

    def register_kind(self, kind: str, actor_cls: type[Actor], args: tuple, spawn_options: dict) -> None:
        if not (isinstance(actor_cls, type) and issubclass(actor_cls, Actor)):
            raise TypeError(f"register_kind needs an Actor subclass, not {actor_cls!r}")
        self._kinds[kind] = (actor_cls, args, spawn_options)

    def owner(self, kind: str, key: str) -> str:
        return self.ring.lookup(placement_key(kind, str(key)))

    def ref_for(self, kind: str, key: str) -> ActorRef:
        node = self.node
        if kind not in self._kinds:
            raise ActorNotFound(f"no actor kind {kind!r} is registered on {node.name}; call register_kind first")
        key = str(key)
        ring_key = placement_key(kind, key)
        remote: dict[str, Callable[..., None]] = {}  # owner -> poster, made on first use
        me = node.name

        def post(message: Any, corr: int = 0) -> None:
            owner = self.ring.lookup(ring_key)
            if owner == me:
                local: Callable[..., None] = node.lookup(self.activate(kind, key)).tell  # a poster
                local(message, corr) if corr else local(message)
                return
            poster = remote.get(owner)
            if poster is None:
                poster = remote[owner] = node.remote_poster([kind, key], owner)
            poster(message, corr)

        return ActorRef(node, ring_key, "*", post)

    def activate(self, kind: str, key: str) -> str:
        """The local name of keyed actor ``(kind, key)``, spawned here if it does not run yet."""
        node = self.node
        name = _keyed_name(kind, key)
        if name not in node:
            try:
                cls, args, options = self._kinds[kind]
            except KeyError:
                raise ActorNotFound(f"no actor kind {kind!r} is registered on {node.name}") from None
            node.spawn(cls, *args, name=name, **options)
            self._keyed[name] = (kind, key)
            node.counters["activations"] += 1
            state = self._handoffs.pop((kind, key), _MISSING)
            if state is not _MISSING:
                node.take_over(name, state)
        return name

    def handed_over(self, kind: str, key: str, state: Any) -> None:
        """A HANDOFF arrived: the state waits for the actor's activation here."""
        self._handoffs[(kind, key)] = state

    def rebalance(self, live: set[str]) -> None:
        """The live nodes changed: rebuild the ring, and stop the keyed actors this node no
        longer owns, handing their state to the new owner."""
        node = self.node
        self.ring = HashRing(sorted(live), vnodes=self.ring.vnodes)
        moved = 0
        for name, (kind, key) in list(self._keyed.items()):
            owner = self.ring.lookup(placement_key(kind, key))
            if owner == node.name:
                continue
            del self._keyed[name]
            if name not in node:
                continue
            moved += 1
            state = node.hand_off(name)
            if state is not None:
                try:
                    node.send_to(owner, [P.HANDOFF, owner, kind, key, state])
                    node.counters["handoffs_out"] += 1
                except NodeUnavailable as exc:
                    log.warning("%s: hand-off of %s to %s lost: %s", node.name, name, owner, exc)
            node.scheduler.track(asyncio.ensure_future(node.stop(name)))
        if moved:
            node.counters["rebalances"] += 1
            log.info("%s: rebalance: %d keyed actors moved to their new owners", node.name, moved)
