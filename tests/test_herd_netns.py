"""A herd whose nodes live in separate network namespaces: real, separate addresses.

Each node process runs in its own namespace (``ip netns exec``), with one veth into a Linux
bridge in a hub namespace; the test process joins the bridge too, so its clients reach the
nodes at their own addresses. The herd file links a–b–c in a line, so a and c talk through b.
Skipped, with the reason, only where the machine forbids creating namespaces.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from _herdtest import NodeProcesses, wait_live
from herdrt.config import load_config
from herdrt.errors import NodeUnavailable
from herdrt.herd.client import HerdClient

NAMES = ["a", "b", "c"]
PORT = 7400  # the same port on every node: the addresses differ


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Namespaces:
    """A hub namespace with a bridge, one namespace per node and a veth from the test's own."""

    def __init__(self):
        self.tag = f"hrt{os.getpid() % 100000}"
        self.subnet = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.made: list[str] = []
        self.root_veth: str | None = None

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def create(self) -> None:
        hub = self.ns("hub")
        _ip("netns", "add", hub)
        self.made.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, name in enumerate(NAMES, 1):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.made.append(ns)
            inside, port = f"{self.tag}{name}0", f"{self.tag}{name}1"
            _ip("link", "add", inside, "type", "veth", "peer", "name", port)
            _ip("link", "set", inside, "netns", ns)
            self._to_bridge(port)
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.root_veth = f"{self.tag}r0"
        _ip("link", "add", self.root_veth, "type", "veth", "peer", "name", f"{self.tag}r1")
        self._to_bridge(f"{self.tag}r1")
        _ip("addr", "add", f"{self.address(254)}/24", "dev", self.root_veth)
        _ip("link", "set", self.root_veth, "up")

    def _to_bridge(self, veth: str) -> None:
        hub = self.ns("hub")
        _ip("link", "set", veth, "netns", hub)
        _ip("-n", hub, "link", "set", veth, "master", "br0")
        _ip("-n", hub, "link", "set", veth, "up")

    def destroy(self) -> None:
        if self.root_veth is not None:
            subprocess.run(["ip", "link", "del", self.root_veth], capture_output=True)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def peers(self, name: str) -> set[str]:
        """Remote addresses of the established TCP connections inside ``name``'s namespace."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), "ss", "-Htn", "state", "established"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


class NamespacedHerd(NodeProcesses):
    """Node processes, each started in its own namespace."""

    def __init__(self, tmp_path, spaces: Namespaces):
        super().__init__(tmp_path)
        self.spaces = spaces
        text = '[herd]\nsecret = "netns-test-secret"\nheartbeat_interval = 0.2\nlinks = [["a", "b"], ["b", "c"]]\n'
        text += "".join(
            f'[[nodes]]\nname = "{n}"\nhost = "{spaces.address(i)}"\nport = {PORT}\n' for i, n in enumerate(NAMES, 1)
        )
        self.path = tmp_path / "herd.toml"
        self.path.write_text(text)
        self.config = load_config(self.path)

    def start(self, name: str) -> None:
        self.spawn(
            name,
            [
                "ip",
                "netns",
                "exec",
                self.spaces.ns(name),
                sys.executable,
                "-m",
                "herdrt.cli",
                "serve",
                "--config",
                str(self.path),
                "--node",
                name,
                "--app",
                "herd_app:setup",
                "--log-level",
                "info",
            ],
        )


@pytest.fixture
def herd(tmp_path):
    if shutil.which("ip") is None or shutil.which("ss") is None:
        pytest.skip("iproute2 (`ip`, `ss`) is not installed")
    spaces = Namespaces()
    try:
        spaces.create()
    except subprocess.CalledProcessError as exc:
        spaces.destroy()
        pytest.skip(f"this machine forbids network namespaces and veth pairs: {exc.stderr.strip()}")
    h = NamespacedHerd(tmp_path, spaces)
    try:
        for name in NAMES:
            h.start(name)
        yield h
    finally:
        h.stop_all()
        spaces.destroy()


def test_herd_across_network_namespaces(herd):
    config, spaces = herd.config, herd.spaces

    async def main():
        await wait_live(config, "a", NAMES, timeout=20)
        async with HerdClient(config, "a") as client:
            assert await client.ask("echo@c", "across") == ["c", "across"]  # a -> b -> c, two hops
        # b holds its links to a and c over their own addresses, not over loopback
        assert {spaces.address(1), spaces.address(3)} <= spaces.peers("b")
        assert spaces.peers("a") >= {spaces.address(2)} and spaces.address(3) not in spaces.peers("a")

        killed_at = time.monotonic()
        herd.kill("c")
        await wait_live(config, "a", ["a", "b"], timeout=3.0)
        assert time.monotonic() - killed_at < 3.0
        async with HerdClient(config, "a") as client:
            with pytest.raises(NodeUnavailable):
                await client.ask("echo@c", "gone?", timeout=5)

        herd.start("c")  # same namespace, same address: it rejoins by itself
        await wait_live(config, "a", NAMES, timeout=20)
        async with HerdClient(config, "a") as client:
            assert await client.ask("echo@c", "back") == ["c", "back"]

    asyncio.run(main())
    log_b = herd.output("b")  # no handshake refused for a wrong secret, version or name
    assert not any(f"refused ({code})" in log_b for code in ("auth", "version", "unknown_node")), log_b
