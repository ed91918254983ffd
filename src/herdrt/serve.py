"""Running herds: one node in this process, or every node of a herd file as supervised processes."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, HerdConfig, bundled_config_text, load_config, loads_config
from .herd.node import HerdNode
from .observe.http import HttpServer
from .processes import ProcessSupervisor

__all__ = ["load_herd_config", "load_app", "run_node", "run_herd", "BUNDLED_SECRET"]

log = logging.getLogger("herdrt.serve")

#: Where the bundled herd keeps its shared secret (made by ``herdrt serve`` on first use).
BUNDLED_SECRET = Path("~/.herdrt/bundled-secret")
BUNDLED_SOURCE = "the bundled herd (herdrt serve --print-config)"


def ensure_bundled_secret() -> Path:
    """Create the bundled herd's secret file (random, mode 0600) if it does not exist yet."""
    path = BUNDLED_SECRET.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def load_herd_config(path: str | os.PathLike | None, *, create_secret: bool = False) -> HerdConfig:
    """The herd file at ``path``, or the bundled five-node herd when ``path`` is None."""
    if path is not None:
        return load_config(path)
    if create_secret:
        ensure_bundled_secret()
    try:
        return loads_config(bundled_config_text(), BUNDLED_SOURCE)
    except ConfigError as exc:
        if "secret_file" in str(exc):
            raise ConfigError(
                f"{exc}\n  (the bundled herd's secret is made by `herdrt serve`; start it first)"
            ) from None
        raise


def load_app(spec: str) -> Callable[[HerdNode], Any]:
    """Import an application hook ``"package.module:function"``; it is called with each node."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"bad app {spec!r}: use MODULE:FUNCTION, e.g. myapp.actors:setup")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import app module {module_name!r}: {exc}") from None
    try:
        hook = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"app module {module_name!r} has no {attr!r}") from None
    if not callable(hook):
        raise ValueError(f"app {spec!r} is not callable")
    return hook


def _stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _stop_if_orphaned(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Under ``herdrt serve`` (which sets HERDRT_SUPERVISOR_PID): stop when the supervisor is
    gone, even if it was killed with no chance to stop its nodes."""
    supervisor = os.environ.get("HERDRT_SUPERVISOR_PID")
    if not supervisor:
        return

    def check() -> None:
        if os.getppid() != int(supervisor):
            log.warning("the supervising herdrt serve (pid %s) is gone; stopping", supervisor)
            stop.set()
        else:
            loop.call_later(1.0, check)

    loop.call_later(1.0, check)


async def serve_node(
    config: HerdConfig,
    name: str,
    apps: Sequence[Callable] = (),
    *,
    ready: Callable[[HerdNode, Any, HttpServer | None], None] | None = None,
) -> None:
    """Run node ``name`` of ``config`` until SIGINT or SIGTERM, then shut it down cleanly."""
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals(loop)
    _stop_if_orphaned(loop, stop)
    node = HerdNode(config, name)
    await node.start()
    http: HttpServer | None = None
    try:
        me = config.node(name)
        if me.http_port is not None:
            http = await HttpServer(node, me.host, me.http_port).start()
        bridge = None
        if me.bridge_port is not None:
            from .bridge import Bridge

            bridge = Bridge.attach(node)
        for hook in apps:
            result = hook(node)
            if inspect.isawaitable(result):
                await result
        if ready is not None:
            ready(node, bridge, http)
        await stop.wait()
        log.info("node %s stopping", name)
    finally:
        if http is not None:
            await http.close()
        await node.shutdown()


def run_node(config: HerdConfig, name: str, apps: Sequence[Callable] = (), *, use_uvloop: bool = True) -> None:
    """Blocking: run one node in this process (``herdrt serve --node NAME``)."""
    from .runtime.node import run

    def ready(node: HerdNode, bridge, http: HttpServer | None) -> None:
        host, port = node.address
        nbrs = ", ".join(sorted(node.links.neighbors)) or "none"
        where = f", bridge on {bridge.endpoint}" if bridge is not None else ""
        where += f", herd page and /metrics on {http.url}" if http is not None else ""
        print(f"node {name} up: herd links on {host}:{port}{where}, neighbors {nbrs} (pid {os.getpid()})", flush=True)

    run(serve_node(config, name, apps, ready=ready), use_uvloop=use_uvloop)


