"""A herd of real OS processes (`herdrt serve --node`) on 127.0.0.1, driven like a user would."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _herdtest import NodeProcesses, free_ports, status, wait_live
from herdrt.config import load_config
from herdrt.core import FrameDecoder
from herdrt.errors import NodeUnavailable
from herdrt.herd import protocol as P
from herdrt.herd.client import HerdClient

NAMES = ["a", "b", "c", "d"]
LINKS = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("b", "d")]


class ProcessHerd(NodeProcesses):
    """Node processes of one herd file; start, SIGKILL and restart them one by one."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        ports = free_ports(len(NAMES))
        text = '[herd]\nsecret = "process-test-secret"\nheartbeat_interval = 0.2\n'
        text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in LINKS) + "]\n"
        text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip(NAMES, ports, strict=False))
        self.path = tmp_path / "herd.toml"
        self.path.write_text(text)
        self.config = load_config(self.path)

    def start(self, name):
        self.serve(name, self.path, "--app", "herd_app:setup", "--log-level", "info")

    def log(self, name):
        return self.output(name)


@pytest.fixture
def herd(tmp_path):
    h = ProcessHerd(tmp_path)
    for name in NAMES:
        h.start(name)
    yield h
    h.stop_all()


def test_process_herd_end_to_end(herd):
    config = herd.config

    async def main():
        await wait_live(config, "a", NAMES)
        async with HerdClient(config, "a") as client:
            # remote asks both ways, and c is two hops from a (a-b-c or a-d-c)
            assert await client.ask("echo@b", "x") == ["b", "x"]
            assert await client.ask("echo@c", {"k": [1, 2]}) == ["c", {"k": [1, 2]}]
        async with HerdClient(config, "c") as client:
            assert await client.ask("echo@a", "back") == ["a", "back"]
            # a broadcast reaches every node exactly once (the graph has cycles)
            assert await client.ask("news", {"say": "hello"}) == "sent"
        await asyncio.sleep(0.5)
        for name in NAMES:
            async with HerdClient(config, name) as client:
                assert await client.ask("news", "get") == ["hello"], name
        # keyed actors: one placement herd-wide
        async with HerdClient(config, "b") as client:
            placed = {}
            for i in range(12):
                owner, n = await client.ask(f"k{i}", "inc", kind="counter")
                placed[f"k{i}"] = owner
                assert n == 1
        assert len(set(placed.values())) >= 3  # the ring spreads 12 keys over the nodes

        # SIGKILL c: detected within the 3 s bound, asks to it fail fast, keyed actors move
        slow = asyncio.ensure_future(_ask(config, "a", "echo@c", {"sleep": 30}, timeout=20))
        await asyncio.sleep(0.3)
        killed_at = time.monotonic()
        herd.kill("c")
        with pytest.raises(NodeUnavailable):
            await slow
        assert time.monotonic() - killed_at < 3.0
        await wait_live(config, "a", ["a", "b", "d"], timeout=3.0)
        assert time.monotonic() - killed_at < 3.0, "node down not detected within 3 s"
        with pytest.raises(NodeUnavailable):
            await _ask(config, "a", "echo@c", "x")
        async with HerdClient(config, "b") as client:
            for key, owner in placed.items():
                new_owner, n = await client.ask(key, "inc", kind="counter")
                assert new_owner != "c"
                if owner != "c":
                    assert (new_owner, n) == (owner, 2)  # untouched keys kept their actor
                else:
                    assert n == 1  # re-activated on its new owner

        # c restarts and rejoins without anyone's help
        herd.start("c")
        await wait_live(config, "a", NAMES, timeout=20.0)
        assert await _ask(config, "a", "echo@c", "again") == ["c", "again"]
        assert "node c down" in herd.log("a") and "node c up" in herd.log("a")

    asyncio.run(main())


async def _ask(config, via, target, message, timeout=5.0, kind=None):
    async with HerdClient(config, via) as client:
        return await client.ask(target, message, timeout=timeout, kind=kind)


def test_bad_bytes_close_only_their_connection(herd):
    config = herd.config

    async def main():
        await wait_live(config, "a", NAMES)
        async with HerdClient(config, "a") as client:
            host, port = config.node("a").address
            for bad in (b"\x00\x00\x00\x05\xc1garbage!", b"\xff\xff\xff\xff" + b"x" * 64, b"GET / HTTP/1.1\r\n\r\n"):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(bad)
                await writer.drain()
                # the node closes this connection (read() ends) with an ERROR frame saying why
                answer = await asyncio.wait_for(reader.read(), 5.0)
                (error,) = FrameDecoder().feed(answer[answer.index(b"\x00\x00") :])[-1:]
                assert error[0] == P.ERROR and error[2] == P.E_FRAME, error
                writer.close()
            # an authenticated client that sends an oversized frame loses its own link, no more
            async with HerdClient(config, "a") as rogue:
                rogue._link.transport.write(b"\x7f\xff\xff\xff")
                await asyncio.wait_for(rogue._link.wait_closed(), 5.0)
            assert await client.ask("echo@d", "still here") == ["d", "still here"]
        status_a = await status(config, "a")
        assert set(status_a["live"]) == set(NAMES)

    asyncio.run(main())


