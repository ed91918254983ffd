"""`herdrt top`: the herd view drawn in a terminal; `--once` against a herd of real OS processes."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from _herdtest import BUNDLED_LINKS, BUNDLED_NAMES, FiveServers, Herd, herd_config, node_env, wait_live
from herdrt.observe.top import HerdPoller, fmt_rate, fmt_seconds, render
from herdrt.observe.view import HerdWatch

NAMES, LINKS = BUNDLED_NAMES, BUNDLED_LINKS
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def herd(tmp_path):
    """The five servers running, every link of the graph up."""
    with FiveServers.running(tmp_path) as procs:
        yield procs


def top_once(path) -> tuple[int, str]:
    """Run `herdrt top --once` as a user would; its exit code and its output, without colors."""
    out = subprocess.run(
        [sys.executable, "-m", "herdrt.cli", "top", "--config", str(path), "--once", "--interval", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=node_env(FORCE_COLOR=None, COLUMNS="100"),
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, ANSI.sub("", out.stdout)


def states(out: str) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """The state of each node and of each link (`a — b`), as `top` prints them."""
    nodes = {m[1]: m[2] for m in re.finditer(r"(?m)^(\w+)\s+(up|DOWN)\b", out) if m[1] in NAMES}
    links = {(m[1], m[2]): m[3] for m in re.finditer(r"(?m)^(\w+) — (\w+)\s+(up|DOWN)\b", out)}
    return nodes, links


def test_top_once_shows_a_herd_of_processes_and_a_node_killed(herd):
    edges = {tuple(sorted(link)) for link in LINKS}
    code, out = top_once(herd.path)
    assert code == 0, out
    nodes, links = states(out)
    assert nodes == dict.fromkeys(NAMES, "up"), out
    assert links == dict.fromkeys(edges, "up"), out
    assert "nodes up 5/5" in out and "links up 6/6" in out, out
    assert re.search(r"\d[\d.]*[kM]? msg/s", out), f"two rounds: the herd-wide rate is known\n{out}"

    herd.kill("Campbell")
    rest = [n for n in NAMES if n != "Campbell"]
    asyncio.run(wait_live(herd.config, "Bona", rest, timeout=10.0))
    code, out = top_once(herd.path)
    assert code == 1, out
    nodes, links = states(out)
    assert nodes == {**dict.fromkeys(rest, "up"), "Campbell": "DOWN"}, out
    assert links == {e: "DOWN" if "Campbell" in e else "up" for e in edges}, out
    assert "nodes up 4/5" in out and "links up 3/6" in out and "Campbell DOWN: " in out, out


def test_the_poller_keeps_one_link_per_node_and_redials_only_after_a_failure(run):
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        async with Herd(config) as nodes:
            poller = HerdPoller(config, timeout=2.0)
            try:
                for _ in range(3):
                    view = await poller.poll()
                    assert view["summary"]["nodes_up"] == 3
                assert poller.dials == {"a": 1, "b": 1, "c": 1}
                await nodes.pop("c").shutdown()
                for _ in range(2):
                    view = await poller.poll()
                    assert [n["up"] for n in view["nodes"]] == [True, True, False]
                # the first round found c's link gone; the next one dialled c again (refused)
                assert poller.dials == {"a": 1, "b": 1, "c": 2}
            finally:
                await poller.close()

    run(main)


def _status(messages: int, *, links: dict, dead: dict | None = None, bridge: dict | None = None) -> dict:
    """A node's herd_status(), with only what the view reads."""
    dead = dead or {}
    return {
        "pid": 4242,
        "live": ["a", "b"],
        "actors": 3,
        "keyed_actors": 0,
        "clients": 1,
        "ring_share": {"a": 0.5, "b": 0.5, "c": 0.0},
        "stats": {"messages": messages, "mailbox_depth": 0},
        "dead_letters": {"total": sum(dead.values()), "by_reason": dead},
        "links": links,
        "busiest": [
            {
                "actor": "echo",
                "messages": messages,
                "failures": 0,
                "mailbox_depth": 2,
                "handler_mean": 1e-4,
                "handler_p99": 0.00125,
            }
        ],
        "bridge": bridge,
    }


def _text(view) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render(view))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_render_formats_rates_times_and_what_is_down():
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])
    watch = HerdWatch(config)
    bridge = {
        "endpoint": "tcp://127.0.0.1:5555",
        "services": {"calc": {"live": True, "names": ["add", "mul"], "messages_in": 7}},
        "counters": {},
    }

    def round_(n: int, at: float, dead: dict):
        return watch.update(
            {
                "a": _status(n, links={"b": {"state": "up", "last_rtt": 350e-6}}, bridge=bridge),
                "b": _status(n, links={"a": {"state": "up", "last_rtt": 0.002}}, dead=dead),
                "c": ConnectionRefusedError(111, "Connection refused"),
            },
            now=at,
        )

    def lines(text: str) -> list[str]:
        return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]

    first = lines(_text(round_(1000, 0.0, {"no_actor": 3})))
    assert first[0].startswith("nodes up 2/3 links up 1/2 - msg/s 2,000 messages"), first  # no rates yet
    assert "a up 4242 2/3 - 1,000 0 3 50.0% 0" in first, first
    assert "b up 4242 2/3 - 1,000 0 3 50.0% 3" in first, first

    # 2,400 messages in 2 s on each node, 4 more dead letters on b
    out = lines(_text(round_(3400, 2.0, {"no_actor": 5, "mailbox_full": 2})))
    assert out[0].startswith("nodes up 2/3 links up 1/2 2.4k msg/s 6,800 messages"), out
    for row in [
        "a up 4242 2/3 1.2k/s 3,400 0 3 50.0% 0",
        "b up 4242 2/3 1.2k/s 3,400 0 3 50.0% 7 (+2.0/s)",
        "c DOWN - - - - - - - -",
        "c DOWN: ConnectionRefusedError: [Errno 111] Connection refused",
        "a — b up 350 µs",
        "b — c DOWN -",
        "a echo 1.2k/s 3,400 2 1.25 ms",
        "dead letters: 7",
        "no_actor 5",
        "mailbox_full 2",
        "a tcp://127.0.0.1:5555 calc yes add, mul 7",
    ]:
        assert row in out, f"{row!r} not in\n" + "\n".join(out)
    assert out.index("no_actor 5") < out.index("mailbox_full 2")  # most first

    # names come from the herd: taken literally, never as console markup
    odd = watch.update(
        {"a": {**_status(1, links={}), "busiest": [{**_status(1, links={})["busiest"][0], "actor": "x[/y]"}]}}
    )
    assert "a x[/y] - 1 2 1.25 ms" in lines(_text(odd))


def test_formats():
    assert [fmt_rate(r) for r in (None, 0, 2.5, 350, 1234, 3.4e6)] == ["-", "0/s", "2.5/s", "350/s", "1.2k/s", "3.4M/s"]
    assert [fmt_seconds(s) for s in (None, 350e-6, 0.00125, 2.1)] == ["-", "350 µs", "1.25 ms", "2.10 s"]
