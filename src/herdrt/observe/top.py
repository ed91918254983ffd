"""``herdrt top``: the herd view (:mod:`herdrt.observe.view`) live in a terminal, drawn with ``rich``.

:class:`HerdPoller` keeps one client link to each node, open across rounds, and asks every node's
admin actor for its status at once; :func:`render` draws a view as tables; :func:`run_top`
refreshes them once per interval (or prints one frame and returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import HerdConfig
from ..herd.admin import ADMIN_ACTOR
from ..herd.client import HerdClient
from .view import HerdWatch

__all__ = ["HerdPoller", "render", "run_top", "fmt_rate", "fmt_seconds"]

#: Seconds to wait for each node's answer, unless told otherwise.
DEFAULT_TIMEOUT = 1.0


class HerdPoller:
    """Asks every node of ``config`` for its status, each round, over one client link per node.

    A link stays open from round to round; a node that fails (refused, timed out, link lost) is
    reported as down for that round, and dialled afresh the next round.
    """

    def __init__(self, config: HerdConfig, *, timeout: float = DEFAULT_TIMEOUT, busiest: int = 10):
        self.config = config
        self.timeout = timeout
        self.watch = HerdWatch(config, busiest=busiest)
        #: How many times each node was dialled (once, while it stays healthy).
        self.dials: dict[str, int] = dict.fromkeys(config.nodes, 0)
        self._clients: dict[str, HerdClient] = {}

    async def poll(self) -> dict[str, Any]:
        """One round: every node's status, asked concurrently, folded into the next view."""
        names = list(self.config.nodes)
        answers = await asyncio.gather(*(self._status(name) for name in names))
        return self.watch.update(dict(zip(names, answers, strict=True)))

    async def _status(self, name: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                client = self._clients.get(name)
                if client is None:
                    self.dials[name] += 1
                    client = await HerdClient(self.config, name).connect(self.timeout)
                    self._clients[name] = client
                return await client.ask(ADMIN_ACTOR, "status", timeout=self.timeout)
        except Exception as exc:  # down, refused, slow, wrong secret: this round says so
            dropped = self._clients.pop(name, None)
            if dropped is not None:
                await _close(dropped)
            if isinstance(exc, TimeoutError) and not str(exc):
                return TimeoutError(f"no answer within {self.timeout:g} s")
            return exc

    async def close(self) -> None:
        """Close every client link."""
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(_close(client) for client in clients))


async def _close(client: HerdClient) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await client.close()


# --- formatting -------------------------------------------------------------------------------------


def fmt_rate(rate: float | None, unit: str = "/s") -> str:
    """A rate readably: ``-`` (not known yet), ``0/s``, ``2.5/s``, ``350/s``, ``1.2k/s``, ``3.4M/s``."""
    if rate is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale * 0.9995:
            return f"{rate / scale:.1f}{suffix}{unit}"
    if rate == 0:
        return f"0{unit}"
    return f"{rate:.1f}{unit}" if rate < 10 else f"{rate:.0f}{unit}"


def fmt_seconds(seconds: float | None) -> str:
    """A duration readably: ``-`` (none), ``350 µs``, ``1.25 ms``, ``2.10 s``."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _table(title: str, *columns: str) -> Table:
    """A compact table; columns named with a leading ``>`` are right-aligned (numbers)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for column in columns:
        right = column.startswith(">")
        table.add_column(column.lstrip(">"), justify="right" if right else "left", no_wrap=right)
    return table


