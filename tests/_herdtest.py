"""Helpers shared by the herd tests: free ports, node processes, a recording actor, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from herd_app import Counter, Echo
from herdrt import Actor
from herdrt.config import load_config, loads_config
from herdrt.errors import NodeUnavailable
from herdrt.herd import ADMIN_ACTOR, HerdNode
from herdrt.herd.client import HerdClient

TESTS = Path(__file__).parent


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_env(**overrides: str | None) -> dict[str, str]:
    """This environment with ``tests/`` importable (for ``--app herd_app:setup``); a value of
    None removes that variable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


#: Log lines that only a bug makes: an exception escaping an event-loop callback or a task, or
#: the node layer raising on a link's envelopes. (A handler's own exception is logged too, but
#: that is the application's error, reported as designed.)
BUG_MARKERS = ("Exception in callback", "Task exception was never retrieved", "on_envelopes raised")


class NodeProcesses:
    """OS processes of one test, by key, each writing its output to ``<out_dir>/<key>.log``."""

    def __init__(self, out_dir: Path, env: dict[str, str] | None = None):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.env = node_env() if env is None else env
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, key: str, argv: list[str]) -> None:
        with open(self.out_dir / f"{key}.log", "ab") as out:
            self.procs[key] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def serve(self, key: str, config_path: Path, *args: str) -> None:
        """Run node ``key`` of the herd file: ``herdrt serve --config ... --node key ...``."""
        self.spawn(
            key, [sys.executable, "-m", "herdrt.cli", "serve", "--config", str(config_path), "--node", key, *args]
        )

    def kill(self, key: str) -> None:
        proc = self.procs.pop(key)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        """SIGTERM everything, SIGKILL what has not stopped 10 s later; then fail if a log shows
        an error that only a bug makes (see :data:`BUG_MARKERS`)."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        bugs = [
            f"{log.name}: {line}"
            for log in sorted(self.out_dir.glob("*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if any(marker in line for marker in BUG_MARKERS)
        ]
        assert not bugs, "node logs show errors no input should cause:\n" + "\n".join(bugs)

    def output(self, key: str) -> str:
        return (self.out_dir / f"{key}.log").read_text(errors="replace")


class Recorder(Actor):
    """Keeps what it is told; ``"get"`` asks for the list."""

    def __init__(self):
        self.seen = []

    def receive(self, message, ctx):
        if message == "get":
            return self.seen
        self.seen.append(message)


class Slow(Actor):
    """Counts tells slowly (about 20 µs of busy work each), so a flood outpaces it; an ask gets
    the count."""

    def __init__(self):
        self.n = 0

    def receive(self, message, ctx):
        if ctx.is_ask:
            return self.n
        sum(range(2000))
        self.n += 1


async def status(config, via: str, timeout: float = 2.0) -> dict:
    """Node ``via``'s view of the herd (its admin actor's answer to "status"), asked as a client."""
    async with HerdClient(config, via) as client:
        return await client.ask(ADMIN_ACTOR, "status", timeout=timeout)


async def wait_live(config, via: str, expected, timeout: float = 20.0) -> None:
    """Wait until node ``via`` sees exactly ``expected`` live; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = set((await status(config, via))["live"])
            if last == set(expected):
                return
        except (TimeoutError, OSError, ConnectionError, NodeUnavailable):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{via} sees {last}, not {sorted(expected)}")


async def until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate()`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


SECRET = "herd-test-secret-0123"


def herd_config(names, links=None, secret=SECRET, heartbeat=0.1):
    ports = free_ports(len(names))
    text = f'[herd]\nsecret = "{secret}"\nheartbeat_interval = {heartbeat}\n'
    if links is not None:
        text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]\n"
    text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip(names, ports, strict=False))
    return loads_config(text)


class Herd:
    """Start nodes of a config in this loop; wait until every node sees all of them."""

    def __init__(self, config, names=None):
        self.config = config
        self.nodes = {}
        self.names = list(names or config.nodes)

    async def __aenter__(self):
        for name in self.names:
            node = HerdNode(self.config, name, strict_messages=True)
            await node.start()
            node.register_kind("counter", Counter)
            node.spawn(Echo, name="echo")
            self.nodes[name] = node
        await self.converged()
        return self.nodes

    async def converged(self, live=None):
        live = set(live or self.nodes)
        await until(lambda: all(n.membership.live() == live for k, n in self.nodes.items() if k in live))

    async def __aexit__(self, *exc):
        for node in self.nodes.values():
            await node.shutdown()


#: The bundled herd's five servers and its neighbor graph.
BUNDLED_NAMES = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
BUNDLED_LINKS = [
    ("Clark", "Jaquez"),
    ("Clark", "Bona"),
    ("Campbell", "Bailey"),
    ("Campbell", "Bona"),
    ("Campbell", "Jaquez"),
    ("Bona", "Bailey"),
]


class FiveServers(NodeProcesses):
    """The bundled herd's five servers and neighbor graph as `herdrt serve --node` processes on
    free ports (each with an ``http_port`` too, when ``http``), running ``herd_app:setup``."""

    def __init__(self, tmp_path: Path, *, http: bool = False):
        super().__init__(tmp_path / "out")
        ports = iter(free_ports(2 * len(BUNDLED_NAMES)))
        text = f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.2\n'
        text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in BUNDLED_LINKS) + "]\n"
        for name in BUNDLED_NAMES:
            text += f'[[nodes]]\nname = "{name}"\nport = {next(ports)}\n'
            text += f"http_port = {next(ports)}\n" if http else ""
        self.path = tmp_path / "herd.toml"
        self.path.write_text(text)
        self.config = load_config(self.path)

    @classmethod
    @contextlib.contextmanager
    def running(cls, tmp_path: Path, *, http: bool = False):
        """All five started and linked (:meth:`linked`); stopped, their logs checked, at the end."""
        herd = cls(tmp_path, http=http)
        try:
            for name in BUNDLED_NAMES:
                herd.start(name)
            asyncio.run(herd.linked())
            yield herd
        finally:
            herd.stop_all()

    def start(self, name: str) -> None:
        self.serve(name, self.path, "--app", "herd_app:setup")

    def url(self, name: str) -> str:
        """The herd page of node ``name`` (with ``http``)."""
        node = self.config.node(name)
        return f"http://{node.host}:{node.http_port}/"

    async def linked(self, timeout: float = 15.0) -> None:
        """Until every node sees the whole herd live and has a link up to each of its neighbors."""
        config = self.config
        await wait_live(config, BUNDLED_NAMES[0], BUNDLED_NAMES, timeout)
        deadline = time.monotonic() + timeout
        for name in BUNDLED_NAMES:
            while set(config.neighbors(name)) - set((await status(config, name))["links"]):
                assert time.monotonic() < deadline, f"{name} never linked to all of {config.neighbors(name)}"
                await asyncio.sleep(0.05)


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition (``/metrics``), by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
