"""Running herds: one node in this process, or every node of a herd file as supervised processes."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, HerdConfig, bundled_config_text, load_config, loads_config
from .errors import HerdError
from .herd.node import HerdNode
from .observe.http import HttpServer
from .processes import ProcessSupervisor

__all__ = [
    "load_herd_config",
    "load_app",
    "run_node",
    "run_herd",
    "detach",
    "stop_herd",
    "state_dir",
    "StartupError",
    "FATAL_EXIT",
    "BUNDLED_SECRET",
]

log = logging.getLogger("herdrt.serve")

#: Where the bundled herd keeps its shared secret (made by ``herdrt serve`` on first use).
BUNDLED_SECRET = Path("~/.herdrt/bundled-secret")
BUNDLED_SOURCE = "the bundled herd (herdrt serve --print-config)"


def make_secret_file(path: Path) -> None:
    """Write a new random herd secret (43 URL-safe characters) to ``path``, a new file of mode 0600
    (``FileExistsError`` if there is one: a secret is never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def ensure_bundled_secret() -> Path:
    """Create the bundled herd's secret file (random, mode 0600) if it does not exist yet."""
    path = BUNDLED_SECRET.expanduser()
    if not path.exists():
        make_secret_file(path)
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
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: an app module next to the herd file
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import app module {module_name!r}: {exc} (run from its directory, or add it to PYTHONPATH)"
        ) from None
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


class StartupError(HerdError):
    """A node cannot start, for a reason that starting it again would not fix (a port in use, an
    app that fails to load or to set up): ``herdrt serve`` stops the whole herd with it."""


#: The exit code of a node that cannot start (sysexits' EX_CONFIG): its supervisor does not
#: restart it but stops the herd.
FATAL_EXIT = 78


async def serve_node(
    config: HerdConfig,
    name: str,
    apps: Sequence[Callable] = (),
    *,
    ready: Callable[[HerdNode, Any, HttpServer | None], None] | None = None,
) -> None:
    """Run node ``name`` of ``config`` until SIGINT or SIGTERM, then shut it down cleanly.

    What fails while the node starts (its ports, its bridge, an app hook) raises
    :class:`StartupError`."""
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals(loop)
    _stop_if_orphaned(loop, stop)
    me = config.node(name)
    node = HerdNode(config, name)
    try:
        await node.start()
    except OSError as exc:
        raise StartupError(f"node {name} cannot listen on {me.host}:{me.port}: {exc.strerror or exc}") from None
    http: HttpServer | None = None
    try:
        try:
            if me.http_port is not None:
                http = await HttpServer(node, me.host, me.http_port).start()
        except OSError as exc:
            raise StartupError(
                f"node {name} cannot serve HTTP on {me.host}:{me.http_port}: {exc.strerror or exc}"
            ) from None
        bridge = None
        if me.bridge_port is not None:
            from .bridge import Bridge

            try:
                bridge = Bridge.attach(node)
            except Exception as exc:
                raise StartupError(f"node {name} cannot start its bridge on port {me.bridge_port}: {exc}") from None
        for hook in apps:
            try:
                result = hook(node)
                if inspect.isawaitable(result):
                    await result
            except (StartupError, asyncio.CancelledError):
                raise
            except Exception as exc:
                where = f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', hook)}"
                raise StartupError(f"node {name}: app {where} failed to start: {type(exc).__name__}: {exc}") from exc
        if ready is not None:
            ready(node, bridge, http)
        await stop.wait()
        log.info("node %s stopping", name)
    finally:
        if http is not None:
            await http.close()
        await node.shutdown()


def run_node(config: HerdConfig, name: str, apps: Sequence[Callable] = (), *, use_uvloop: bool = True) -> None:
    """Blocking: run one node in this process (``herdrt serve --node NAME``); :class:`StartupError`
    if it cannot start."""
    from .runtime.node import run

    def ready(node: HerdNode, bridge, http: HttpServer | None) -> None:
        host, port = node.address
        nbrs = ", ".join(sorted(node.links.neighbors)) or "none"
        where = f", bridge on {bridge.endpoint}" if bridge is not None else ""
        where += f", herd page and /metrics on {http.url}" if http is not None else ""
        print(f"node {name} up: herd links on {host}:{port}{where}, neighbors {nbrs} (pid {os.getpid()})", flush=True)

    run(serve_node(config, name, apps, ready=ready), use_uvloop=use_uvloop)