def test_wrong_secret_is_refused_on_both_sides(herd, tmp_path):
    from herdrt.herd.link import LinkRefused

    bad = tmp_path / "bad.toml"
    bad.write_text(herd.path.read_text().replace("process-test-secret", "some-other-secret"))
    config = load_config(bad)

    async def main():
        await wait_live(herd.config, "a", NAMES)
        with pytest.raises(LinkRefused) as info:
            await HerdClient(config, "a").connect()
        assert info.value.code == "auth"

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while "authentication failed" not in herd.log("a"):  # the node logs the refusal too
        assert time.monotonic() < deadline, herd.log("a")
        time.sleep(0.05)


def test_cli_status_ask_and_tell_against_the_herd(herd):
    asyncio.run(wait_live(herd.config, "a", NAMES))
    cli = [sys.executable, "-m", "herdrt.cli"]
    out = subprocess.run(cli + ["status", "--config", str(herd.path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in NAMES:
        assert f"\n{name} " in out.stdout and "4/4" in out.stdout
    out = subprocess.run(
        cli + ["ask", "--config", str(herd.path), "a", "echo@c", '{"n": 1}'], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == '["c", {"n": 1}]', out.stderr
    out = subprocess.run(
        cli + ["ask", "--config", str(herd.path), "a", "ghost@b"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "no actor 'ghost' on node b; `herdrt actors b" in out.stderr
    out = subprocess.run(
        cli + ["tell", "--config", str(herd.path), "b", "news@d", '"told"'], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        cli + ["tell", "--config", str(herd.path), "b", "ghost@b", '"lost"'], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "no actor 'ghost' on node b" in out.stderr  # the CLI's tell is confirmed

    async def tell_ghost():  # a program's tell is fire-and-forget: its loss is a dead letter on b
        async with HerdClient(herd.config, "b") as client:
            client.tell("ghost@b", "lost")
            await client.ask("echo@b", "flush")  # behind the tell on the same link

    asyncio.run(tell_ghost())
    out = subprocess.run(cli + ["status", "--config", str(herd.path)], capture_output=True, text=True, timeout=60)
    assert "dead letters: 1 (unknown_actor 1)" in out.stdout, out.stdout
    herd.kill("d")
    out = subprocess.run(cli + ["status", "--config", str(herd.path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "DOWN" in out.stdout


def test_serve_supervises_node_processes_and_stops_on_ctrl_c(tmp_path):
    herd = ProcessHerd(tmp_path)  # only for its herd file; `herdrt serve` starts the nodes
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herdrt.cli",
            "serve",
            "--config",
            str(herd.path),
            "--app",
            "herd_app:setup",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=herd.env,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(serve.stdout), daemon=True)
    reader.start()
    try:

        async def pids():
            await wait_live(herd.config, "a", NAMES)
            return {n: (await status(herd.config, n))["pid"] for n in NAMES}

        before = asyncio.run(pids())
        deadline = time.monotonic() + 20
        while not any(line.startswith("herd ready: ") for line in lines):  # one line once all is up
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        ready = next(line for line in lines if line.startswith("herd ready: "))
        assert ready.startswith(
            f"herd ready: {len(NAMES)}/{len(NAMES)} nodes up, {len(LINKS)}/{len(LINKS)} links up in "
        )
        os.kill(before["b"], signal.SIGKILL)  # a node process crashes ...
        deadline = time.monotonic() + 20
        while True:  # ... and the supervisor starts it again; it rejoins
            try:
                after = asyncio.run(status(herd.config, "b"))["pid"]
                if after != before["b"]:
                    break
            except (TimeoutError, OSError, ConnectionError, NodeUnavailable):
                pass
            assert time.monotonic() < deadline, "node b was not restarted"
            time.sleep(0.1)
        asyncio.run(wait_live(herd.config, "a", NAMES))
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        serve.wait(20)
        reader.join(10)
        out = "".join(lines)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()  # its nodes notice their supervisor is gone and stop
                serve.wait()
    assert serve.returncode == 0, out
    assert "herd stopped" in out and "[b] " in out and "restarting" in out
    for pid in [*before.values(), after]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_nodes_stop_when_their_supervisor_is_killed(tmp_path):
    herd = ProcessHerd(tmp_path)
    serve = subprocess.Popen(
        [sys.executable, "-m", "herdrt.cli", "serve", "--config", str(herd.path), "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=herd.env,
    )
    try:

        async def pids():
            await wait_live(herd.config, "a", NAMES)
            return [(await status(herd.config, n))["pid"] for n in NAMES]

        nodes = asyncio.run(pids())
    finally:
        serve.kill()  # no chance to stop its nodes
        serve.wait()
    deadline = time.monotonic() + 15
    for pid in nodes:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"node process {pid} outlived its supervisor"
            time.sleep(0.1)
