"""Credit-based flow control across the herd: ``await ref.send(message)`` to an actor on another node.

The target's node decides how much may be in flight to each of its actors, and says so in
*credit*. Nothing else in the herd has to buffer for a sender that awaits:

* **Sender's node** — one :class:`Outflow` per (target node, target actor): a *window*, numbered
  so that a window reopened later is never taken for an old one. It opens with an empty SEND;
  then each message is the ``seq``-th of the window, and may leave only while ``seq < limit``,
  the limit the target's node last granted. ``send`` returns at once while there is credit, and
  otherwise waits in line (FIFO: the line is sent, in order, as credit comes).
* **Target's node** — one :class:`Inflow` per (sender node, actor). It delivers credited
  messages even past the mailbox's capacity (the credit bounds them), and grants credit from the
  actor's free room: every window of the actor together never exceeds it (at most
  ``CREDIT_CAP`` for a mailbox without a bound), each window at most ``WINDOW_MAX``, split
  fairly among the senders. It grants when a quarter of a window is free (or the sender is
  stalled), and otherwise watches the mailbox until the actor has worked it down.
* **Nodes in between** pass SEND and CREDIT on like any envelope, outside ``max_queued``:
  everything in flight to an actor is bounded by the room it granted.

A window whose path fails (the link it left by closes) is reopened on the next route; a window
whose node becomes unreachable fails its waiting senders with ``NodeUnavailable``. Either way the
messages sent but not yet confirmed (``delivered`` in the last CREDIT) are dead letters of the
sender's node, reason ``in_doubt``: some may have arrived, none is lost uncounted. A target that
stops or does not exist closes the window with an error (CREDIT's last field), which waiting
senders raise.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, ActorStopped, HerdError, NodeUnavailable
from ..runtime.ref import ActorRef
from ..runtime.strict import check_msgpack
from . import protocol as P
from .link import Link, LinkClosed, LinkOverflow

if TYPE_CHECKING:
    from .node import HerdNode

__all__ = ["WINDOW_MAX", "CREDIT_CAP", "LocalSender", "Outflow", "Outflows", "Inflow", "Inflows"]

#: The most credit one window holds at a time.
WINDOW_MAX = 4096
#: The room counted for a mailbox with no bound (or a larger one): what all of an actor's
#: windows, plus its queue, may hold.
CREDIT_CAP = 16384
#: A sender that always has credit never waits, so it would never let the loop write what it
#: sent or read the credit coming back: ``send`` yields once every this many + 1 messages.
_YIELD_EVERY = 511


def _key(dest: str, target: str | list) -> tuple:
    return dest, target if target.__class__ is str else tuple(target)


class LocalSender:
    """``ref.send`` to a keyed actor the ring placed on this node: its mailbox paces it."""

    closed = True  # looked up again at the next send: the actor may move

    def __init__(self, ref: ActorRef):
        self.ref = ref

    def send(self, message: Any) -> Awaitable[None]:
        return self.ref.send(message)

    def send_many(self, messages: list) -> Awaitable[None]:
        return self.ref.send_many(messages)


class Outflow:
    """One window of credited messages from this node to ``target`` on node ``dest``."""

    __slots__ = ("flows", "key", "dest", "target", "path", "window", "link", "sent", "limit", "delivered",
                 "waiting", "closed", "used", "strict")  # fmt: skip

    def __init__(self, flows: Outflows, dest: str, target: str | list, window: int, link: Link):
        self.flows = flows
        self.key = _key(dest, target)  # (its place in Outflows.by_key)
        self.strict = flows.strict
        self.dest = dest
        self.target = target
        self.path = f"{target}@{dest}" if target.__class__ is str else repr(target)
        self.window = window
        self.link = link
        self.sent = 0  # messages of this window handed to the link
        self.limit = 0  # ...and how many the target's node allows
        self.delivered = 0  # ...and how many it confirmed
        self.waiting: collections.deque[list] = collections.deque()  # [future, messages, next index]
        self.closed = False
        self.used = True

    def send(self, message: Any) -> Awaitable[None] | None:
        """Send ``message`` now if there is credit (returns None), else queue it: the future is
        done once it is sent. Raises ``NodeUnavailable`` when no path is left."""
        if self.strict:
            check_msgpack(message)  # strict mode: what would not survive msgpack fails here
        sent = self.sent
        if sent < self.limit and not self.waiting:
            try:
                self.link.send_credited(self.dest, self.target, message, self.window, sent)
            except (LinkClosed, LinkOverflow):
                return self.flows.path_failed(self, [message])
            self.sent = sent = sent + 1
            self.used = True
            if not sent & _YIELD_EVERY:
                return asyncio.sleep(0)  # let the link write and credit come back meanwhile
            return None
        return self._wait([message])

    def send_many(self, messages: list) -> Awaitable[None] | None:
        """:meth:`send` for several messages, in order: those there is credit for leave now."""
        if self.strict:
            for message in messages:
                check_msgpack(message)
        if not self.waiting:
            n = min(len(messages), self.limit - self.sent)
            if n > 0:
                before = self.sent
                done = self._push(messages, 0, n)
                if done < n:
                    return self.flows.path_failed(self, messages[done:])
                if n == len(messages):
                    if (before | _YIELD_EVERY) < self.sent:  # crossed a multiple of _YIELD_EVERY + 1
                        return asyncio.sleep(0)
                    return None
                messages = messages[n:]
        return self._wait(list(messages))

    def _push(self, messages: list, start: int, n: int) -> int:
        """Hand ``messages[start:start + n]`` to the link; how many it took (all, unless it closed)."""
        send, dest, target, window, seq = self.link.send_credited, self.dest, self.target, self.window, self.sent
        first = seq
        try:
            for i in range(start, start + n):
                send(dest, target, messages[i], window, seq)
                seq += 1
        except (LinkClosed, LinkOverflow):
            pass
        self.sent = seq
        self.used = True
        return seq - first

    def _wait(self, messages: list) -> asyncio.Future:
        fut = self.flows.node.scheduler.loop.create_future()
        self.waiting.append([fut, messages, 0])
        return fut

    def on_credit(self, delivered: int, limit: int) -> None:
        """A CREDIT for this window: send what waits, as far as the new limit allows."""
        if delivered > self.delivered:
            self.delivered = delivered
        if limit > self.limit:
            self.limit = limit
        self.pump()

    def pump(self) -> None:
        waiting = self.waiting
        while waiting and self.sent < self.limit:
            entry = waiting[0]
            fut, messages, start = entry
            if fut.done():  # its sender gave up (cancelled): what it had not sent stays unsent
                waiting.popleft()
                continue
            n = min(len(messages) - start, self.limit - self.sent)
            done = self._push(messages, start, n)
            entry[2] = start + done
            if done < n:
                self.flows.path_failed(self, None)
                return
            if start + n == len(messages):
                waiting.popleft()
                fut.set_result(None)

    def take_waiting(self) -> collections.deque[list]:
        waiting, self.waiting = self.waiting, collections.deque()
        return waiting

    def fail(self, exc: HerdError) -> None:
        """Close the window: its waiting senders raise ``exc``."""
        self.closed = True
        for fut, messages, start in self.take_waiting():
            if not fut.done():
                error = type(exc)(str(exc))
                error.unsent = len(messages) - start  # type: ignore[attr-defined]  # never sent: for who waits
                fut.set_exception(error)


class Outflows:
    """This node's credit windows to actors on other nodes, by (node, target) and by number."""

    def __init__(self, node: HerdNode, link_to: Callable[[str], Link]):
        self.node = node
        self.strict = node.strict_messages
        self._link_to = link_to
        self.by_key: dict[tuple, Outflow] = {}
        self.by_window: dict[int, Outflow] = {}
        self._next = random.getrandbits(30)  # windows of an earlier run of this node are not ours
        self.counters = {"windows_opened": 0, "windows_reopened": 0, "windows_failed": 0, "credits_in": 0}

    def get(self, dest: str, target: str | list) -> Outflow:
        """The open window to ``target`` on ``dest`` (opened now if need be); NodeUnavailable."""
        key = _key(dest, target)
        flow = self.by_key.get(key)
        if flow is None:
            flow = Outflow(self, dest, target, self._new_window(), self._link_to(dest))
            self.by_key[key] = flow
            self.by_window[flow.window] = flow
            self.counters["windows_opened"] += 1
            self._open(flow)
        return flow

    def _new_window(self) -> int:
        self._next = (self._next + 1) & 0x3FFFFFFF
        return self._next

    def _open(self, flow: Outflow) -> None:
        flow.link.send_control([P.SEND, flow.dest, flow.target, [], self.node.name, flow.window, 0])

    def on_credit(self, env: list) -> None:
        """``[CREDIT, me, window, delivered, limit, error|nil]``."""
        _, _, window, delivered, limit, error = env[:6]
        if window.__class__ is not int or delivered.__class__ is not int or limit.__class__ is not int:
            raise P.ProtocolError("CREDIT is [17, dest_node, window:int, delivered:int, limit:int, error|nil]")
        flow = self.by_window.get(window)
        if flow is None:  # a window closed since (or never ours): nothing waits on it
            return
        self.counters["credits_in"] += 1
        if error is None:
            flow.on_credit(delivered, limit)
            return
        if delivered > flow.delivered:
            flow.delivered = delivered
        type_name, message = (error[0], error[1]) if error.__class__ is list and len(error) >= 2 else ("", error)
        cls = {"ActorNotFound": ActorNotFound, "ActorStopped": ActorStopped}.get(str(type_name), NodeUnavailable)
        self._close(flow, cls(str(message)))

    def _close(self, flow: Outflow, exc: HerdError, in_doubt: bool = True) -> None:
        self.by_key.pop(flow.key, None)
        self.by_window.pop(flow.window, None)
        if in_doubt:
            self._in_doubt(flow)
        self.counters["windows_failed"] += 1
        flow.fail(exc)

    def _in_doubt(self, flow: Outflow) -> None:
        doubt = flow.sent - flow.delivered
        if doubt > 0:
            self.node.dead_letters.record(flow.path, "in_doubt", None, doubt)
        flow.sent = flow.delivered = flow.limit = 0

    def path_failed(self, flow: Outflow, unsent: list | None) -> asyncio.Future | None:
        """The link ``flow`` left by is gone: reopen the window on the next route, with
        ``unsent`` (a caller's messages the link did not take) in line; returns their future.
        With no route left the window closes, and the caller gets NodeUnavailable."""
        self.reopen(flow)
        if flow.closed:
            if unsent is not None:
                raise NodeUnavailable(f"node {flow.dest} is unreachable from {self.node.name}")
            return None
        return flow._wait(unsent) if unsent is not None else None

    def reopen(self, flow: Outflow) -> None:
        try:
            link = self._link_to(flow.dest)
        except NodeUnavailable as exc:
            self._close(flow, exc)
            return
        self.by_window.pop(flow.window, None)
        self._in_doubt(flow)
        flow.window = self._new_window()
        flow.link = link
        self.by_window[flow.window] = flow
        self.counters["windows_reopened"] += 1
        try:
            self._open(flow)
        except (LinkClosed, LinkOverflow) as exc:
            self._close(flow, NodeUnavailable(f"node {flow.dest}: {exc}"))

    def link_down(self, link: Link) -> None:
        for flow in [f for f in self.by_key.values() if f.link is link]:
            self.reopen(flow)

    def unreachable(self, live: set[str]) -> None:
        """Membership changed: close the windows to nodes no longer live."""
        for flow in [f for f in self.by_key.values() if f.dest not in live]:
            self._close(flow, NodeUnavailable(f"node {flow.dest} is unreachable from {self.node.name}"))

    def sweep(self) -> None:
        """Forget windows idle for a whole sweep, all their messages confirmed."""
        for key, flow in list(self.by_key.items()):
            if flow.used or flow.waiting or flow.delivered < flow.sent:
                flow.used = False
                continue
            del self.by_key[key]
            self.by_window.pop(flow.window, None)
            flow.closed = True

    def close(self, exc: HerdError) -> None:
        """This node shuts down: waiting senders raise ``exc``; what was sent is on its way."""
        for flow in list(self.by_key.values()):
            self._close(flow, exc, in_doubt=False)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "windows": len(self.by_key),
            "waiting_senders": sum(len(f.waiting) for f in self.by_key.values()),
        }


