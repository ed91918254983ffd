"""The location proxy herd: five real server processes, 200 concurrent clients.

The herd is the bundled one (five servers, six links, the proxy app on each), with free ports on
127.0.0.1 and a bench secret, each server started as ``python -m herdrt.cli serve --node NAME``
(uvloop, traffic logs on, as deployed). The load generator is this process (uvloop): 200 client
connections, each with one command in flight (send a line, read the reply, send the next).

* ``proxy-iamat``: IAMAT replies per second at Clark.
  - ``proxy_iamat_flooded``: every IAMAT is newer, so Clark stores it and the herd floods it to
    all five servers (12 herd messages per update) while Clark answers;
  - ``proxy_iamat_stale``: every IAMAT is older than the stored record: parsed, answered and logged
    but not stored or flooded (the protocol without the herd);
  - ``baseline_line_echo``: a bare asyncio/uvloop server process that answers every line with a
    fixed AT line (no parsing, no log, no herd): the floor of this client and loopback TCP.
* ``proxy-propagation``: IAMATs at Clark (200 clients), and how long until each update is stored
  on the other servers: 1 hop (Bona, Jaquez), 2 hops (Bailey, Campbell, the farthest) and everywhere.
  Measured without polling: an IAMAT carries its send time (the client's POSIX time) and every
  server's traffic log stamps the moment it stored it (same machine, same clock); exact p50/p99
  over every update of the measured rounds go in ``extra_info`` (ms), with the client's IAMAT round
  trip beside them. No baseline: the reply round trip is the reference.

    pytest bench/bench_proxy.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,mean,ops,rounds

Under ``--benchmark-disable`` (CI) each client sends one line per round: a smoke test.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvloop

from _harness import free_ports, stop_child
from herdrt.config import bundled_config_text, load_config
from herdrt.errors import NodeUnavailable
from herdrt.herd import ADMIN_ACTOR
from herdrt.herd.client import HerdClient

NAMES = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
HOPS_FROM_CLARK = {"Bona": 1, "Jaquez": 1, "Bailey": 2, "Campbell": 2}
UCLA = "+34.068930-118.445127"
CLIENTS = 200
PER_CLIENT = 25  # IAMATs per client per round (replies/s)
PER_CLIENT_PROPAGATE = 5  # IAMATs per client per round (propagation)
ROUNDS = 3
START_TIMEOUT = 30.0
ARRIVAL_TIMEOUT = 60.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: one line per client."""
    if request.config.getoption("benchmark_disable", False):
        monkeypatch.setitem(globals(), "PER_CLIENT", 1)
        monkeypatch.setitem(globals(), "PER_CLIENT_PROPAGATE", 1)


def _disabled(benchmark) -> bool:
    return getattr(benchmark, "disabled", False)


# --- the processes ------------------------------------------------------------------------------------


def _herd_text(ports: list[int]) -> str:
    """The bundled herd file with a bench secret and ports ``ports[:5]`` (links), ``ports[5:]`` (app)."""
    text = bundled_config_text()
    text, n = re.subn(r"(?m)^secret_file = .*$", 'secret = "proxy bench secret, not for production"', text)
    assert n == 1, "the bundled herd file changed: update the bench"
    for i in range(5):
        text, a = re.subn(rf"(?m)^port = {11000 + i}$", f"port = {ports[i]}", text)
        text, b = re.subn(rf"(?m)^app_port = {12000 + i}$", f"app_port = {ports[5 + i]}", text)
        assert a == b == 1, "the bundled herd file changed: update the bench"
    return text


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_herd(config, deadline: float) -> None:
    """Until every server takes clients and sees all five servers live."""
    for name in NAMES:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {name} did not come up within {START_TIMEOUT:g}s")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", config.node(name).app_port)
                writer.close()
                async with HerdClient(config, name) as client:
                    status = await client.ask(ADMIN_ACTOR, "status", timeout=2.0)
                if set(status["live"]) == set(NAMES):
                    break
            except (TimeoutError, OSError, ConnectionError, NodeUnavailable):
                pass
            await asyncio.sleep(0.05)


class Herd:
    def __init__(self, config, log_dir: Path, pids: dict[str, int]):
        self.config = config
        self.log_dir = log_dir
        self.pids = pids

    def peak_rss_mb(self) -> dict[str, float]:
        """Each server's peak resident memory so far (VmHWM), in MB."""
        peaks = {}
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            peaks[name] = round(kb / 1024, 1)
        return peaks

    def dead_letters(self) -> dict[str, int]:
        """Each server's dead letters (tells of the flood that found no room, ...)."""

        async def ask(name):
            async with HerdClient(self.config, name) as client:
                return (await client.ask("$node", "status", timeout=5))["dead_letters"]["total"]

        return {name: asyncio.run(ask(name)) for name in self.pids}

    def port(self, name: str) -> int:
        return self.config.node(name).app_port

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