def node_command(name: str, config_path: str | None, apps: list[str], log_level: str = "info") -> list[str]:
    """The command line that runs one node of the herd as its own process."""
    argv = [sys.executable, "-m", "herdrt.cli", "serve", "--node", name, "--log-level", log_level]
    if config_path is not None:
        argv += ["--config", str(Path(config_path).resolve())]
    for app in apps:
        argv += ["--app", app]
    return argv


# --- where a herd keeps its state --------------------------------------------------------------------


def state_dir(config_path: str | os.PathLike | None) -> Path:
    """Where ``herdrt serve`` keeps a herd's pid file, output (``--detach``) and the apps' logs:
    ``~/.herdrt/herds/<herd>/`` (``$HERDRT_HOME/herds/<herd>/`` when set), ``<herd>`` being
    ``bundled`` or the herd file's name and a hash of its path."""
    home = Path(os.environ.get("HERDRT_HOME") or "~/.herdrt").expanduser()
    if config_path is None:
        name = "bundled"
    else:
        path = Path(config_path).resolve()
        name = f"{path.stem}-{hashlib.md5(str(path).encode()).hexdigest()[:8]}"
    return home / "herds" / name


class PidFile:
    """``<state dir>/serve.pid``: the pid of the ``herdrt serve`` that runs a herd."""

    def __init__(self, directory: Path):
        self.path = directory / "serve.pid"

    def read(self) -> int | None:
        """The pid of a live ``herdrt serve`` of this herd, or None (a stale file is removed)."""
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.path.unlink(missing_ok=True)
            return None
        except PermissionError:
            pass  # alive, another user's
        return pid

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{os.getpid()}\n")

    def remove(self) -> None:
        """Remove the file if it is this process's."""
        try:
            if int(self.path.read_text().strip()) == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def busy_ports(config: HerdConfig) -> list[str]:
    """The addresses of ``config`` this machine cannot listen on (in use, or not its own), each as
    a line naming its use and why."""
    problems = []
    for node in config.nodes.values():
        for key, what in (
            ("port", "herd links"),
            ("app_port", "app"),
            ("http_port", "HTTP"),
            ("bridge_port", "bridge"),
        ):
            port = getattr(node, key)
            if port is None:
                continue
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((node.host, port))
                except OSError as exc:
                    problems.append(f"{node.host}:{port} ({node.name}'s {what}): {exc.strerror or exc}")
    return problems


# --- running a whole herd ----------------------------------------------------------------------------


async def _supervise(
    children: dict[str, list[str]], config: HerdConfig, echo: Callable[[str], None], banner: Callable[[], None]
) -> int:
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals(loop)
    supervisor = ProcessSupervisor(
        children, env={**os.environ, "HERDRT_SUPERVISOR_PID": str(os.getpid())}, fatal_exit=FATAL_EXIT
    )
    await supervisor.start()

    async def ready_then_banner() -> None:
        await announce_ready(config, echo)
        banner()

    ready = asyncio.ensure_future(ready_then_banner())
    failed = asyncio.ensure_future(supervisor.wait_failed())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ready, failed, stopped):
            task.cancel()
        _say("stopping the herd ...")
        await supervisor.stop()
    if supervisor.failed is not None:
        _say(
            f"herd stopped: node {supervisor.failed.name} cannot start (its error is above); "
            "nothing was restarted. Fix it and run `herdrt serve` again."
        )
        return FATAL_EXIT
    _say("herd stopped")
    return 0


def _say(text: str) -> None:
    """A line on stderr, even when nobody reads it any more (``herdrt serve 2>&1 | head``)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _unbroken(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo``, which stops printing, rather than failing, once stdout's reader is gone
    (``herdrt serve | head``): the herd keeps running and stops cleanly on Ctrl-C."""

    def safe(text: str) -> None:
        try:
            echo(text)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush is quiet too
            os.close(devnull)

    return safe


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
        f"in {loop.time() - started:.1f} s{where}"
    )
    return view


def _talk_to_it(config: HerdConfig, config_path: str | None, echo: Callable[[str], None]) -> None:
    cfg = f" --config {config_path}" if config_path else ""
    first = next(iter(config.nodes))
    echo(f"talk to it:\n  herdrt top{cfg}\n  herdrt status{cfg}")
    echo(f"  herdrt ask{cfg} {first} '$node' '\"ping\"'")
    app_node = next((n for n in config.nodes.values() if n.app_port), None)
    if app_node is not None and config.apps:
        echo(
            f"  printf 'IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 %s\\n' \"$(date +%s.%N)\" "
            f"| nc -q1 {app_node.host} {app_node.app_port}   # the location proxy"
        )
    web = next((n for n in config.nodes.values() if n.http_port), None)
    if web is not None:
        echo(f"  curl http://{web.host}:{web.http_port}/metrics   # or open http://{web.host}:{web.http_port}/")


