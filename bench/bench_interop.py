"""Go -> Python through the ZeroMQ bridge, beside raw pyzmq.

Groups:
  * ``interop-tell``: a Go service (``herd-call bench-tell``) tells N numbers to a Python actor
    through the bridge (the last ask behind them returns when all are in), vs a raw pyzmq
    PUSH -> PULL of N msgpack bodies. Target: Go -> Python >= 500,000 messages/s.
  * ``interop-ask``: sequential ask round trips Go -> bridge -> Python actor -> Go, vs a raw pyzmq
    DEALER -> ROUTER echo. Target: ask round trip >= 0.7x the raw echo (in round trips per second).

The Go timings are taken inside the Go process (no process start-up); each benchmark round
runs one batch and ``extra_info`` holds messages/s. Skipped when ``go`` is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
from _ports import free_ports

from herdrt import Actor
from herdrt.client import HerdClient
from herdrt.config import load_config

BENCH = Path(__file__).parent
GO_DIR = BENCH.parent / "go-interop"
GO = shutil.which("go")
SECRET = "bench-interop-secret"
TELLS = 50_000
ASKS = 2_000

pytestmark = pytest.mark.skipif(GO is None, reason="the `go` binary is not installed (needed for go-interop/)")


class Sink(Actor):
    """Counts what it is told; the ask "$count" answers the count."""

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


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    env = {**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false")}
    proc = subprocess.run([GO, "build", "-o", str(tmp) + os.sep, "./cmd/herd-call"], cwd=GO_DIR, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    port, bport = free_ports(2)
    path = tmp / "herd.toml"
    path.write_text(f'[herd]\nsecret = "{SECRET}"\nmailbox_size = 1048576\n'
                    f'[[nodes]]\nname = "A"\nport = {port}\nbridge_port = {bport}\n')
    (tmp / "secret.txt").write_text(SECRET)
    penv = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp / "A.log", "ab")
    node = subprocess.Popen([sys.executable, "-m", "herdrt.cli", "serve", "--config", str(path), "--node", "A",
                             "--app", "bench_interop:setup", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=penv)
    config = load_config(path)

    async def ready():
        deadline = time.monotonic() + 30
        while True:
            try:
                async with HerdClient(config, "A") as c:
                    return await c.ask("sink", "$count", timeout=2)
            except (OSError, ConnectionError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    asyncio.run(ready())
    argv = [str(tmp / "herd-call"), "-endpoint", f"tcp://127.0.0.1:{bport}", "-secret-file", str(tmp / "secret.txt")]
    yield argv
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(10)
    except subprocess.TimeoutExpired:
        node.kill()


def _go(argv, *args):
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rounds(benchmark, fn, extra_key):
    """Run fn (which returns (n, seconds)) as benchmark rounds; record the best rate."""
    rates = []

    def once():
        n, seconds = fn()
        rates.append(n / seconds)

    benchmark.pedantic(once, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info[extra_key] = round(max(rates))


@pytest.mark.benchmark(group="interop-tell")
def test_go_to_python_tells(benchmark, bridge):
    def run():
        r = _go(bridge, "-service", "bench-tell", "bench-tell", "sink", str(TELLS))
        return r["n"], r["seconds"]

    _rounds(benchmark, run, "messages_per_s")


@pytest.mark.benchmark(group="interop-tell")
def test_raw_pyzmq_push_pull(benchmark):
    import zmq

    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    body = msgpack.packb([2, None, "sink", 12345], use_bin_type=True)

    def run():
        done = threading.Event()

        def consume():
            for _ in range(TELLS):
                msgpack.unpackb(pull.recv(), raw=False)
            done.set()

        t = threading.Thread(target=consume)
        t.start()
        start = time.perf_counter()
        for _ in range(TELLS):
            push.send(body)
        done.wait()
        t.join()
        return TELLS, time.perf_counter() - start

    try:
        _rounds(benchmark, run, "messages_per_s")
    finally:
        push.close(0)
        pull.close(0)


@pytest.mark.benchmark(group="interop-ask")
def test_go_asks_python_round_trip(benchmark, bridge):
    def run():
        r = _go(bridge, "-service", "bench-ask", "bench-ask", "sink", str(ASKS))
        return r["n"], r["seconds"]

    _rounds(benchmark, run, "round_trips_per_s")


@pytest.mark.benchmark(group="interop-ask")
def test_raw_pyzmq_dealer_router_echo(benchmark):
    import zmq

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def echo():
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                ident, body = router.recv_multipart()
                msgpack.unpackb(body, raw=False)
                router.send_multipart([ident, body])

    t = threading.Thread(target=echo)
    t.start()
    body = msgpack.packb([3, None, "sink", 1, "svc", 1], use_bin_type=True)

    def run():
        start = time.perf_counter()
        for _ in range(ASKS):
            dealer.send(body)
            msgpack.unpackb(dealer.recv(), raw=False)
        return ASKS, time.perf_counter() - start

    try:
        _rounds(benchmark, run, "round_trips_per_s")
    finally:
        stop.set()
        t.join()
        dealer.close(0)
        router.close(0)
