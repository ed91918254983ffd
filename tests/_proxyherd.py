"""The location proxy herd as real OS processes (`herdrt serve --node`), for the tests that drive
it as clients (and attackers) would: the bundled herd file with free ports and a test secret."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _herdtest import NodeProcesses, free_ports, metric_samples, node_env
from herdrt.config import bundled_config_text, load_config
from herdrt.errors import NodeUnavailable
from herdrt.herd import ADMIN_ACTOR
from herdrt.herd.client import HerdClient

NAMES = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
UCLA = "+34.068930-118.445127"
WAIT = 20.0  # seconds: generous limits for things that should take milliseconds (never asserted on)

_ids = itertools.count(1)


def herd_text(herd_ports: list[int], app_ports: list[int], http_ports: list[int]) -> str:
    """The bundled herd file with a test secret, a faster heartbeat and the given ports."""
    text = bundled_config_text()
    text, n = re.subn(r"(?m)^secret_file = .*$", 'secret = "proxy-herd-test-secret"', text)
    assert n == 1
    text, n = re.subn(r"(?m)^heartbeat_interval = .*$", "heartbeat_interval = 0.2", text)
    assert n == 1
    for i in range(5):  # the bundled text uses 11000-11004 (herd links), 12000-12004 (app), 12100-12104 (http)
        for key, base, ports in (("port", 11000, herd_ports), ("app_port", 12000, app_ports)):
            text, n = re.subn(rf"(?m)^{key} = {base + i}$", f"{key} = {ports[i]}", text)
            assert n == 1
        text, n = re.subn(rf"(?m)^http_port = {12100 + i}$", f"http_port = {http_ports[i]}", text)
        assert n == 1
    return text


class ProxyHerd(NodeProcesses):
    """The five servers as OS processes: start, SIGKILL and restart them one by one."""

    def __init__(self, tmp: Path, edit=None):
        """``edit(text) -> text`` changes the herd file first (extra nodes, links, a bridge)."""
        # The offline gazetteer answers WHATSAT, whatever the environment says.
        super().__init__(tmp / "out", node_env(HERDRT_PLACES_API_KEY=None))
        ports = free_ports(15)
        self.path = tmp / "herd.toml"
        text = herd_text(ports[:5], ports[5:10], ports[10:])
        self.path.write_text(edit(text) if edit is not None else text)
        self.config = load_config(self.path)
        assert list(self.config.nodes)[:5] == NAMES and tuple(self.config.apps) == ("herdrt.apps.proxy:setup",)
        self.log_dir = tmp / "traffic"

    @classmethod
    @contextlib.contextmanager
    def running(cls, tmp: Path, edit=None):
        """All five servers up, linked, and warmed up; stopped (logs checked) at the end."""
        herd = cls(tmp, edit)
        try:
            for name in NAMES:
                herd.start(name)
            herd.wait_ready()
            herd.warm_up()
            yield herd
        finally:
            herd.stop_all()

    def port(self, name: str) -> int:
        return self.config.node(name).app_port

    def metrics(self, name: str) -> dict[tuple[str, tuple], float]:
        """Every sample of node ``name``'s /metrics, by (sample name, sorted labels)."""
        node = self.config.node(name)
        with urllib.request.urlopen(f"http://{node.host}:{node.http_port}/metrics", timeout=10) as response:
            return metric_samples(response.read().decode())

    def start(self, name: str) -> None:
        self.serve(name, self.path, "--log-dir", str(self.log_dir))

    def out(self, name: str) -> str:
        return self.output(name)

    def traffic(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, names=NAMES, live=NAMES) -> None:
        """Until each of ``names`` takes clients and sees exactly ``live`` as the live herd."""
        for name in names:
            deadline = time.monotonic() + WAIT
            while True:
                assert self.procs[name].poll() is None, f"{name} exited:\n{self.out(name)}"
                try:
                    socket.create_connection(("127.0.0.1", self.port(name)), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{name} never listened:\n{self.out(name)}"
                    time.sleep(0.05)
        asyncio.run(self._wait_live(names, set(live)))

    def warm_up(self, names=NAMES) -> None:
        """Load each server's gazetteer (lazily, on the first WHATSAT; ~1 s of CPU) all at once."""

        def warm(name):
            client = f"warm-up-{name}.test.example"
            talk(self.port(name), f"IAMAT {client} {UCLA} 1\n".encode())
            assert talk(self.port(name), f"WHATSAT {client} 1 1\n".encode()).endswith(b"}\n\n")

        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(warm, names))

    async def _wait_live(self, names, live: set) -> None:
        for name in names:
            deadline = time.monotonic() + WAIT
            seen = None
            while time.monotonic() < deadline:
                try:
                    async with HerdClient(self.config, name) as client:
                        seen = set((await client.ask(ADMIN_ACTOR, "status", timeout=2.0))["live"])
                    if seen == live:
                        break
                except (TimeoutError, OSError, ConnectionError, NodeUnavailable):
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{name} sees {seen}, not {sorted(live)}")


def talk(port: int, data: bytes) -> bytes:
    """One connection: send ``data``, close our side, read every reply until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def client_id(tag: str) -> str:
    return f"{tag}-{next(_ids)}.test.example"


def posix(ns: int) -> str:
    """POSIX time text with all nine nanosecond digits."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 10**9}.{ns % 10**9:09d}"


def iamat(herd: ProxyHerd, server: str, client: str, location: str = UCLA, when: str | None = None) -> str:
    """Send one IAMAT to ``server``; check the reply's shape and return the AT line."""
    when = when if when is not None else posix(time.time_ns())
    reply = talk(herd.port(server), f"IAMAT {client} {location} {when}\n".encode())
    m = re.fullmatch(
        rf"AT {server} [+-][0-9]+\.[0-9]{{9}} {re.escape(client)} {re.escape(location)} {re.escape(when)}\n",
        reply.decode(),
    )
    assert m, reply
    return reply.decode()[:-1]


def known_at(herd: ProxyHerd, server: str, client: str) -> str | None:
    """The AT line ``server`` has for ``client`` (via WHATSAT), or None if it does not know it."""
    reply = talk(herd.port(server), f"WHATSAT {client} 1 1\n".encode())
    if reply.startswith(b"? "):
        return None
    return reply.decode().partition("\n")[0]


def wait_known(herd: ProxyHerd, server: str, client: str, at_line: str) -> None:
    """Until ``server`` answers WHATSAT for ``client`` with ``at_line`` (polling; flooding is async)."""
    deadline = time.monotonic() + WAIT
    while (seen := known_at(herd, server, client)) != at_line:
        assert time.monotonic() < deadline, f"{server} has {seen!r}, not {at_line!r}"
        time.sleep(0.01)