@pytest.fixture(scope="module")
def herd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy-bench")
    path = tmp / "herd.toml"
    path.write_text(_herd_text(free_ports(10)))
    config = load_config(path)
    env = {k: v for k, v in os.environ.items() if k != "HERDRT_PLACES_API_KEY"}
    procs = []
    try:
        for name in NAMES:
            with open(tmp / f"{name}.out", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "herdrt.cli",
                            "serve",
                            "--config",
                            str(path),
                            "--node",
                            name,
                            "--log-dir",
                            str(tmp / "traffic"),
                            "--log-level",
                            "warning",
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        asyncio.run(_wait_herd(config, time.monotonic() + START_TIMEOUT))
        yield Herd(config, tmp / "traffic", {name: proc.pid for name, proc in zip(NAMES, procs, strict=True)})
    finally:
        _stop(procs)


# The baseline: answers every line with one fixed AT line, on uvloop like the servers. Runs until
# its stdin closes.
LINE_ECHO = r"""
import asyncio, sys, uvloop

AT = b"AT Clark +0.000123456 c0.bench +34.068930-118.445127 1621464827.959498503\n"


async def serve(reader, writer):
    try:
        while await reader.readline():
            writer.write(AT)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)  # as the proxy
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

uvloop.run(main())
"""


@pytest.fixture(scope="module")
def line_echo():
    proc = subprocess.Popen([sys.executable, "-c", LINE_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"the line-echo baseline did not start (got {line!r}, exit code {proc.poll()})")
        yield int(line.split()[1])
    finally:
        stop_child(proc)


# --- the clients -------------------------------------------------------------------------------------


def _posix(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


async def _clients(port: int, lines_of, per_client: int) -> tuple[float, list[tuple[str, int, int]]]:
    """``CLIENTS`` connections to ``port``, each sending ``per_client`` lines one at a time.

    ``lines_of(i)`` gives client ``i`` a function ``line(k) -> (text, client_ns)``. Returns the
    seconds from the first send to the last reply (connections are opened before) and, per line,
    ``(client id, client time ns, round trip ns)``.
    """
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS)))
    samples: list[tuple[str, int, int]] = []

    async def run(i, reader, writer):
        make = lines_of(i)
        for k in range(per_client):
            text, client, client_ns = make(k)
            sent = time.perf_counter_ns()
            writer.write(text)
            reply = await reader.readline()
            samples.append((client, client_ns, time.perf_counter_ns() - sent))
            if not reply.startswith(b"AT "):
                raise AssertionError(f"unexpected reply {reply!r} to {text!r}")

    start = time.perf_counter()
    try:
        await asyncio.gather(*(run(i, r, w) for i, (r, w) in enumerate(conns)))
        elapsed = time.perf_counter() - start
    finally:
        for _, writer in conns:
            writer.close()
    return elapsed, samples


def _fresh_lines(tag: str):
    """Client ``i`` reports ever newer times: every IAMAT is stored and flooded."""

    def lines_of(i):
        client = f"{tag}-{i}.bench"

        def make(k):
            ns = time.time_ns()
            return f"IAMAT {client} {UCLA} {_posix(ns)}\n".encode(), client, ns

        return make

    return lines_of


def _stale_lines(i):
    """Client ``i`` reports a time older than the record stored first (see the bench)."""
    client = f"stale-{i}.bench"
    line = f"IAMAT {client} {UCLA} 1621464827.959498503\n".encode()
    return lambda k: (line, client, 0)


def _run(coro):
    return uvloop.run(coro)


def _replies_bench(benchmark, port: int, make_lines, **info) -> None:
    """Rounds of ``CLIENTS * PER_CLIENT`` lines; ``make_lines()`` gives each round its ``lines_of``."""
    elapsed: list[float] = []

    def round_():
        seconds, samples = _run(_clients(port, make_lines(), PER_CLIENT))
        assert len(samples) == CLIENTS * PER_CLIENT
        elapsed.append(seconds)

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    replies = CLIENTS * PER_CLIENT
    benchmark.extra_info.update(info, clients=CLIENTS, replies_per_round=replies)
    if not _disabled(benchmark):
        benchmark.extra_info["replies_per_s"] = round(replies / min(elapsed))


# --- proxy-iamat ---------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="proxy-iamat")
def test_proxy_iamat_flooded(benchmark, herd):
    # A new set of client ids per round keeps the stores' sizes out of the comparison.
    tags = (f"fresh{n}" for n in range(1_000_000))
    _replies_bench(
        benchmark, herd.port("Clark"), lambda: _fresh_lines(next(tags)), server="Clark", herd_servers=5, flooded=True
    )
    # What flooding under this load costs each server in memory, and whether any flooded record
    # was lost (it would be a dead letter): in extra_info, beside the rate.
    benchmark.extra_info["peak_rss_mb"] = herd.peak_rss_mb()
    benchmark.extra_info["dead_letters"] = herd.dead_letters()