class Inflow:
    """One sender node's window to one local actor."""

    __slots__ = ("src", "name", "window", "delivered", "limit", "used")

    def __init__(self, src: str, name: str, window: int):
        self.src = src
        self.name = name
        self.window = window
        self.delivered = 0
        self.limit = 0
        self.used = True


class Inflows:
    """The credit this node grants to other nodes' windows, per local actor."""

    def __init__(self, node: HerdNode, local_name: Callable[[Any], str], send: Callable[[str, list], None]):
        self.node = node
        self._local_name = local_name
        self._send = send  # send_control to a node
        self.flows: dict[tuple[str, str], Inflow] = {}
        self.by_name: dict[str, list[Inflow]] = {}
        self._watching: set[str] = set()
        self._due: set[str] = set()
        self.counters = {"sends_in": 0, "credits_out": 0, "windows_refused": 0}

    def on_send(self, env: list) -> None:
        """``[SEND, me, target, [body, ...], src_node, window, seq]``: deliver, then grant."""
        _, _, target, bodies, src, window, seq = env[:7]
        if (
            bodies.__class__ is not list
            or src.__class__ is not str
            or window.__class__ is not int
            or seq.__class__ is not int
            or seq < 0
        ):
            raise P.ProtocolError("SEND is [16, dest_node, target, [body, ...], src_node:str, window:int, seq:int]")
        node = self.node
        try:
            name = self._local_name(target)
        except HerdError as exc:  # a keyed actor of a kind not registered here
            self._refuse(src, window, seq, bodies, f"{target!r}", ActorNotFound(str(exc)))
            return
        key = (src, name)
        flow = self.flows.get(key)
        if flow is None or flow.window != window or (not bodies and seq == 0):
            if flow is not None:
                self._drop(flow)
            flow = Inflow(src, name, window)
            self.flows[key] = flow
            self.by_name.setdefault(name, []).append(flow)
        flow.used = True
        if bodies:
            self.counters["sends_in"] += len(bodies)
            try:
                lost = node.deliver_many(name, bodies, src, True)
            except ActorNotFound as exc:  # (recorded as dead letters, reported to src)
                self._drop(flow)
                self._refuse(src, window, seq + len(bodies), None, name, exc)
                return
            if seq + len(bodies) > flow.delivered:
                flow.delivered = seq + len(bodies)
            if lost:  # the actor stopped: lost ones are dead letters, reported to src
                self._drop(flow)
                mailbox = node.mailbox(name)
                why = mailbox.closed_reason if mailbox is not None else "gone"
                self._refuse(
                    src, window, flow.delivered, None, name, ActorStopped(f"actor {name}@{node.name} stopped ({why})")
                )
                return
        self.grant(name)

    def _refuse(self, src: str, window: int, delivered: int, bodies: list | None, target: str, exc: HerdError) -> None:
        self.counters["windows_refused"] += 1
        if bodies:
            self.node.dead_letters.record(f"{target}@{self.node.name}", "unknown_actor", bodies[0], len(bodies), src)
        self._credit(src, [P.CREDIT, src, window, delivered, delivered, [type(exc).__name__, str(exc)]])

    def _credit(self, src: str, env: list) -> None:
        try:
            self._send(src, env)
            self.counters["credits_out"] += 1
        except (NodeUnavailable, LinkOverflow):
            pass  # the sender's node is gone: its windows close there

    def _drop(self, flow: Inflow) -> None:
        self.flows.pop((flow.src, flow.name), None)
        peers = self.by_name.get(flow.name)
        if peers is not None:
            if flow in peers:
                peers.remove(flow)
            if not peers:
                del self.by_name[flow.name]

    def grant(self, name: str) -> None:
        """Grant the windows to actor ``name`` what its free room allows."""
        flows = self.by_name.get(name)
        if not flows:
            return
        mailbox = self.node.mailbox(name)
        if mailbox is None or mailbox.capacity < 0:
            exc: HerdError = (
                ActorNotFound(f"no actor {name!r} on node {self.node.name}")
                if mailbox is None
                else ActorStopped(f"actor {name}@{self.node.name} stopped ({mailbox.closed_reason})")
            )
            for flow in list(flows):
                self._drop(flow)
                self._refuse(flow.src, flow.window, flow.delivered, None, name, exc)
            return
        capacity = min(mailbox.capacity, CREDIT_CAP)
        window = max(1, min(capacity, WINDOW_MAX) // len(flows))
        free = capacity - len(mailbox) - sum(f.limit - f.delivered for f in flows)
        wants = False
        for flow in flows:
            outstanding = flow.limit - flow.delivered
            give = min(window - outstanding, free)
            if give > 0 and (give * 4 >= window or outstanding == 0):
                flow.limit += give
                free -= give
                self._credit(flow.src, [P.CREDIT, flow.src, flow.window, flow.delivered, flow.limit, None])
            elif outstanding < window:
                wants = True
        if wants and name not in self._watching:
            self._watching.add(name)
            mailbox.when_room(lambda: self._woken(name))

    def _woken(self, name: str) -> None:
        # Called from inside the actor's batch: grant at the end of this loop turn, once.
        self._watching.discard(name)
        if not self._due:
            self.node.scheduler.loop.call_soon(self._grant_due)
        self._due.add(name)

    def _grant_due(self) -> None:
        due, self._due = self._due, set()
        for name in due:
            self.grant(name)

    def forget_node(self, src: str) -> None:
        """``src`` is gone: its windows hold no room any longer."""
        for flow in [f for f in self.flows.values() if f.src == src]:
            self._drop(flow)
            self.grant(flow.name)

    def sweep(self) -> None:
        for flow in list(self.flows.values()):
            if flow.used:
                flow.used = False
            else:
                self._drop(flow)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "windows": len(self.flows)}
