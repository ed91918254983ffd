"""Broadcast: a message flooded along the links to every reachable node's subscribers, once each.

FLOOD ``[8, origin, incarnation, seq, topic, body]`` goes to every neighbor but the one it came
from and its origin; a node delivers ``body`` to its subscribers of ``topic`` the first time it
sees ``(origin, incarnation, seq)`` (the last 65,536 ids are remembered) and passes it on, so the
flood goes around failed nodes wherever the live graph allows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime.ref import ActorRef
from ..runtime.strict import check_msgpack
from . import protocol as P

if TYPE_CHECKING:
    from .node import HerdNode

__all__ = ["Broadcasts"]

log = logging.getLogger("herdrt.herd")

_SEEN_FLOODS = 65536  # broadcast ids remembered for de-duplication


class Broadcasts:
    """The broadcasts of one node: its subscribers, the ids it has seen, its own sequence."""

    def __init__(self, node: HerdNode):
        self.node = node
        self._subscribers: dict[str, list] = {}
        self._seq = 0
        self._seen: OrderedDict[tuple, None] = OrderedDict()

    def subscribe(self, topic: str, target: ActorRef | Callable[[Any], Any]) -> None:
        self._subscribers.setdefault(topic, []).append(target)

    def unsubscribe(self, topic: str, target) -> None:
        subs = self._subscribers.get(topic, [])
        if target in subs:
            subs.remove(target)

    def broadcast(self, topic: str, message: Any) -> None:
        node = self.node
        if node.strict_messages:
            check_msgpack(message)
        self._seq += 1
        incarnation = node.membership.incarnation
        env = [P.FLOOD, node.name, incarnation, self._seq, topic, message]
        self._seen_before((node.name, incarnation, self._seq))
        node.counters["broadcasts"] += 1
        node.flood(env)
        self._deliver(topic, message)

    def on_flood(self, peer: str, env: list) -> None:
        """A FLOOD that came from neighbor ``peer``."""
        if len(env) < 6:
            raise P.ProtocolError("FLOOD is [8, origin, incarnation, seq, topic, body]")
        origin, incarnation, seq, topic, message = env[1:6]
        if self._seen_before((origin, incarnation, seq)):
            return
        self.node.flood(env, (peer, origin))
        self._deliver(topic, message)

    def _seen_before(self, key: tuple) -> bool:
        seen = self._seen
        if key in seen:
            return True
        seen[key] = None
        if len(seen) > _SEEN_FLOODS:
            seen.popitem(last=False)
        return False

    def _deliver(self, topic: str, message: Any) -> None:
        node = self.node
        for target in list(self._subscribers.get(topic, ())):
            try:
                if isinstance(target, ActorRef):
                    target.tell(message)
                else:
                    target(message)
                node.counters["floods_delivered"] += 1
            except Exception:
                log.exception("%s: subscriber %r of %r failed", node.name, target, topic)
