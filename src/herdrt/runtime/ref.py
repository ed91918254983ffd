"""Actor references: the only handle user code holds on an actor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cell import Cell
    from .node import Node

__all__ = ["ActorRef", "Poster", "Sender", "cell_of"]


class Poster(Protocol):
    """What a ref posts through: ``post(message, corr=0)`` (``corr`` 0 for a tell, else the id of
    an ask in the node's pending table). ``ref.tell`` is one."""

    def __call__(self, message: Any, corr: int = 0, /) -> None: ...


class Sender(Protocol):
    """What a remote ref's ``send`` goes through (the herd's credit window, ``Node.outflow``):
    ``send(message)`` / ``send_many(messages)`` return None once sent, or an awaitable that is
    done when it is; ``closed`` says the window is gone and a new one must be asked for."""

    closed: bool

    def send(self, message: Any, /) -> Awaitable[None] | None: ...

    def send_many(self, messages: list, /) -> Awaitable[None] | None: ...


class ActorRef:
    """A handle on one actor, ``name@node``; cheap to copy, hashable, compares by path.

    * ``ref.tell(message)`` — fire and forget. Raises :class:`~herdrt.errors.MailboxFull` (a full
      mailbox under the ``block`` or ``reject`` policy; the ``drop_*`` policies drop and count) or
      :class:`~herdrt.errors.ActorStopped`.
    * ``await ref.ask(message, timeout=None)`` — the reply (the handler's return value or
      ``ctx.reply``). Raises :class:`~herdrt.errors.AskTimeout` after ``timeout`` seconds (the
      node's ``ask_timeout`` by default), :class:`~herdrt.errors.RemoteError` if the handler
      raised, :class:`~herdrt.errors.ActorStopped` if the actor stopped first. An actor asking
      itself, or closing a cycle of waiting actors on its node, gets
      :class:`~herdrt.errors.ActorError` at once instead of a deadlock.
    * ``await ref.send(message)`` — like ``tell``, but paced: it waits until the actor can take
      the message — while a local mailbox is full, or, for an actor on another node, until that
      node grants credit (so a sender that awaits ``send`` loses nothing and holds every node's
      memory bounded, through any number of hops). ``await ref.send_many(messages)`` sends a
      batch, in order. Raises like ``tell``, and :class:`~herdrt.errors.NodeUnavailable` if the
      target's node goes out of reach.

    A ref is resolved once, when it is made, to a *poster* ``post(message, corr=0)`` chosen by the
    node: the actor's own mailbox for a local actor, a link for a remote one, so a remote ref
    behaves exactly like a local one. ``tell`` *is* that poster and ``ask`` is bound to the node
    (attributes, not methods: no extra call on the hot path). A ref names one incarnation: after
    the actor stops, telling it raises ``ActorStopped`` even if a new actor took the name.
    """

    __slots__ = ("name", "node_name", "path", "tell", "ask", "_node", "_cell", "_flow", "__weakref__")

    tell: Poster
    ask: Callable[..., Awaitable[Any]]

    def __init__(self, node: Node, name: str, node_name: str, post: Poster, cell: Cell | None = None):
        self.name = name
        self.node_name = node_name
        self.path = f"{name}@{node_name}"
        self._node = node
        self._cell = cell
        self._flow: Sender | None = None  # a remote ref's credit window, on first send
        self.tell = post
        self.ask = partial(node.asks.ask, self, cell)

    async def send(self, message: Any) -> None:
        """Like :meth:`tell`, but waits until the actor can take it (see the class docstring)."""
        cell = self._cell
        if cell is not None:
            await cell.send(message)
            return
        waiter = self._outflow().send(message)
        if waiter is not None:
            await waiter

    async def send_many(self, messages: list) -> None:
        """:meth:`send` each of ``messages``, in order; to another node, in as few envelopes as
        credit allows."""
        cell = self._cell
        if cell is not None:
            for message in messages:
                await cell.send(message)
            return
        waiter = self._outflow().send_many(messages)
        if waiter is not None:
            await waiter

    def _outflow(self) -> Sender:
        flow = self._flow
        if flow is None or flow.closed:
            flow = self._node.outflow(self.name, self.node_name)
            if self.node_name != "*":  # a keyed actor's ("*") is looked up each time: it moves
                self._flow = flow
        return flow

    @property
    def is_local(self) -> bool:
        return self._cell is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"ActorRef({self.path!r})"


def cell_of(ref: ActorRef) -> Cell | None:
    """The runtime's cell behind a local ref (None for a remote one): for the runtime's modules."""
    return ref._cell