def node_command(name: str, config_path: str | None, apps: list[str]) -> list[str]:
    """The command line that runs one node of the herd as its own process."""
    argv = [sys.executable, "-m", "herdrt.cli", "serve", "--node", name]
    if config_path is not None:
        argv += ["--config", str(Path(config_path).resolve())]
    for app in apps:
        argv += ["--app", app]
    return argv


async def _supervise(children: dict[str, list[str]], config: HerdConfig, echo: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals(loop)
    supervisor = ProcessSupervisor(children, env={**os.environ, "HERDRT_SUPERVISOR_PID": str(os.getpid())})
    await supervisor.start()
    ready = asyncio.ensure_future(announce_ready(config, echo))
    try:
        await stop.wait()
    finally:
        ready.cancel()
        print("stopping the herd ...", file=sys.stderr, flush=True)
        await supervisor.stop()
        print("herd stopped", file=sys.stderr, flush=True)


async def announce_ready(
    config: HerdConfig, echo: Callable[[str], None], *, every: float = 0.25, report_after: float = 5.0
) -> dict[str, Any]:
    """Ask the herd of ``config`` how it stands until every node is up and every link too, then
    print one line saying so (and, every ``report_after`` seconds until then, what is missing).
    Returns the herd view (:mod:`herdrt.observe.view`) that showed it ready."""
    from .observe.top import HerdPoller

    poller = HerdPoller(config, timeout=max(every, 1.0))
    loop = asyncio.get_running_loop()
    started = report_at = loop.time()
    report_at += report_after
    try:
        while True:
            view = await poller.poll()
            s = view["summary"]
            if s["nodes_up"] == s["nodes"] and s["links_up"] == s["links"]:
                break
            if loop.time() >= report_at:
                report_at += report_after
                waiting = ", ".join(n["name"] for n in view["nodes"] if not n["up"]) or "links"
                up = f"{s['nodes_up']}/{s['nodes']} nodes up, {s['links_up']}/{s['links']} links up"
                echo(f"herd starting: {up}; waiting for {waiting}")
            await asyncio.sleep(every)
    finally:
        await poller.close()
    pages = [f"http://{n.host}:{n.http_port}/" for n in config.nodes.values() if n.http_port]
    where = f"; herd page {pages[0]}" if pages else ""
    echo(
        f"herd ready: {s['nodes_up']}/{s['nodes']} nodes up, {s['links_up']}/{s['links']} links up "
        f"in {loop.time() - started:.1f} s{where}; `herdrt top` watches it"
    )
    return view


def run_herd(
    config: HerdConfig, config_path: str | None, apps: list[str], *, echo: Callable[[str], None] = print
) -> None:
    """Blocking: every node of ``config`` as its own supervised process (restarted if it dies)."""
    children = {name: node_command(name, config_path, apps) for name in config.nodes}
    echo(f"starting {len(children)} nodes from {config.source}; Ctrl-C stops them all\n")
    echo(f"{'node':<12}{'herd links':<22}{'app port':<10}{'bridge':<8}{'http':<7}neighbors")
    for name, node in config.nodes.items():
        echo(
            f"{name:<12}{node.host + ':' + str(node.port):<22}{node.app_port or '-':<10}{node.bridge_port or '-':<8}"
            f"{node.http_port or '-':<7}{', '.join(config.neighbors(name))}"
        )
    cfg = f" --config {config_path}" if config_path else ""
    first = next(iter(config.nodes))
    echo(
        f"\ntalk to it from another terminal:\n  herdrt top{cfg}\n  herdrt status{cfg}\n"
        f"  herdrt ask{cfg} {first} '$node' '\"ping\"'"
    )
    app_node = next((n for n in config.nodes.values() if n.app_port), None)
    if app_node is not None and config.apps:
        echo(
            f"  printf 'IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 %s\\n' \"$(date +%s.%N)\" "
            f"| nc -q1 {app_node.host} {app_node.app_port}   # the location proxy"
        )
    web = next((n for n in config.nodes.values() if n.http_port), None)
    if web is not None:
        echo(
            f"  curl http://{web.host}:{web.http_port}/metrics   # or open the herd page: http://{web.host}:{web.http_port}/"
        )
    echo("")
    asyncio.run(_supervise(children, config, echo))