def run_herd(
    config: HerdConfig,
    config_path: str | None,
    apps: list[str],
    *,
    echo: Callable[[str], None] = print,
    log_dir: Path | None = None,
    log_level: str = "info",
) -> int:
    """Blocking: every node of ``config`` as its own supervised process (restarted if it dies),
    until Ctrl-C (or SIGTERM); 0 then. A node that cannot start (:data:`FATAL_EXIT`) stops the
    herd: :data:`FATAL_EXIT`. So does a herd already running or a port already taken, at once."""
    echo = _unbroken(echo)
    state = state_dir(config_path)
    pidfile = PidFile(state)
    running = pidfile.read()
    if running is not None:
        _say(
            f"error: a herd from {config.source} is already running (herdrt serve, pid {running}); "
            "stop it with `herdrt stop" + (f" --config {config_path}`" if config_path else "`")
        )
        return FATAL_EXIT
    taken = busy_ports(config)
    if taken:
        _say("error: the herd cannot start, it cannot listen on these (is another herd running?):")
        for line in taken:
            _say(f"  {line}")
        return FATAL_EXIT
    children = {name: node_command(name, config_path, apps, log_level) for name in config.nodes}
    echo(f"starting {len(children)} nodes from {config.source}; Ctrl-C stops them all")
    echo(f"state, pid file and logs: {state}" + (f" (traffic logs: {log_dir})" if log_dir else "") + "\n")
    echo(f"{'node':<12}{'herd links':<22}{'app port':<10}{'bridge':<8}{'http':<7}neighbors")
    for name, node in config.nodes.items():
        echo(
            f"{name:<12}{node.host + ':' + str(node.port):<22}{node.app_port or '-':<10}{node.bridge_port or '-':<8}"
            f"{node.http_port or '-':<7}{', '.join(config.neighbors(name))}"
        )
    echo("")
    pidfile.write()
    try:
        return asyncio.run(_supervise(children, config, echo, lambda: _talk_to_it(config, config_path, echo)))
    finally:
        pidfile.remove()


def detach(argv: list[str], config: HerdConfig, config_path: str | None, *, timeout: float = 60.0) -> int:
    """``herdrt serve --detach``: run ``argv`` (the same ``herdrt serve`` without ``--detach``) in
    the background, its output in ``<state dir>/serve.log``; return once the herd is ready (0) or
    its supervisor has exited (its exit code, with the end of its log)."""
    state = state_dir(config_path)
    state.mkdir(parents=True, exist_ok=True)
    out_path = state / "serve.log"
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    async def wait() -> int:
        ready = asyncio.ensure_future(announce_ready(config, lambda _line: None))
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not ready.done():
                if proc.poll() is not None:
                    return proc.returncode or FATAL_EXIT
                if asyncio.get_running_loop().time() > deadline:
                    return -1
                await asyncio.sleep(0.1)
            view = ready.result()
            s = view["summary"]
            print(f"herd ready: {s['nodes_up']}/{s['nodes']} nodes up, {s['links_up']}/{s['links']} links up")
            return 0
        finally:
            ready.cancel()

    code = asyncio.run(wait())
    if code == 0:
        print(f"herdrt serve runs in the background (pid {proc.pid}); its output: {out_path}")
        _talk_to_it(config, config_path, print)
        print(f"  herdrt stop{' --config ' + config_path if config_path else ''}   # stops it")
        return 0
    tail = out_path.read_text(errors="replace").splitlines()[-15:]
    _say("\n".join(tail))
    if code == -1:
        _say(f"error: the herd was not ready after {timeout:g} s (still running, pid {proc.pid}; see {out_path})")
        return 1
    _say(f"error: herdrt serve exited with code {code}; its output is in {out_path}")
    return code


def stop_herd(config: HerdConfig, config_path: str | None, *, timeout: float = 20.0) -> tuple[bool, str]:
    """``herdrt stop``: SIGTERM the ``herdrt serve`` of this herd (found by its pid file) and wait
    until it has stopped its nodes and exited. (stopped?, what to tell the user)."""
    pidfile = PidFile(state_dir(config_path))
    pid = pidfile.read()
    if pid is None:
        return False, f"no herd from {config.source} is running here (no live pid in {pidfile.path})"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True, f"herd from {config.source} stopped (herdrt serve, pid {pid})"
        time.sleep(0.1)
    return False, f"herdrt serve (pid {pid}) has not stopped after {timeout:g} s; `kill -9 {pid}` stops it hard"