@pytest.mark.benchmark(group="proxy-iamat")
def test_proxy_iamat_stale(benchmark, herd):
    # Store a record of every client, timed now, first: then every IAMAT of the bench (2021) is
    # older. (A far-future seed would be refused: max_future_skew.)
    now = _posix(time.time_ns())

    def seed(i):
        client = f"stale-{i}.bench"
        return lambda k: (f"IAMAT {client} {UCLA} {now}\n".encode(), client, 0)

    _run(_clients(herd.port("Clark"), seed, 1))
    _replies_bench(benchmark, herd.port("Clark"), lambda: _stale_lines, server="Clark", herd_servers=5, flooded=False)
    # Nothing of the bench was stored: Clark's log says it ignored every one of them.
    log = herd.log("Clark").read_text()
    assert " stale-7.bench +34.068930-118.445127 1621464827.959498503" in log
    assert not re.search(r"STORED from client \S+ AT Clark \S+ stale-\S+ \S+ 1621464827", log)


@pytest.mark.benchmark(group="proxy-iamat")
def test_baseline_line_echo(benchmark, line_echo):
    _replies_bench(benchmark, line_echo, lambda: _fresh_lines("echo"), server="line-echo baseline (uvloop)")


# --- proxy-propagation ---------------------------------------------------------------------------------

_STORED = re.compile(r"^(\S+) \S+ STORED from peer: AT Clark \S+ (\S+) \S+ (\S+)$")


class LogTail:
    """New ``STORED from peer`` entries of one server's traffic log, read incrementally."""

    def __init__(self, path: Path):
        self.file = open(path, "rb")
        self.file.seek(0, os.SEEK_END)
        self.partial = b""

    def read(self, prefix: str, into: dict) -> None:
        """Add ``(client, client time text) -> stored at (POSIX ns)`` for clients starting with ``prefix``."""
        data = self.partial + self.file.read()
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            m = _STORED.match(raw.decode("utf-8", "replace"))
            if m and m.group(2).startswith(prefix):
                stamp = datetime.fromisoformat(m.group(1))
                into[(m.group(2), m.group(3))] = (stamp - EPOCH) // _MICROSECOND * 1000

    def close(self) -> None:
        self.file.close()


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - EPOCH


def _quantiles(values: list[int]) -> dict[str, float]:
    """Exact p50 / p99 / max of nanosecond values, in milliseconds."""
    ordered = sorted(values)

    def q(p):
        return round(ordered[int(p * (len(ordered) - 1))] / 1e6, 3)

    return {"p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": q(1.0)}


@pytest.mark.benchmark(group="proxy-propagation")
def test_proxy_propagation_to_the_farthest_server(benchmark, herd):
    counter = iter(range(1_000_000))
    kept: dict[str, list[int]] = {"rtt": [], "everywhere": [], **{s: [] for s in HOPS_FROM_CLARK}}
    calls = []

    def round_():
        tag = f"prop{next(counter)}"
        tails = {s: LogTail(herd.log(s)) for s in HOPS_FROM_CLARK}
        try:
            _, samples = _run(_clients(herd.port("Clark"), _fresh_lines(tag), PER_CLIENT_PROPAGATE))
            expected = {(client, _posix(ns)): ns for client, ns, _ in samples}
            arrived = {s: {} for s in tails}
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            while True:
                for server, tail in tails.items():
                    tail.read(tag + "-", arrived[server])
                if all(len(got) >= len(expected) for got in arrived.values()):
                    break
                if time.monotonic() > deadline:
                    missing = {s: len(expected) - len(got) for s, got in arrived.items()}
                    raise AssertionError(f"updates not stored within {ARRIVAL_TIMEOUT:g}s: missing {missing}")
                time.sleep(0.005)
        finally:
            for tail in tails.values():
                tail.close()
        calls.append(tag)
        if len(calls) == 1 and not _disabled(benchmark):
            return  # the warm-up round
        for key, sent in expected.items():
            per_server = {s: arrived[s][key] - sent for s in tails}
            for server, latency in per_server.items():
                kept[server].append(latency)
            kept["everywhere"].append(max(per_server.values()))
        kept["rtt"].extend(rtt for _, _, rtt in samples)

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    info = benchmark.extra_info
    info.update(clients=CLIENTS, updates_per_round=CLIENTS * PER_CLIENT_PROPAGATE, updates=len(kept["everywhere"]))
    info["iamat_round_trip"] = _quantiles(kept["rtt"])
    info["hop1_Bona_Jaquez"] = _quantiles(kept["Bona"] + kept["Jaquez"])
    info["hop2_farthest_Bailey_Campbell"] = _quantiles(kept["Bailey"] + kept["Campbell"])
    info["everywhere"] = _quantiles(kept["everywhere"])
    # Every update reached every server, and no later than it was sent (one machine, one clock).
    assert all(v >= 0 for v in kept["everywhere"])
