"""Go services in a real herd: Python node processes with a ZeroMQ bridge, Go processes built from
``go-interop/cmd`` (PROTOCOL.md, Bridge).

Skipped only when the ``go`` binary is missing (as tests/test_go.py); a Go build that fails (e.g.
libzmq missing) is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from _herdtest import NodeProcesses, free_ports
from herdrt.config import load_config
from herdrt.core import HashRing, OnlineStats
from herdrt.errors import ActorNotFound, AskTimeout, NodeUnavailable
from herdrt.herd.client import HerdClient

TESTS = Path(__file__).parent
GO_DIR = TESTS.parent / "go-interop"
GO = shutil.which("go")
SECRET = "interop-test-secret"

pytestmark = pytest.mark.skipif(GO is None, reason="the `go` binary is not installed (needed for go-interop/)")


@pytest.fixture(scope="module")
def gobin(tmp_path_factory):
    out = tmp_path_factory.mktemp("gobin")
    env = {**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false")}
    proc = subprocess.run(
        [GO, "build", "-o", str(out) + os.sep, "./cmd/..."],
        cwd=GO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"go build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class Herd(NodeProcesses):
    """Node processes (and Go service processes) of one herd file under tmp_path."""

    def __init__(self, tmp_path, nodes, bridge_node, extra="", links=""):
        super().__init__(tmp_path)
        ports = free_ports(len(nodes) + 1)
        self.bridge_port = ports[-1]
        text = (
            f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.2\n{links}[herd.bridge]\nevict_after = 1.0\n{extra}'
        )
        for name, port in zip(nodes, ports, strict=False):
            text += f'[[nodes]]\nname = "{name}"\nport = {port}\n'
            if name == bridge_node:
                text += f"bridge_port = {self.bridge_port}\n"
        self.path = tmp_path / "herd.toml"
        self.path.write_text(text)
        (tmp_path / "secret.txt").write_text(SECRET)
        self.secret_file = tmp_path / "secret.txt"
        self.config = load_config(self.path)
        self.endpoint = f"tcp://127.0.0.1:{self.bridge_port}"

    def node(self, name, app="herd_app:setup"):
        self.serve(name, self.path, "--app", app, "--log-level", "info")

    def go(self, key, binary, *args):
        self.spawn(key, [str(binary), "-endpoint", self.endpoint, *args])

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.out_dir.glob("*.log"))


@pytest.fixture
def herd(tmp_path, gobin):
    h = Herd(tmp_path, ["A", "B"], "A")
    h.node("A")
    h.node("B")
    yield h
    h.stop_all()


async def ask(config, via, target, message, timeout=5.0):
    async with HerdClient(config, via) as client:
        return await client.ask(target, message, timeout=timeout)


async def wait_answer(config, via, target, message, timeout=30.0):
    """Ask until the target answers (nodes, links and the Go service come up in any order)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ask(config, via, target, message, timeout=2.0)
        except (TimeoutError, OSError, ConnectionError, NodeUnavailable, ActorNotFound, AskTimeout):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def go_call(gobin, herd, *args, service="caller", extra=()):
    proc = subprocess.run(
        [
            str(gobin / "herd-call"),
            "-endpoint",
            herd.endpoint,
            "-service",
            service,
            "-secret-file",
            str(herd.secret_file),
            *extra,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), proc.stderr


def test_python_and_go_ask_each_other(herd, gobin):
    herd.go(
        "echo", gobin / "herd-echo", "-service", "echo-go", "-names", "echo-go", "-secret-file", str(herd.secret_file)
    )
    value = {
        "i": 7,
        "neg": -3,
        "f": 2.5,
        "s": "é",
        "b": b"\x00\xff",
        "n": None,
        "t": True,
        "l": [1, [2, "x"]],
        "big": 2**64 - 1,
    }

    async def main():
        # Python (a client of node B) asks the Go service on A: routed B -> A -> bridge -> Go
        assert await wait_answer(herd.config, "B", "echo-go@A", value) == value
        async with HerdClient(herd.config, "B") as client:
            for i in range(5):
                client.tell("echo-go@A", i)
            assert await client.ask("echo-go@A", "$tells") == 5  # FIFO per sender-receiver pair
        await wait_answer(herd.config, "A", "echo@B", "up")

    try:
        asyncio.run(main())
        # Go asks a Python actor on the node it is not connected to (routed A -> B)
        code, out, err = go_call(gobin, herd, "ask", "echo@B", '{"k": [1, 2.5, "s"]}')
        assert code == 0, err
        assert out == {"ok": True, "value": ["B", {"k": [1, 2.5, "s"]}]}
        # errors come back typed
        code, out, _ = go_call(gobin, herd, "ask", "nobody@B", "1")
        assert code == 1 and out["type"] == "ActorNotFound"
        # a Go service asking another Go service through the bridge
        code, out, _ = go_call(gobin, herd, "ask", "echo-go", '"hi"')
        assert out == {"ok": True, "value": "hi"}
    except BaseException:
        print(herd.logs())
        raise


def test_stats_service_matches_online_stats(herd, gobin):
    herd.go(
        "stats", gobin / "herd-stats", "-service", "stats-go", "-names", "stats", "-secret-file", str(herd.secret_file)
    )
    xs = [0.5, 3.0, -2.25, 1e6, 7, 42.125, -1e-3]

    async def main():
        await wait_answer(herd.config, "B", "stats@A", "count")
        async with HerdClient(herd.config, "B") as client:
            for x in xs:
                client.tell("stats@A", x)
            return await client.ask("stats@A", "state"), await client.ask("stats@A", "mean")

    try:
        state, mean = asyncio.run(main())
    except BaseException:
        print(herd.logs())
        raise
    ref = OnlineStats()
    for x in xs:
        ref.update(x)
    want = ref.to_dict()
    assert state["count"] == want["count"] == len(xs)
    for key in ("mean", "m2", "min", "max", "sum"):
        assert state[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert mean == pytest.approx(ref.mean, rel=1e-12)


def test_go_and_python_place_keys_alike(gobin):
    nodes = ["A", "B", "Clark", "Jaquez", "nöde-5"]
    proc = subprocess.run(
        [str(gobin / "herd-place"), "-nodes", ",".join(nodes), "-n", "10000", "-format", "counter:k%d"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(proc.stdout)
    ring = HashRing(nodes)
    want = [ring.lookup(f"counter:k{i}") for i in range(10000)]
    assert got["nodes"] == nodes
    assert got["owners"] == want
    assert len(set(want)) == len(nodes)


def test_killed_go_service_fails_fast_and_comes_back(herd, gobin):
    args = ("-service", "echo-go", "-names", "echo-go", "-secret-file", str(herd.secret_file))
    herd.go("echo", gobin / "herd-echo", *args)

    async def main():
        assert await wait_answer(herd.config, "B", "echo-go@A", "x") == "x"
        herd.kill("echo")
        # Asks wait on the silent service at most until its eviction (evict_after 1 s); after
        # that they fail at once with NodeUnavailable, never AskTimeout.
        async with HerdClient(herd.config, "B") as client:
            failures = []
            while True:
                try:
                    await client.ask("echo-go@A", "x", timeout=30.0)
                except NodeUnavailable as exc:
                    failures.append(exc)
                    if len(failures) == 3:
                        break
        herd.go("echo", gobin / "herd-echo", *args)
        assert await wait_answer(herd.config, "B", "echo-go@A", "back") == "back"

    try:
        asyncio.run(main())
    except BaseException:
        print(herd.logs())
        raise


def test_curve_refuses_a_wrong_key(tmp_path, gobin):
    zmq = pytest.importorskip("zmq")
    server_pub, server_sec = (k.decode() for k in zmq.curve_keypair())
    client_pub, client_sec = (k.decode() for k in zmq.curve_keypair())
    wrong_pub, wrong_sec = (k.decode() for k in zmq.curve_keypair())
    (tmp_path / "bridge.key").write_text(server_sec)
    (tmp_path / "bridge.key").chmod(0o600)
    extra = f'curve_secret_key_file = "{tmp_path / "bridge.key"}"\nallowed_client_keys = ["{client_pub}"]\n'
    herd = Herd(tmp_path, ["A"], "A", extra=extra)
    herd.node("A")
    try:
        herd.go(
            "echo",
            gobin / "herd-echo",
            "-service",
            "echo-go",
            "-names",
            "echo-go",
            "-curve-server-key",
            server_pub,
            "-curve-public-key",
            client_pub,
            "-curve-secret-key",
            client_sec,
        )
        assert asyncio.run(wait_answer(herd.config, "A", "echo-go@A", "sealed")) == "sealed"
        # Three ways to be refused, each counted by the node (curve_denied counted 1 of 3 before).
        refusals = {
            "a key not allowed": (
                "-curve-server-key",
                server_pub,
                "-curve-public-key",
                wrong_pub,
                "-curve-secret-key",
                wrong_sec,
            ),
            "no CURVE at all": (),
            "the wrong server key": (
                "-curve-server-key",
                wrong_pub,
                "-curve-public-key",
                client_pub,
                "-curve-secret-key",
                client_sec,
            ),
        }
        for label, curve in refusals.items():
            before = asyncio.run(ask(herd.config, "A", "$node", "status"))["bridge"]["counters"]["curve_denied"]
            code, out, err = go_call(
                gobin, herd, "ask", "echo-go", '"x"', service="intruder", extra=(*curve, "-timeout", "2s")
            )
            assert code == 2, (label, out, err)
            assert out["refused"] in ("curve", "unavailable"), label
            after = asyncio.run(ask(herd.config, "A", "$node", "status"))["bridge"]["counters"]["curve_denied"]
            assert after > before, label
        assert asyncio.run(ask(herd.config, "A", "echo-go@A", "still")) == "still"  # the allowed one never noticed
    except BaseException:
        print(herd.logs())
        raise
    finally:
        herd.stop_all()


def test_a_go_tell_flood_to_an_actor_two_hops_away_is_paced_and_loses_nothing(tmp_path, gobin):
    """200 k Go tells through the bridge on A to a mailbox of 1000 (policy reject) on C, via B:
    they go with credit, so the bridge holds the Go client back (its Tell blocks) instead of
    dropping what C cannot take yet. Every one arrives, in order; nothing is a dead letter."""
    herd = Herd(tmp_path, ["A", "B", "C"], "A", links='links = [["A", "B"], ["B", "C"]]\n')
    try:
        for name in ("A", "B", "C"):
            herd.node(name, "herd_app:flow")
        config = herd.config
        asyncio.run(wait_answer(config, "A", "sink@C", "stats"))
        n = 200_000
        code, result, err = go_call(gobin, herd, "bench-tell", "sink@C", str(n))
        assert code == 0, err
        seen = asyncio.run(ask(config, "C", "sink", "stats"))
        assert seen == {"count": n, "next": {"int": n}, "disorder": 0, "gaps": 0}
        states = {name: asyncio.run(ask(config, name, "$node", "status")) for name in ("A", "B", "C")}
        assert all(s["dead_letters"]["total"] == 0 for s in states.values()), states
        bridge = states["A"]["bridge"]["counters"]
        assert bridge["undelivered_tells"] == 0 and bridge["credit_waits"] > 0
    finally:
        herd.stop_all()
