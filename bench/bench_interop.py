"""Into a Python actor: from Go through the ZeroMQ bridge, from Python over a herd link and through
the bridge, beside the best raw pyzmq can do.

Node ``A`` runs in its own process (``herdrt.cli serve``, its bridge on, the ``sink`` actor: it
counts what it is told and answers the ask ``"$count"`` with the count, any other ask with the
message). Every contender sends it the same work: ``TELLS_N`` tells of the numbers ``0..N-1``
followed by one ask ``"$count"``, which returns once all are in (FIFO per sender-receiver pair),
or ``ASKS_N`` sequential asks of the numbers ``0..N-1``. The contenders:

  * ``bridge[go]``: a Go service, ``herd-call bench-loop`` (go-interop/), through the bridge. Its
    client coalesces queued tells into TELLS envelopes under the node's max_frame_size.
  * ``bridge[python]``: the same from Python, ``_bridge_service.py client`` (plain blocking pyzmq,
    its own process): a service speaking the bridge protocol. It takes the tells one by one and
    sends each full batch of ``TELLS_BATCH`` (1024, herdrt's own link batch) as one TELLS.
  * ``herd_link``: a Python herd node ``P`` (this process, uvloop) over the authenticated herd TCP
    link to ``A``, as bench_herd.py does it: ``CHUNK`` tells per loop turn, waiting on
    ``link.drain()`` while the transport pushes back.
  * ``raw_pyzmq_*``, the baselines (``_bridge_service.py decode``, its own process): for tells, a
    PUSH -> PULL of as many msgpack bodies, the PULL waiting for its socket to be readable, then
    draining it with non-blocking receives, decoding each body (the fastest receive loop pyzmq
    offers), an empty message asking for the count; for asks, a DEALER (here) -> ROUTER echo that
    decodes each body.

Groups (``pytest bench/bench_interop.py --benchmark-only --benchmark-group-by=group``):

  * ``interop-tell``: target Go -> Python >= 500,000 messages/s.
  * ``interop-ask``: target ask round trip (Go -> Python) >= 0.7x the raw DEALER/ROUTER echo.
  * ``interop-ask-paired``: each bridge client's asks and the raw echo alternated round by round;
    the ratios (median and range over the pairs) are printed after the tables.

Both bridge clients stay connected for the whole module; each benchmark round is one command on
their stdin (``tell sink N`` / ``ask sink N``, one JSON line back), so rounds are timed without
process start-up or dial (the time includes one pipe round trip, ~0.1 ms). The herd node and the
raw sockets are likewise set up once. ``extra_info`` holds messages (or round trips) per second of
the best round, and for the bridge tells the ZeroMQ messages the client sent per round (TELLS
batches). After each tell contender, the sink's count is checked to have grown by every tell sent.
The Go contenders are skipped when ``go`` is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import uvloop

from _bridge_service import connect_raw
from _harness import START_TIMEOUT, child_env, free_ports, record_paired, spawn_ready, stop_child
from herdrt import Actor
from herdrt.config import load_config
from herdrt.herd import HerdNode
from herdrt.herd.client import HerdClient

BENCH = Path(__file__).parent
GO_DIR = BENCH.parent / "go-interop"
GO = shutil.which("go")
SECRET = "bench-interop-secret"
TELLS_N = 200_000
ASKS_N = 5_000
CHUNK = 1_000  # herd link: tells queued per loop turn before the sender yields
ROUNDS = 5
PAIRED_ROUNDS = 7  # alternations of a bridge client's asks and the raw echo
DRAIN_TIMEOUT = 60.0  # the ask behind a flood of tells waits for all of them


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: shrink the work to a smoke test."""
    if request.config.getoption("benchmark_disable", False):
        monkeypatch.setitem(globals(), "TELLS_N", 5_000)
        monkeypatch.setitem(globals(), "ASKS_N", 200)


class Sink(Actor):
    """Counts what it is told; the ask "$count" answers the count, any other ask its message."""

    def __init__(self):
        self.n = 0

    def receive(self, message, ctx):
        if message == "$count":
            return self.n
        self.n += 1
        return message


def setup(node):
    """The --app hook of the bench node."""
    node.spawn(Sink, name="sink")


def _bench(benchmark, fn, n: int, key: str) -> int:
    """Time ``fn`` (one round of ``n`` messages) over ROUNDS rounds; the best rate in extra_info.
    Returns how many times ``fn`` ran (warm-up included)."""
    calls = [0]

    def once():
        calls[0] += 1
        fn()

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info[key] = round(n / stats.stats.min)
    return calls[0]


