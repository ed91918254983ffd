"""Herd -> service: the proxy actor standing for each name a service serves, and what the
proxies send (tells batched per loop turn, asks completed by the service's REPLY, the node's
replies to asks the service performed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from ..errors import FrameTooLarge, MailboxFull, NodeUnavailable, RemoteError
from ..herd import protocol as P
from ..runtime.actor import Actor, Deferred
from . import wire

if TYPE_CHECKING:
    from ..herd.node import HerdNode
    from .router import Router
    from .services import Service

__all__ = ["Proxy", "Proxies"]

#: The proxies' counters (in the dict they are given).
COUNTERS = (
    "tells_to_services",
    "tells_batches_to_services",
    "asks_to_services",
    "replies_from_services",
    "stray_replies",
    "dropped_tells",
    "failed_asks",
    "refused_replies",
)


class Proxy(Actor):
    """Stands on the bridge node for one name a service serves: forwards tells and asks to it.

    An ask is not answered by the handler: the proxy defers it (``ctx.defer()``) and the
    service's REPLY answers it later, so many asks to one service are in flight at once. The
    asker's usual timeout still applies.
    """

    def __init__(self, forward: Callable[[str, Any, Deferred | None], None]):
        self._forward = forward
        self._served = ""

    def on_start(self):
        self._served = self.name

    def receive(self, message, ctx):
        self._forward(self._served, message, ctx.defer() if ctx.is_ask else None)


class Proxies:
    """What the proxies of one bridge send to services (``owners``: served name -> its service)."""

    def __init__(
        self,
        node: HerdNode,
        router: Router,
        owners: Mapping[str, Service],
        counters: dict[str, int],
        *,
        max_frame_size: int,
    ):
        self.node = node
        self.router = router
        self.owners = owners
        self.counters = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.max_frame_size = max_frame_size
        packer = msgpack.Packer(use_bin_type=True)
        self._pack = packer.pack
        self._pack_array_header = packer.pack_array_header
        self._me_packed = packer.pack(node.name)
        self._tells_waiting: list[Service] = []  # services holding tells (see tell)
        self._tells_due = False

    def spawn(self, name: str) -> None:
        """Put the proxy for ``name`` on the node."""
        self.node.spawn(Proxy, self.forward, name=name)

    def forward(self, name: str, message: Any, deferred: Deferred | None) -> None:
        """A proxy's message for the service serving ``name``: an ask to answer through
        ``deferred`` (its id is the ASK's corr on the wire), or a tell (``deferred`` None)."""
        svc = self.owners.get(name)
        if svc is None or not svc.live:
            why = "no service serves it" if svc is None else f"service {svc.name} is evicted or disconnected"
            if deferred is not None:
                self.counters["failed_asks"] += 1
                deferred.fail(NodeUnavailable(f"{name}@{self.node.name} is unavailable: {why}"))
            else:
                self.counters["dropped_tells"] += 1
                self.node.dead_letters.record(f"{name}@{self.node.name}", "service_unavailable", message)
            return
        if deferred is None:
            self.tell(svc, name, message)
            return
        me, corr = self.node.name, deferred.id
        svc.pending[corr] = deferred
        try:
            sent = self.send(svc, [P.ASK, me, name, message, me, corr])
        except (TypeError, ValueError, OverflowError, FrameTooLarge) as exc:  # msgpack cannot carry it, or too big
            del svc.pending[corr]
            self.counters["failed_asks"] += 1
            deferred.fail(exc)  # the asker learns why; the proxy goes on
            return
        if sent:
            self.counters["asks_to_services"] += 1
        else:
            del svc.pending[corr]
            self.counters["failed_asks"] += 1
            deferred.fail(
                MailboxFull(f"the bridge outbox to service {svc.name} is full ({self.router.settings.max_queued})")
            )

    def tell(self, svc: Service, name: str, message: Any) -> None:
        """Pack a tell for ``svc`` and hold it until the end of this loop turn (or until anything
        else is sent to ``svc``): consecutive tells to one name then leave as one TELLS, under
        ``max_frame_size``. A lone tell leaves as TELL. Never waits for more than the turn."""
        body = self._pack(message)  # TypeError/ValueError: msgpack cannot carry it
        size = len(body)
        overhead = 16 + len(self._me_packed) + 4 * len(name)  # array headers, kind, node, name (UTF-8)
        if size + overhead > self.max_frame_size:
            raise FrameTooLarge(
                f"a tell of {size} bytes for service {svc.name} is over max_frame_size {self.max_frame_size}"
            )
        if svc.tell_bodies and (svc.tell_name != name or svc.tell_size + size + overhead > self.max_frame_size):
            self.flush(svc)
        if not svc.tell_bodies:
            svc.tell_name = name
            self._tells_waiting.append(svc)
            if not self._tells_due:
                self._tells_due = True
                self.router.loop.call_soon(self.flush_all)
        svc.tell_bodies.append(body)
        svc.tell_size += size

    def flush_all(self) -> None:
        """Send every tell held (the end of the loop turn, or the bridge closing)."""
        self._tells_due = False
        waiting, self._tells_waiting = self._tells_waiting, []
        for svc in waiting:
            if svc.tell_bodies:
                self.flush(svc)

    def flush(self, svc: Service) -> None:
        """Send the tells ``svc`` holds: ``[2, node, name, body]`` for one, else
        ``[15, node, name, [body, ...]]`` (bodies are packed already: the envelope is joined)."""
        bodies = svc.tell_bodies
        n = len(bodies)
        svc.tell_bodies = []
        svc.tell_size = 0
        c = self.counters
        if not svc.live:
            self._dropped(svc, n)
            return
        head = (
            self._pack_array_header(4) + (b"\x02" if n == 1 else b"\x0f") + self._me_packed + self._pack(svc.tell_name)
        )
        if n == 1:
            data = head + bodies[0]
        else:
            data = head + self._pack_array_header(n) + b"".join(bodies)
        if self.router.send(svc, data):
            c["tells_to_services"] += n
            c["tells_batches_to_services"] += 1
        else:
            self._dropped(svc, n)

    def _dropped(self, svc: Service, n: int) -> None:
        self.counters["dropped_tells"] += n
        self.node.dead_letters.record(f"{svc.tell_name}@{self.node.name}", "service_unavailable", count=n)

    def send(self, svc: Service, env: list) -> bool:
        """Send to a live service; False if it could not be sent or queued (counted by the router).

        Raises TypeError/ValueError if msgpack cannot carry ``env``, FrameTooLarge if it is over
        ``max_frame_size``. Tells held for ``svc`` go first (message order is FIFO)."""
        body = self._pack(env)
        if len(body) > self.max_frame_size:
            raise FrameTooLarge(
                f"a message of {len(body)} bytes for service {svc.name} is over max_frame_size {self.max_frame_size}"
            )
        if svc.tell_bodies:
            self.flush(svc)
        return self.router.send(svc, body)

    def responder(self, svc: Service) -> Callable[[int, bool, Any], None]:
        """``respond(corr, ok, value)``: the node's REPLY to an ask ``svc`` performed (made once per service)."""
        respond = svc.respond
        if respond is None:

            def respond(corr: int, ok: bool, value: Any) -> None:
                if svc.live:
                    try:
                        self.send(svc, [P.REPLY, svc.name, corr, ok, value])
                    except (TypeError, ValueError, FrameTooLarge) as exc:  # a reply msgpack cannot carry
                        self.send(svc, [P.REPLY, svc.name, corr, False, [type(exc).__name__, str(exc)]])

            svc.respond = respond
        return respond

    def reply(self, svc: Service, env: list) -> None:
        """REPLY from the service: completes the herd's ask its proxy forwarded."""
        if len(env) < 5 or env[2].__class__ is not int or env[3].__class__ is not bool:
            message = "REPLY is [6, dest, corr:int, ok:bool, value]"
            if len(env) >= 3 and env[2].__class__ is int and env[2] in svc.pending:
                self.refused_reply(svc, env[2], P.E_PROTOCOL, message)
            raise wire.Refused(P.E_PROTOCOL, message)
        corr, ok, value = env[2], env[3], env[4]
        if svc.pending.pop(corr, None) is None:
            self.counters["stray_replies"] += 1  # timed out already, or never asked
            return
        self.counters["replies_from_services"] += 1
        # As a REPLY over a link: herdrt's own error types keep their type, others are RemoteError.
        self.node.resolve(corr, ok, value)

    def refused_reply(self, svc: Service, corr: int, code: str, message: str) -> None:
        """A REPLY from ``svc`` that the bridge refused (over ``max_frame_size``, an ext type
        inside, a wrong shape) but whose corr it could read: the ask it answers fails now with
        the reason (``FrameTooLarge`` for a body over the limit, else a ``RemoteError`` of type
        ``ProtocolError``), not at the asker's timeout. Counted in ``refused_replies``."""
        deferred = svc.pending.pop(corr, None)
        if deferred is None:
            self.counters["stray_replies"] += 1
            return
        self.counters["refused_replies"] += 1
        self.counters["failed_asks"] += 1
        reason = f"the reply of service {svc.name} was refused by the bridge: {message}"
        deferred.fail(FrameTooLarge(reason) if code == P.E_FRAME else RemoteError("ProtocolError", reason))
