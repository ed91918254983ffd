"""The services a bridge knows and their sessions: SERVICE_HELLO, REGISTER/UNREGISTER, BYE,
heartbeats and eviction, and which service serves which actor name.

A session is bound to the connection that said SERVICE_HELLO, not to a routing id anyone could
claim: the node assigns every routing id itself (a SERVICE_HELLO from an id the peer chose is
refused), and the router reports the close of that connection, which ends the session at once.
An evicted or disconnected service keeps its names, unavailable, until it says hello again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from ..errors import NodeUnavailable
from ..herd import protocol as P
from . import wire
from .router import Peer, Router

if TYPE_CHECKING:
    from ..herd.node import HerdNode
    from ..runtime.actor import Deferred

__all__ = ["Service", "Services"]

log = logging.getLogger("herdrt.bridge")

#: The registry's counters (in the dict it is given).
COUNTERS = ("hellos", "welcomed", "refused", "own_ids_refused", "evictions", "byes", "disconnects")


class Service(Peer):
    """One service known to the bridge: its connection (if live), names and asks in flight."""

    __slots__ = (
        "name",
        "names",
        "live",
        "last_heard",
        "last_beat",
        "beat_seq",
        "pending",
        "since",
        "tell_name",
        "tell_bodies",
        "tell_size",
        "respond",
    )

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.names: set[str] = set()
        self.live = False
        self.last_heard = 0.0
        self.last_beat = 0.0
        self.beat_seq = 0
        self.pending: dict[int, Deferred] = {}  # asks the service has yet to answer, by id
        self.since = time.time()
        # Tells to one of its names, packed and waiting for the end of this loop turn: a run of
        # them leaves as one TELLS (see Proxies.tell).
        self.tell_name = ""
        self.tell_bodies: list[bytes] = []
        self.tell_size = 0
        self.respond: Callable[[int, bool, Any], None] | None = None  # answers asks it performs (made once)

    def __str__(self) -> str:
        return f"service {self.name}"


class Services:
    """The registry: services by name, by routing id (``sessions``) and by connection, and the
    owner of each served actor name (``owners``); it keeps both tables, others may read them.
    ``spawn_proxy(name)`` puts the proxy actor for a newly served name on the node; releasing
    the name stops it."""

    def __init__(
        self,
        node: HerdNode,
        router: Router,
        counters: dict[str, int],
        *,
        sessions: dict[bytes, Service],
        owners: dict[str, Service],
        spawn_proxy: Callable[[str], None],
        heartbeat_interval: float,
        evict_after: float,
        max_frame_size: int,
    ):
        self.node = node
        self.router = router
        self.counters = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.spawn_proxy = spawn_proxy
        self.heartbeat_interval = heartbeat_interval
        self.evict_after = evict_after
        self.max_frame_size = max_frame_size
        self.by_name: dict[str, Service] = {}
        self.by_identity = sessions  # live sessions, by the routing id the node gave them
        self.by_fd: dict[int, Service] = {}  # live sessions, by the node-side socket of their connection
        self.owners = owners  # served actor name -> its service
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def _say(self, identity: bytes, env: list) -> bool:
        return self.router.send_direct(identity, self._pack(env))

    # -- a session -------------------------------------------------------------------------------

    def hello(self, identity: bytes, env: list, src_fd: int, now: float) -> None:
        """SERVICE_HELLO from ``identity`` (first from its connection ``src_fd``, or again): the
        service is welcomed and its names bound, or Refused (and a session on that id ends)."""
        c = self.counters
        c["hellos"] += 1
        try:
            if not wire.assigned_id(identity):
                c["own_ids_refused"] += 1
                raise wire.Refused(
                    P.E_PROTOCOL,
                    "this connection chose its own ZeroMQ routing id: leave ZMQ_ROUTING_ID "
                    "unset, the node assigns ids (so no one can claim a service's id once it left)",
                )
            settings = self.router.settings
            service, names = wire.parse_hello(env, secret=self.node.config.secret, curve=settings.curve)
            self._check_free(service, names)
        except wire.Refused:
            c["refused"] += 1
            known = self.by_identity.get(identity)
            if known is not None:  # a refused HELLO forgets the identity, whoever it was
                self.disconnect(known, "its connection sent a refused SERVICE_HELLO")
            raise
        prev = self.by_identity.get(identity)
        fd = src_fd if src_fd >= 0 else prev.fd if prev is not None else -1
        svc = self.by_name.get(service)
        if prev is not None and prev is not svc:
            self.disconnect(prev, f"its connection is now service {service!r}")
        if svc is None:
            svc = self.by_name[service] = Service(service)
        elif svc.identity is not None and svc.identity != identity:
            old = svc.identity
            self.disconnect(svc, "it connected again (SERVICE_HELLO from a new connection)")
            self._say(old, [P.BYE, "replaced by a newer connection"])
        for name in svc.names - set(names):
            self._unbind(name)
        svc.identity = identity
        svc.fd = fd
        if fd >= 0:
            self.by_fd[fd] = svc
        svc.live = True
        svc.last_heard = svc.last_beat = now
        svc.overflowing = False
        self.by_identity[identity] = svc
        c["welcomed"] += 1
        self._say(identity, [wire.WELCOME, self.node.name, self.heartbeat_interval, self.max_frame_size])
        for name in names:
            self._bind(svc, name)
        log.info("%s: service %s joined the bridge serving %s", self.node.name, service, ", ".join(names) or "no names")

    def register(self, svc: Service, env: list) -> None:
        if len(env) < 2:
            raise wire.Refused(P.E_PROTOCOL, "REGISTER is [13, names]")
        names = wire.parse_names(env[1], "REGISTER")
        self._check_free(svc.name, names)
        for name in names:
            self._bind(svc, name)

    def unregister(self, svc: Service, env: list) -> None:
        if len(env) < 2:
            raise wire.Refused(P.E_PROTOCOL, "UNREGISTER is [14, names]")
        for name in wire.parse_names(env[1], "UNREGISTER"):
            if self.owners.get(name) is svc:
                self._unbind(name)

    def bye(self, svc: Service, env: list) -> None:
        """BYE from the service: it is forgotten, names and all."""
        reason = wire.parse_bye(env)
        self.counters["byes"] += 1
        log.info("%s: service %s left the bridge: %s", self.node.name, svc.name, reason)
        self.disconnect(svc, f"it left ({reason})")
        for name in list(svc.names):
            self._unbind(name)
        del self.by_name[svc.name]

    def _check_free(self, service: str, names: list[str]) -> None:
        taken = []
        for name in names:
            owner = self.owners.get(name)
            if owner is not None:
                if owner.name != service and owner.live:
                    taken.append(f"{name} (served by {owner.name})")
            elif name in self.node:
                taken.append(f"{name} (a local actor)")
        if taken:
            raise wire.Refused(wire.E_NAME_TAKEN, f"names already taken on {self.node.name}: {', '.join(taken)}")

    def _bind(self, svc: Service, name: str) -> None:
        owner = self.owners.get(name)
        if owner is svc:
            return
        if owner is not None:  # an evicted service's name, taken over
            owner.names.discard(name)
        else:
            self.spawn_proxy(name)
        self.owners[name] = svc
        svc.names.add(name)

    def _unbind(self, name: str) -> None:
        svc = self.owners.pop(name, None)
        if svc is not None:  # a name it served is a proxy the bridge spawned
            svc.names.discard(name)
            # Free the name now (it can be registered again at once); the proxy still stops in
            # order: queued asks fail with ActorStopped, on_stop runs.
            self.node.release(name)

    # -- ending a session --------------------------------------------------------------------------

    def disconnect(self, svc: Service, reason: str) -> None:
        """Forget the service's connection: asks it owes fail now, what waited for it is dropped (counted)."""
        if svc.identity is not None:
            self.by_identity.pop(svc.identity, None)
            svc.identity = None
        if self.by_fd.get(svc.fd) is svc:
            del self.by_fd[svc.fd]
        svc.fd = -1
        svc.live = False
        dead = self.node.dead_letters.record
        held = len(svc.tell_bodies)
        if held:  # tells held for the end of the loop turn, to one name
            self.counters["dropped_tells"] += held
            dead(f"{svc.tell_name}@{self.node.name}", "service_unavailable", count=held)
        svc.tell_bodies = []
        svc.tell_size = 0
        queued = self.router.forget(svc)
        if queued:  # packed already, to any of its names
            self.counters["dropped_tells"] += queued
            dead(f"(service {svc.name})", "service_unavailable", count=queued)
        pending, svc.pending = svc.pending, {}
        if pending:
            exc = NodeUnavailable(f"service {svc.name} on {self.node.name} is unavailable: {reason}")
            for deferred in pending.values():
                deferred.fail(exc)
            self.counters["failed_asks"] += len(pending)

    def evict(self, svc: Service, reason: str) -> None:
        """End a session the service did not end (silence, a connection ZeroMQ lost): its names
        stay, unavailable, until it says SERVICE_HELLO again."""
        self.counters["evictions"] += 1
        log.warning(
            "%s: service %s evicted: %s; its names %s are unavailable until it says SERVICE_HELLO again",
            self.node.name,
            svc.name,
            reason,
            ", ".join(sorted(svc.names)) or "(none)",
        )
        identity = svc.identity
        self.disconnect(svc, f"evicted: {reason}")
        if identity is not None:
            self._say(identity, [P.BYE, f"evicted: {reason}"])

    def connection_closed(self, fd: int) -> None:
        """The router saw connection ``fd`` close: its session (if any) ends at once."""
        svc = self.by_fd.get(fd)
        if svc is not None and svc.live:
            self.counters["disconnects"] += 1
            log.info(
                "%s: service %s disconnected without BYE; its names %s are unavailable until it "
                "says SERVICE_HELLO again",
                self.node.name,
                svc.name,
                ", ".join(sorted(svc.names)) or "(none)",
            )
            self.disconnect(svc, "its connection closed")

    def shut(self, reason: str) -> None:
        """Say BYE to every live service and end its session (the bridge is closing)."""
        for svc in self.by_name.values():
            if svc.live and svc.identity is not None:
                self._say(svc.identity, [P.BYE, reason])
                self.disconnect(svc, "the bridge closed")

    # -- liveness ----------------------------------------------------------------------------------

    def tick(self, now: float, judge: bool) -> None:
        """Heartbeats to live services; evict the silent ones (only if ``judge``: not while the
        bridge is not reading); forget asks the asker stopped waiting for (timed out)."""
        for svc in list(self.by_name.values()):
            if not svc.live:
                continue
            silent = now - svc.last_heard
            if judge and silent > self.evict_after:
                self.evict(svc, f"silent for {silent:.2f}s")
                continue
            if now - svc.last_beat >= self.heartbeat_interval * 0.95:
                svc.last_beat = now
                svc.beat_seq += 1
                self.router.send(svc, self._pack([P.HEARTBEAT, svc.beat_seq, time.time()]))
            if svc.pending:
                svc.pending = {i: d for i, d in svc.pending.items() if d.waiting}

    def heard_all(self, now: float) -> None:
        """Count every live service as heard now (they could not be heard while the bridge did not read)."""
        for svc in self.by_name.values():
            if svc.live and svc.last_heard < now:
                svc.last_heard = now

    def stats(self, now: float) -> dict:
        return {
            svc.name: {
                "live": svc.live,
                "routing_id": svc.identity.hex() if svc.identity is not None else None,
                "names": sorted(svc.names),
                "pending_asks": len(svc.pending),
                "queued": len(svc.outbox),
                "silent_for": round(now - svc.last_heard, 3),
                "messages_in": svc.messages_in,
                "messages_out": svc.messages_out,
            }
            for svc in self.by_name.values()
        }
