"""Embedding herd nodes in a program of one's own: ``HerdNode.wait_for`` (wait until the herd is
joined) and what a shutdown logs. Nodes in one process, over real TCP links on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging

import pytest

from _herdtest import SECRET, free_ports, herd_config, until
from herd_app import Echo
from herdrt.config import HerdConfig, loads_config
from herdrt.errors import NodeUnavailable
from herdrt.herd import HerdNode


def config_on(ports: dict[str, int], secret: str = SECRET, links=None) -> HerdConfig:
    """A herd of the nodes in ``ports`` (name -> port), with ``secret``; ``links``: a full mesh if None."""
    text = f'[herd]\nsecret = "{secret}"\nheartbeat_interval = 0.1\n'
    if links is not None:
        text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]\n"
    text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in ports.items())
    return loads_config(text)


async def started(config: HerdConfig, name: str) -> HerdNode:
    node = HerdNode(config, name)
    await node.start()
    node.spawn(Echo, name="echo")
    return node


async def shut_down(*nodes: HerdNode) -> None:
    for node in nodes:
        await node.shutdown()


# -- wait_for ---------------------------------------------------------------------------------------


def test_wait_for_returns_once_every_node_is_live_and_linked(run):
    config = herd_config(["a", "b", "c"])

    async def main():
        nodes = [await started(config, name) for name in config.nodes]
        try:
            for node in nodes:
                await node.wait_for()
                assert node.membership.live() == {"a", "b", "c"}
                assert set(node.links.up) == set(config.nodes) - {node.name}
            # joined: the first asks succeed, no retry needed
            a, b, c = nodes
            assert await a.lookup("echo@c").ask("hi") == ["c", "hi"]
            assert await c.lookup("echo@b").ask("hi") == ["b", "hi"]
            await asyncio.wait_for(a.wait_for(), 0.05)  # joined already: at once
            await a.wait_for("a", timeout=0)  # itself: always
        finally:
            await shut_down(*nodes)

    run(main)


def test_wait_for_a_node_started_late_and_a_non_neighbor(run):
    # a - b - c: c is not a's neighbor, a reaches it through b
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        a = await started(config, "a")
        nodes = [a]
        try:
            whole = asyncio.ensure_future(a.wait_for(timeout=20))
            just_b = asyncio.ensure_future(a.wait_for(["b"], timeout=20))
            await asyncio.sleep(0.3)
            assert not whole.done() and not just_b.done()
            nodes.append(await started(config, "b"))
            await asyncio.wait_for(just_b, 10)
            await asyncio.sleep(0.2)
            assert not whole.done()  # c is still missing
            nodes.append(await started(config, "c"))
            await asyncio.wait_for(whole, 10)
            assert a.membership.live() == {"a", "b", "c"}
            assert a.links.link("c") is None  # not a neighbor: live through b is enough
            assert await a.lookup("echo@c").ask("late") == ["c", "late"]
        finally:
            await shut_down(*nodes)

    run(main)


def test_wait_for_times_out_naming_the_missing_nodes_and_what_to_check(run):
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        a = await started(config, "a")
        try:
            with pytest.raises(TimeoutError) as info:
                await a.wait_for(timeout=0.3)
            message = str(info.value)
            assert message.startswith("a: after 0.3 s still waiting for b (no link up to it); c (no route to it")
            assert "Live as a sees it: a." in message
            b_port, c_port = config.node("b").port, config.node("c").port
            assert f"b at 127.0.0.1:{b_port}, c at 127.0.0.1:{c_port}" in message
            assert "started" in message and "same herd secret" in message
            with pytest.raises(TimeoutError, match=r"still waiting for b \(no link up to it\)\. Live"):
                await a.wait_for(["a", "b"], timeout=0.1)
        finally:
            await a.shutdown()

    run(main)


def test_wait_for_a_node_with_another_secret_times_out(run):
    ports = dict(zip(["a", "b"], free_ports(2), strict=True))

    async def main():
        a = await started(config_on(ports), "a")
        b = await started(config_on(ports, secret="not-the-herd-secret-42"), "b")
        try:
            with pytest.raises(TimeoutError, match="still waiting for b .*same herd secret"):
                await a.wait_for(timeout=0.5)
            with pytest.raises(TimeoutError, match="still waiting for a "):
                await b.wait_for(timeout=0.1)
        finally:
            await shut_down(a, b)

    run(main)


def test_wait_for_refuses_what_cannot_work(run):
    config = herd_config(["a", "b"])

    async def main():
        a = HerdNode(config, "a")
        with pytest.raises(RuntimeError, match="not started"):
            await a.wait_for()
        await a.start()
        try:
            with pytest.raises(ValueError, match="'Clark' not in the herd file"):
                await a.wait_for(["b", "Clark"])
            waiting = asyncio.ensure_future(a.wait_for(timeout=None))
            await asyncio.sleep(0.05)
        finally:
            await a.shutdown()
        with pytest.raises(NodeUnavailable, match="shutting down"):
            await waiting

    run(main)


# -- what a shutdown logs --------------------------------------------------------------------------


def herd_records(caplog, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("herdrt") and r.levelno >= level]


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c"]], ids=["two", "three"])
def test_an_orderly_shutdown_logs_no_warning(run, caplog, names):
    caplog.set_level(logging.INFO, logger="herdrt")
    config = herd_config(names)

    async def main():
        nodes = [await started(config, name) for name in names]
        for node in nodes:
            await node.wait_for()
        assert await nodes[0].lookup(f"echo@{names[-1]}").ask("hi") == [names[-1], "hi"]
        caplog.clear()
        # one at a time, as a program that leaves the async-with blocks of its nodes
        for node in reversed(nodes):
            await node.shutdown()

    run(main)
    warnings = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in herd_records(caplog)]
    assert not warnings, "an orderly shutdown logged warnings:\n" + "\n".join(warnings)
    infos = [r.getMessage() for r in herd_records(caplog, logging.INFO)]
    last, first = names[-1], names[0]
    assert f"{first}: link to {last} down: closed by the peer: node shutdown" in infos  # the peer said BYE
    assert f"{last}: link to {first} down: node shutdown" in infos  # itself shutting down
    if len(names) == 3:
        assert f"{first}: node {last} down (it left the herd)" in infos


def test_a_node_leaving_is_no_warning_two_hops_away_either(run, caplog):
    """A line a - b - c: when c shuts down, a (no neighbor of c) hears of it by c's last report,
    which lists no links, ahead of its BYE: c left, it did not fail."""
    caplog.set_level(logging.INFO, logger="herdrt")
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        nodes = {name: await started(config, name) for name in "abc"}
        try:
            for node in nodes.values():
                await node.wait_for()
            caplog.clear()
            await nodes.pop("c").shutdown()
            await until(lambda: nodes["a"].membership.live() == {"a", "b"})
        finally:
            await shut_down(*nodes.values())

    run(main)
    warnings = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in herd_records(caplog)]
    assert not warnings, "an orderly shutdown logged warnings:\n" + "\n".join(warnings)
    assert "a: node c down (it left the herd)" in [r.getMessage() for r in herd_records(caplog, logging.INFO)]


def test_a_link_lost_abruptly_still_warns(run, caplog):
    caplog.set_level(logging.INFO, logger="herdrt")
    config = herd_config(["a", "b"])

    async def main():
        a, b = await started(config, "a"), await started(config, "b")
        try:
            await a.wait_for()
            await b.wait_for()
            caplog.clear()
            a.links.link("b").transport.abort()  # the connection drops: no BYE
            await until(lambda: any("link to b down" in r.getMessage() for r in herd_records(caplog)))
            await until(lambda: any("link to a down" in r.getMessage() for r in herd_records(caplog)))
            await a.wait_for(timeout=10)  # redialled
            await b.wait_for(timeout=10)
            assert await a.lookup("echo@b").ask("again") == ["b", "again"]
        finally:
            await shut_down(b, a)

    run(main)
    down = [r for r in herd_records(caplog) if "down" in r.getMessage()]
    assert {r.levelno for r in down} == {logging.WARNING}