def _add(table: Table, *cells: RenderableType) -> None:
    """Add a row; text cells are taken literally (names and errors come from the herd: a ``[`` in
    one is no console markup)."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


# --- the view, drawn --------------------------------------------------------------------------------


def render(view: dict[str, Any]) -> RenderableType:
    """Draw a view of :class:`~herdrt.observe.view.HerdWatch`: a header line, then tables of the
    nodes, the links, the busiest actors, the dead letters and (if any node runs one) the bridges."""
    parts: list[RenderableType] = [_header(view), _nodes(view), _links(view), _busiest(view), _dead_letters(view)]
    if any(node.get("bridge") for node in view["nodes"]):
        parts.append(_bridges(view))
    spaced: list[RenderableType] = [parts[0]]
    for part in parts[1:]:
        spaced += [Text(""), part]
    return Group(*spaced)


def _header(view: dict[str, Any]) -> Text:
    s = view["summary"]
    ok = s["nodes_up"] == s["nodes"]
    links_ok = s["links_up"] == s["links"]
    clock = time.strftime("%H:%M:%S", time.localtime(view["time"]))
    return Text.assemble(
        "nodes up ",
        (f"{s['nodes_up']}/{s['nodes']}", "bold green" if ok else "bold red"),
        "   links up ",
        (f"{s['links_up']}/{s['links']}", "bold green" if links_ok else "bold red"),
        "   ",
        (fmt_rate(s["rate"], "") + " msg/s", "bold"),
        f"   {s['messages']:,} messages   {clock}   ",
        ("herd ", "dim"),
        (str(view["herd"]), "cyan"),
    )


def _nodes(view: dict[str, Any]) -> RenderableType:
    table = _table(
        "nodes", "node", "state", ">pid", ">sees", ">msg/s", ">messages", ">mailbox", ">actors", ">ring", ">dead"
    )
    n = len(view["nodes"])
    errors = []
    for node in view["nodes"]:
        if not node["up"]:
            _add(table, Text(node["name"], "bold"), Text("DOWN", "bold red"), *(["-"] * 8))
            errors.append(Text.assemble((node["name"], "bold"), (f" DOWN: {node['error']}", "red")))
            continue
        dead = _count(node["dead_letters"])
        if node["dead_rate"]:
            dead += f" (+{fmt_rate(node['dead_rate'])})"
        _add(
            table,
            Text(node["name"], "bold"),
            Text("up", "green"),
            str(node["pid"]),
            Text(f"{node['sees']}/{n}", "" if node["sees"] == n else "yellow"),
            fmt_rate(node["rate"]),
            _count(node["messages"]),
            Text(_count(node["mailbox_depth"]), "yellow" if node["mailbox_depth"] else ""),
            _count(node["actors"]),
            f"{node['ring_share']:.1%}",
            Text(dead, "yellow" if node["dead_letters"] else ""),
        )
    return Group(table, *errors) if errors else table


def _links(view: dict[str, Any]) -> Table:
    table = _table("links", "link", "state", ">rtt")
    for link in view["links"]:
        state = Text("up", "green") if link["up"] else Text("DOWN", "bold red")
        _add(table, f"{link['a']} — {link['b']}", state, fmt_seconds(link["rtt"]))
    return table


def _busiest(view: dict[str, Any]) -> RenderableType:
    busy = [actor for actor in view["busiest"] if actor["messages"]]
    if not busy:
        return Text("busiest actors: none has handled a message yet", "dim")
    table = _table("busiest actors", "node", "actor", ">msg/s", ">messages", ">mailbox", ">p99 handler")
    for actor in busy:
        _add(
            table,
            actor["node"],
            actor["actor"],
            fmt_rate(actor["rate"]),
            _count(actor["messages"]),
            Text(_count(actor["mailbox_depth"]), "yellow" if actor["mailbox_depth"] else ""),
            fmt_seconds(actor.get("handler_p99")),
        )
    return table


def _dead_letters(view: dict[str, Any]) -> RenderableType:
    letters = view["dead_letters"]
    if not letters["total"]:
        return Text("dead letters: none", "dim")
    table = _table(f"dead letters: {letters['total']:,}", "reason", ">count")
    for reason, n in sorted(letters["by_reason"].items(), key=lambda item: (-item[1], item[0])):
        _add(table, reason, Text(f"{n:,}", "yellow"))
    return table


def _bridges(view: dict[str, Any]) -> Table:
    table = _table("bridge services", "node", "endpoint", "service", "live", "names", ">messages in")
    for node in view["nodes"]:
        bridge = node.get("bridge")
        if not bridge:
            continue
        services = bridge["services"] or {"-": None}
        for service, s in sorted(services.items()):
            _add(
                table,
                node["name"],
                bridge["endpoint"],
                service,
                "-" if s is None else Text("yes", "green") if s["live"] else Text("no", "red"),
                "-" if s is None else ", ".join(map(str, s["names"])) or "-",
                "-" if s is None else _count(s["messages_in"]),
            )
    return table


# --- the command ------------------------------------------------------------------------------------


async def run_top(
    config: HerdConfig,
    *,
    interval: float = 1.0,
    once: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    console: Console | None = None,
) -> dict[str, Any]:
    """Watch the herd of ``config``: a round every ``interval`` seconds, drawn on ``console``.

    Live, it redraws until cancelled (Ctrl-C), the terminal restored on the way out. With
    ``once``, it takes two rounds ``interval`` apart (so the rates are real), prints that frame and
    returns the view it drew."""
    console = console or Console()
    poller = HerdPoller(config, timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        view = await poller.poll()
        if once:
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
            view = await poller.poll()
            console.print(render(view))
            return view
        hint = Text(f"every {interval:g} s; Ctrl-C quits", "dim")
        with Live(Group(render(view), hint), console=console, auto_refresh=False, screen=True) as live:
            while True:
                await asyncio.sleep(max(0.0, started + interval - loop.time()))
                started = loop.time()
                view = await poller.poll()
                live.update(Group(render(view), hint), refresh=True)
    finally:
        await poller.close()
