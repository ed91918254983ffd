"""Talk to a herd from outside it: what ``herdrt status``, ``tell`` and ``ask`` use.

A client dials one node over an ordinary herd link, under a name starting with ``~``, and proves
the herd secret in the same handshake as a node. It is no member: the node it dials performs its
tells and asks on its behalf, so it reaches every actor that node can reach.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from typing import Any

from ..config import HerdConfig
from ..errors import ActorNotFound, ActorStopped, AskTimeout, MailboxFull, NodeUnavailable, RemoteError
from . import protocol as P
from .link import Link, LinkClosed, LinkSettings
from .links import connect

__all__ = ["HerdClient", "parse_target"]

_client_ids = itertools.count(1)
_TYPED = {cls.__name__: cls for cls in (ActorNotFound, ActorStopped, MailboxFull, NodeUnavailable, AskTimeout)}


def parse_target(target: str, default_node: str) -> tuple[str, str]:
    """``"name@Node"`` -> ``("Node", "name")``; a bare ``"name"`` is on ``default_node``."""
    name, _, node = target.rpartition("@") if "@" in target else (target, "", "")
    if not name:
        raise ValueError(f"bad target {target!r}: use NAME or NAME@NODE")
    return (node or default_node), name


class HerdClient:
    """One authenticated link to node ``node`` of ``config``.

    ``async with HerdClient(config, "Bona") as c: await c.ask("echo@Clark", {"hi": 1})``.
    """

    def __init__(
        self, config: HerdConfig, node: str, *, address: tuple[str, int] | None = None, name: str | None = None
    ):
        self.config = config
        self.node = node
        self.address = address or config.node(node).address
        # Unique per client: a node replaces an older link from the same name (a restarted peer).
        self.name = name or f"{P.CLIENT_PREFIX}{socket.gethostname()}-{os.getpid()}-{next(_client_ids)}"
        self._link: Link | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._corr = itertools.count(1)

    async def connect(self, timeout: float = 5.0) -> HerdClient:
        """Dial the node and run the handshake. Raises ``OSError`` (e.g. ``ConnectionRefusedError``:
        nothing listens there), ``LinkRefused`` (wrong secret, unknown name) or ``TimeoutError``
        (saying which node and after how long) when that takes over ``timeout`` seconds."""
        settings = LinkSettings.from_config(
            self.config, self.name, known_nodes=frozenset([self.node]), handshake_timeout=timeout
        )
        host, port = self.address
        try:
            self._link = await asyncio.wait_for(
                connect(host, port, settings, self._on_envelopes, peer=self.node, on_link_down=self._down), timeout
            )
        except TimeoutError:
            raise TimeoutError(f"no link to node {self.node} at {host}:{port} within {timeout:g}s") from None
        return self

    async def __aenter__(self) -> HerdClient:
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        if self._link is not None:
            self._link.close("client done")
            await self._link.wait_closed()

    def _on_envelopes(self, link: Link, envs: list) -> None:
        for env in envs:
            if env[0] == P.REPLY:
                fut = self._pending.pop(env[2], None)
                if fut is not None and not fut.done():
                    ok, value = env[3], env[4]
                    if ok:
                        fut.set_result(value)
                    else:
                        type_name, message = value
                        cls = _TYPED.get(type_name)
                        fut.set_exception(cls(message) if cls else RemoteError(type_name, message))

    def _down(self, link: Link, reason: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NodeUnavailable(f"lost the link to {self.node}: {reason}"))
        self._pending.clear()

    def _envelope(self, kind: int, target: str, message: Any, kind_key: str | None) -> list:
        target_field: str | list[str]
        if kind_key is not None:
            dest, target_field = self.node, [kind_key, target]
        else:
            dest, target_field = parse_target(target, self.node)
        return [kind, dest, target_field, message]

    def tell(self, target: str, message: Any, *, kind: str | None = None) -> None:
        """Tell ``target`` (``name@Node``, or ``name`` on the node dialled; with ``kind``, the keyed
        actor ``(kind, target)``)."""
        if self._link is None:
            raise LinkClosed("not connected; call connect() first")
        self._link.send(self._envelope(P.TELL, target, message, kind))

    async def drain(self) -> None:
        """Wait until the link can take more tells (a flood of :meth:`tell` meets ``LinkOverflow``
        once ``max_queued`` wait; await this and go on)."""
        if self._link is None:
            raise LinkClosed("not connected; call connect() first")
        await self._link.drain()

    async def ask(self, target: str, message: Any, *, timeout: float = 5.0, kind: str | None = None) -> Any:
        """Ask ``target`` and return its reply; errors arrive typed as on a node."""
        if self._link is None:
            raise LinkClosed("not connected; call connect() first")
        corr = next(self._corr)
        fut = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        env = self._envelope(P.ASK, target, message, kind)
        self._link.send([*env, self.name, corr], True)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AskTimeout(f"no reply from {target} via {self.node} within {timeout:g}s") from None
        finally:
            self._pending.pop(corr, None)
