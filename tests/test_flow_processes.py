"""Flow control across real node processes in a line, A - B - C (``herdrt serve --node``).

A sender on A awaits ``ref.send`` to an actor on C, two hops away: nothing may be lost, order must
hold, and the memory of the node in the middle and of the target stays bounded however fast A
offers. Plain tells may be lost, but never silently: each is a dead letter somewhere, reported to
A. Killing B in the middle of a flood makes A's ``send`` fail at once, every message counted.
"""

import asyncio
import os
import time

import pytest

from _herdtest import NodeProcesses, free_ports, status, wait_live
from herdrt.config import load_config
from herdrt.herd.client import HerdClient

NAMES = ["A", "B", "C"]
#: How long the send flood to a slow actor runs (HERDRT_SOAK_SECONDS shortens or lengthens it).
SOAK_SECONDS = float(os.environ.get("HERDRT_SOAK_SECONDS", "30"))
#: What B (forwarding) and C (the target) may hold at most, resident, during the flood.
RSS_BOUND_MB = 150


class LineHerd(NodeProcesses):
    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        ports = free_ports(len(NAMES))
        text = '[herd]\nsecret = "flow-test-secret"\nheartbeat_interval = 0.2\nlinks = [["A", "B"], ["B", "C"]]\n'
        text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip(NAMES, ports, strict=True))
        self.path = tmp_path / "herd.toml"
        self.path.write_text(text)
        self.config = load_config(self.path)
        for name in NAMES:
            self.serve(name, self.path, "--app", "herd_app:flow", "--log-level", "info")


@pytest.fixture
def line(tmp_path):
    herd = LineHerd(tmp_path)
    asyncio.run(wait_live(herd.config, "A", NAMES))
    yield herd
    herd.stop_all()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def ask(config, node, target, message, timeout=10.0):
    async with HerdClient(config, node) as client:
        return await client.ask(target, message, timeout=timeout)


@pytest.mark.slow
def test_send_to_a_slow_actor_two_hops_away_loses_nothing_in_bounded_memory(line):
    config = line.config

    async def main():
        pids = {n: (await status(config, n))["pid"] for n in ("B", "C")}
        assert await ask(config, "A", "flooder", {"send": "slow@C", "seconds": SOAK_SECONDS}) == "started"
        peak = dict.fromkeys(pids, 0.0)
        deadline = time.monotonic() + SOAK_SECONDS + 30
        while True:
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_mb(pid))
            progress = await ask(config, "A", "flooder", "poll")
            if progress["done"]:
                break
            assert time.monotonic() < deadline, progress
            await asyncio.sleep(0.25)
        assert progress["error"] is None, progress
        sent = progress["sent"]
        while (seen := await ask(config, "C", "slow", "stats"))["count"] < sent:
            assert time.monotonic() < deadline, (seen, sent)  # the last window still draining
            await asyncio.sleep(0.1)
        assert seen == {"count": sent, "next": {"A": sent}, "disorder": 0, "gaps": 0}  # all of them, in order
        assert sent > 5_000 * SOAK_SECONDS  # the slow actor (~20-40 µs a message) kept busy all along
        print(f"send flood A -> B -> C for {SOAK_SECONDS:.0f} s: {sent} messages, peak RSS {peak} MB")
        assert max(peak.values()) < RSS_BOUND_MB, peak
        for name in NAMES:
            assert (await status(config, name))["dead_letters"]["total"] == 0, name

    asyncio.run(main())


def test_send_many_floods_a_fast_actor_two_hops_away(line):
    config = line.config

    async def main():
        await ask(config, "A", "flooder", {"send": "sink@C", "seconds": 3, "batch": 500})
        while not (progress := await ask(config, "A", "flooder", "poll"))["done"]:
            await asyncio.sleep(0.1)
        assert progress["error"] is None and progress["sent"] > 0
        sent = progress["sent"]
        deadline = time.monotonic() + 20
        while (seen := await ask(config, "C", "sink", "stats"))["count"] < sent:
            assert time.monotonic() < deadline, (seen, sent)
            await asyncio.sleep(0.1)
        assert seen == {"count": sent, "next": {"A": sent}, "disorder": 0, "gaps": 0}

    asyncio.run(main())


def test_a_tell_flood_loses_nothing_uncounted_and_the_sender_hears_of_it(line):
    config = line.config

    async def main():
        n = 200_000
        told = await ask(config, "A", "flooder", {"tell": "sink@C", "n": n}, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            seen = await ask(config, "C", "sink", "stats")
            states = {name: await status(config, name) for name in NAMES}
            lost = sum(s["dead_letters"]["total"] for s in states.values())
            reported = states["A"]["dead_letters"]["reported"]["total"]
            own = states["A"]["dead_letters"]["total"]
            if seen["count"] + lost == told and reported + own == lost:
                break
            assert time.monotonic() < deadline, (n, told, seen["count"], lost, reported)
            await asyncio.sleep(0.2)
        assert seen["disorder"] == 0  # what arrived came in order (the lost ones left gaps)
        assert lost > 0  # a mailbox of 1000 under reject cannot take 200 k at once
        # Told but refused at once on A (LinkOverflow) is not a dead letter: the sender heard.
        assert told <= n

    asyncio.run(main())


def test_killing_the_middle_node_fails_send_at_once_and_counts_what_was_in_flight(line):
    config = line.config

    async def main():
        await ask(config, "A", "flooder", {"send": "slow@C", "seconds": 60})
        while (await ask(config, "A", "flooder", "poll"))["sent"] < 20_000:
            await asyncio.sleep(0.05)
        line.kill("B")
        killed = time.monotonic()
        while not (progress := await ask(config, "A", "flooder", "poll"))["done"]:
            assert time.monotonic() - killed < 10, progress  # fails, never hangs
            await asyncio.sleep(0.05)
        assert progress["error"][0] == "NodeUnavailable", progress
        sent = progress["sent"]
        await asyncio.sleep(1.0)  # let C work off what reached it
        seen = await ask(config, "C", "slow", "stats")
        in_doubt = (await status(config, "A"))["dead_letters"]["by_reason"].get("in_doubt", 0)
        assert seen["disorder"] == 0 and seen["count"] <= sent
        assert seen["count"] + in_doubt >= sent, (seen, in_doubt, sent)  # none lost uncounted

    asyncio.run(main())