class _BenchLoop:
    """A bridge client in its own process (``herd-call bench-loop`` or ``_bridge_service.py
    client``): one connection to the bridge, one round per stdin command, one JSON line back."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=child_env(),
        )

    def round(self, op: str, target: str, n: int) -> dict:
        self.proc.stdin.write(f"{op} {target} {n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[0]} exited {self.proc.wait(5)}: {self.proc.stderr.read()[-3000:]}")
        result = json.loads(line)
        assert "error" not in result, result
        return result


# --- node A -----------------------------------------------------------------------------------------


class _NodeA:
    """Node ``A`` in its own process, and node ``R`` (another process: the remote target of a
    bridge client's credit-paced tells); the herd file also names ``P``, this process's herd node."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        port, bport, pport, rport = free_ports(4)
        self.endpoint = f"tcp://127.0.0.1:{bport}"
        self.path = tmp / "herd.toml"
        self.path.write_text(
            f'[herd]\nsecret = "{SECRET}"\nmailbox_size = 1048576\n'
            f'[[nodes]]\nname = "A"\nport = {port}\nbridge_port = {bport}\n'
            f'[[nodes]]\nname = "P"\nport = {pport}\n'
            f'[[nodes]]\nname = "R"\nport = {rport}\n'
        )
        self.config = load_config(self.path)
        self.log = open(tmp / "A.log", "ab")
        self.r_log = open(tmp / "R.log", "ab")
        self.proc, self.r_proc = (
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "herdrt.cli",
                    "serve",
                    "--config",
                    str(self.path),
                    "--node",
                    name,
                    "--app",
                    "bench_interop:setup",
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
            for name, log in (("A", self.log), ("R", self.r_log))
        )

    def count(self, timeout: float = 2.0, node: str = "A") -> int:
        """The count of ``sink`` on ``node``, asked by a herd client."""

        async def ask():
            async with HerdClient(self.config, node) as c:
                return await c.ask("sink", "$count", timeout=timeout)

        return asyncio.run(ask())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.count()
                self.count(node="R")
                return
            except (TimeoutError, OSError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def stop(self) -> str:
        """SIGTERM (kill if they linger); node A's log."""
        for proc in (self.proc, self.r_proc):
            proc.send_signal(signal.SIGTERM)
        for proc in (self.proc, self.r_proc):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.log.close()
        self.r_log.close()
        return (self.tmp / "A.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def node_a(tmp_path_factory):
    a = _NodeA(tmp_path_factory.mktemp("interop"))
    try:
        a.wait_ready()
        yield a
    finally:
        text = a.stop()
    # The node must keep its services alive through the floods (default eviction bound).
    assert "evicted" not in text, text[-3000:]


# --- the contenders' fixtures -------------------------------------------------------------------------


def _go_argv(tmp: Path, a: _NodeA) -> list[str]:
    if GO is None:
        pytest.skip("the `go` binary is not installed (needed for go-interop/)")
    env = {**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false")}
    proc = subprocess.run(
        [GO, "build", "-o", str(tmp) + os.sep, "./cmd/herd-call"],
        cwd=GO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (tmp / "secret.txt").write_text(SECRET)
    return [
        str(tmp / "herd-call"),
        "-endpoint",
        a.endpoint,
        "-secret-file",
        str(tmp / "secret.txt"),
        "-service",
        "bench",
        "-timeout",
        "60s",
        "bench-loop",
    ]


@pytest.fixture(scope="module", params=["go", "python"])
def bridge_client(request, node_a, tmp_path_factory):
    """A bridge client process of either language, connected to node A's bridge."""
    if request.param == "go":
        argv = _go_argv(tmp_path_factory.mktemp("go"), node_a)
    else:
        argv = [sys.executable, str(BENCH / "_bridge_service.py"), "client", node_a.endpoint, SECRET]
    client = _BenchLoop(argv)
    yield client
    stop_child(client.proc)


class _HerdP:
    """Herd node ``P`` here, on its own uvloop loop, linked to ``A``."""

    def __init__(self, a: _NodeA):
        self.loop = uvloop.new_event_loop()
        self.node = HerdNode(a.config, "P")
        self.run(self.node.start())
        self.sink = self.node.lookup("sink@A")

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def link(self):
        """The link to ``A`` once up, after what came in while the loop sat idle was handled."""
        await asyncio.sleep(0.005)
        return await self.node.links.wait_up("A", timeout=START_TIMEOUT)

    async def tells(self, n: int) -> None:
        link = await self.link()
        tell = self.sink.tell
        i = 0
        while i < n:
            end = min(i + CHUNK, n)
            while i < end:
                tell(i)
                i += 1
            await link.drain()  # waits only while the transport pushes back
            await asyncio.sleep(0)  # the link writes this chunk
        await self.sink.ask("$count", timeout=DRAIN_TIMEOUT)

    async def asks(self, n: int) -> None:
        await self.link()
        ask = self.sink.ask
        for i in range(n):
            await ask(i)

    def close(self) -> None:
        self.run(self.node.shutdown())
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.run(asyncio.sleep(0))
        self.loop.close()


@pytest.fixture(scope="module")
def herd_p(node_a):
    p = _HerdP(node_a)
    try:
        p.run(p.link())
        assert p.run(p.sink.ask(-1, timeout=START_TIMEOUT)) == -1
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def raw(request):
    """``_bridge_service.py decode``: a PULL and a ROUTER echo in a child process, decoding every body."""
    ports = spawn_ready(request, "_bridge_service.py", "decode")
    ctx, (push, back, dealer) = connect_raw(ports, sndhwm=1_000_000)
    dealer.send(msgpack.packb("warm up"))
    dealer.recv()
    yield push, back, dealer
    for s in (push, back, dealer):
        s.close(0)
    ctx.term()


def _check_count(a: _NodeA, before: int, calls: int, n: int) -> None:
    after = a.count()
    assert after - before == calls * n, f"sink counted {after - before} tells, expected {calls} x {n}"


# --- interop-tell -----------------------------------------------------------------------------------


@pytest.mark.benchmark(group="interop-tell")
def test_bridge_tells(benchmark, bridge_client, node_a):
    batches = []
    before = node_a.count()

    def round_():
        r = bridge_client.round("tell", "sink", TELLS_N)
        assert r["n"] == TELLS_N
        batches.append(r["tell_batches"])

    calls = _bench(benchmark, round_, TELLS_N, "messages_per_s")
    benchmark.extra_info["zmq_messages_per_round"] = min(batches)
    _check_count(node_a, before, calls, TELLS_N)


@pytest.mark.benchmark(group="interop-send")
def test_bridge_tells_to_another_node(benchmark, bridge_client, node_a):
    """The same tells to ``sink@R``, another node: the bridge sends them with credit from R
    (``HerdNode.outflow``) and stops reading its socket while it has none, which blocks the
    client's sends: paced end to end, nothing lost (checked below)."""
    before = node_a.count(node="R")

    def round_():
        r = bridge_client.round("tell", "sink@R", TELLS_N)
        assert r["n"] == TELLS_N

    calls = _bench(benchmark, round_, TELLS_N, "messages_per_s")
    after = node_a.count(node="R")
    assert after - before == calls * TELLS_N, f"sink@R counted {after - before}, expected {calls} x {TELLS_N}"


@pytest.mark.benchmark(group="interop-tell")
def test_herd_link_tells(benchmark, herd_p, node_a):
    before = node_a.count()
    calls = _bench(benchmark, lambda: herd_p.run(herd_p.tells(TELLS_N)), TELLS_N, "messages_per_s")
    _check_count(node_a, before, calls, TELLS_N)
    assert herd_p.node.counters["undeliverable"] == 0


@pytest.mark.benchmark(group="interop-tell")
def test_raw_pyzmq_push_pull_drained(benchmark, raw):
    push, back, _ = raw
    body = msgpack.packb([2, None, "sink", 12345], use_bin_type=True)  # what a Go tell carries

    def round_():
        send = push.send
        for _ in range(TELLS_N):
            send(body)
        send(b"")  # the child answers an empty message with its count
        assert int(back.recv()) == TELLS_N

    _bench(benchmark, round_, TELLS_N, "messages_per_s")


# --- interop-ask ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="interop-ask")
def test_bridge_asks(benchmark, bridge_client):
    _bench(benchmark, lambda: bridge_client.round("ask", "sink", ASKS_N), ASKS_N, "round_trips_per_s")


@pytest.mark.benchmark(group="interop-ask")
def test_herd_link_asks(benchmark, herd_p):
    _bench(benchmark, lambda: herd_p.run(herd_p.asks(ASKS_N)), ASKS_N, "round_trips_per_s")


def _raw_echoes(dealer):
    """One round of ``ASKS_N`` sequential round trips through the raw ROUTER echo."""
    body = msgpack.packb([3, None, "sink", 1, "svc", 1], use_bin_type=True)
    send, recv, unpack = dealer.send, dealer.recv, msgpack.unpackb

    def round_():
        for _ in range(ASKS_N):
            send(body)
            unpack(recv())

    return round_


@pytest.mark.benchmark(group="interop-ask")
def test_raw_pyzmq_dealer_router_echo(benchmark, raw):
    _bench(benchmark, _raw_echoes(raw[2]), ASKS_N, "round_trips_per_s")


@pytest.mark.benchmark(group="interop-ask-paired")
def test_asks_paired(benchmark, request, bridge_client, raw):
    """Bridge asks and the raw DEALER/ROUTER echo alternated round by round, so their ratio is taken
    on the same machine state (see ``_harness.record_paired``; printed after the tables)."""
    record_paired(
        benchmark,
        request.node.name,
        lambda: bridge_client.round("ask", "sink", ASKS_N),
        {"raw pyzmq echo": _raw_echoes(raw[2])},
        PAIRED_ROUNDS,
    )
