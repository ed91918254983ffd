"""The herd's live view: /metrics (parsed by prometheus_client), /healthz, /view and /events over
real HTTP, the cardinality guard, and the herd view's rates and states."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _herdtest import SECRET, Herd, NodeProcesses, Recorder, free_ports, herd_config, metric_samples, until
from herdrt import Actor
from herdrt.herd import HerdNode
from herdrt.observe import HerdWatch, HttpServer, node_registry
from herdrt.observe.metrics import OTHER, ActorSeries


class Sink(Actor):
    def receive(self, message, ctx):
        return message


async def scrape(session: aiohttp.ClientSession, server: HttpServer) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by (sample name, sorted labels)."""
    async with session.get(server.url + "metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return metric_samples(await response.text())


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_counters_move_by_exactly_the_messages_sent(run):
    config = herd_config(["A", "B"])

    async def main():
        async with Herd(config) as nodes, aiohttp.ClientSession() as session:
            a, b = nodes["A"], nodes["B"]
            server = await HttpServer(b).start()
            try:
                before = await scrape(session, server)
                rec = b.spawn(Recorder, name="rec")
                remote = a.lookup("rec@B")
                for i in range(37):
                    remote.tell(i)
                for _ in range(5):
                    await remote.ask("get")  # behind the tells: all 37 handled by now
                for key in range(50):  # keyed actors on B (whoever owns them) and A
                    a.ref_for("counter", f"k{key}").tell(1)
                    b.ref_for("counter", f"k{key}").tell(1)
                await until(
                    lambda: (
                        a.stats()["families"].get("counter", {}).get("messages", 0)
                        + b.stats()["families"].get("counter", {}).get("messages", 0)
                        == 100
                    )
                )
                for i in range(3):
                    a.lookup("nobody@B").tell(i)  # dead letters on B: no such actor
                await until(lambda: b.dead_letters.stats()["total"] == 3)
                await until(lambda: b.links.stats()["links"]["A"]["last_rtt"] is not None)
                after = await scrape(session, server)

                def moved(name, **labels):
                    return value(after, name, **labels) - value(before, name, **labels)

                assert moved("herdrt_messages_total", actor="rec", kind="") == 42
                assert moved("herdrt_handler_seconds_count", actor="rec", kind="") == 42
                assert value(after, "herdrt_handler_seconds", actor="rec", kind="", quantile="0.99") > 0
                on_b = b.stats()["families"]["counter"]["messages"]
                assert 0 < on_b < 100
                assert moved("herdrt_messages_total", actor="counter:*", kind="counter") == on_b
                assert moved("herdrt_dead_letters_total", reason="unknown_actor") == 3
                assert moved("herdrt_link_bytes_total", peer="A", direction="in") > 37
                assert value(after, "herdrt_link_up", peer="A") == 1
                assert value(after, "herdrt_link_rtt_seconds", peer="A") > 0
                assert value(after, "herdrt_nodes_live") == 2
                shares = value(after, "herdrt_ring_share", node="A") + value(after, "herdrt_ring_share", node="B")
                assert shares == pytest.approx(1.0)
                assert (
                    value(
                        after,
                        "herdrt_node_info",
                        node="B",
                        version=__import__("herdrt").__version__,
                        core=__import__("herdrt.core").core.IMPLEMENTATION,
                    )
                    == 1
                )
                # every message of the node is in exactly one series
                total = sum(v for (name, _), v in after.items() if name == "herdrt_messages_total")
                assert total == b.stats()["total"]["messages"]
                assert rec is not None
            finally:
                await server.close()

    run(main)


def test_a_million_keyed_actors_do_not_make_a_million_series(run):
    """Keyed actors are one series per kind; past max_actor_series named actors share (other), and
    (other) never goes down when named actors stop."""
    config = herd_config(["A"])

    async def main():
        node = HerdNode(config, "A")
        await node.start()
        try:
            node.register_kind("session", Sink)
            node.register_kind("cart", Sink)
            for i in range(3000):
                node.ref_for("session" if i % 3 else "cart", f"user-{i}").tell(i)
            named = [node.spawn(Sink, name=f"worker-{i}") for i in range(40)]
            for ref in named:
                for _ in range(3):
                    await ref.ask(1)
            registry = node_registry(node, max_actor_series=10)

            def samples():
                return metric_samples(generate_latest(registry).decode())

            await until(lambda: node.stats()["total"]["messages"] == 3000 + 120)
            first = samples()
            series = {dict(k[1])["actor"] for k in first if k[0] == "herdrt_messages_total"}
            assert {"session:*", "cart:*", OTHER} <= series
            assert len(series) <= 10 + 2 + 1, series
            assert value(first, "herdrt_messages_total", actor="session:*", kind="session") == 2000
            assert value(first, "herdrt_messages_total", actor="cart:*", kind="cart") == 1000
            assert sum(v for (n, _), v in first.items() if n == "herdrt_messages_total") == 3120
            listed = sorted(a for a in series if a.startswith("worker-"))
            for name in listed[:5]:  # stopped: their counts move into (other), not away
                await node.stop(name)
            second = samples()
            assert value(second, "herdrt_messages_total", actor=OTHER, kind="") == (
                value(first, "herdrt_messages_total", actor=OTHER, kind="") + 5 * 3
            )
            assert sum(v for (n, _), v in second.items() if n == "herdrt_messages_total") == 3120
            for i in range(5):  # new actors take the freed places; (other) still only grows
                await node.spawn(Sink, name=f"late-{i}").ask(1)
            third = samples()
            assert value(third, "herdrt_messages_total", actor=OTHER, kind="") >= value(
                second, "herdrt_messages_total", actor=OTHER, kind=""
            )
            assert value(third, "herdrt_messages_total", actor="late-0", kind="") == 1
        finally:
            await node.shutdown()

    run(main)


def test_actor_series_keeps_its_choice_for_an_actors_life():
    series = ActorSeries(limit=2)
    assert series.split(["a", "b", "c", "kind:key"]) == (["a", "b"], ["c"])
    assert series.split(["b", "c", "d"]) == (["b", "d"], ["c"])  # c stays folded while it lives
    assert series.split(["b", "d", "c"]) == (["b", "d"], ["c"])
    with pytest.raises(ValueError):
        ActorSeries(-1)


def test_healthz_says_ready_or_why_not(run):
    config = herd_config(["A", "B"])

    async def main():
        a = HerdNode(config, "A")
        await a.start()
        server = await HttpServer(a).start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(server.url + "healthz") as response:
                    assert response.status == 503
                    body = await response.json()
                    assert body["ready"] is False and "no link up to any neighbor (B)" in body["reason"]
                b = HerdNode(config, "B")
                await b.start()
                try:
                    await until(lambda: a.membership.live() == {"A", "B"})
                    async with session.get(server.url + "healthz") as response:
                        assert response.status == 200
                        body = await response.json()
                        assert body == {
                            "node": "A",
                            "ready": True,
                            "reason": "links up to 1/1 neighbors; 2/2 nodes live",
                        }
                finally:
                    await b.shutdown()
        finally:
            await server.close()
            await a.shutdown()

    run(main)


def test_the_page_is_self_contained_and_events_stream_the_herd_view(run):
    config = herd_config(["A", "B", "C"], links=[("A", "B"), ("B", "C")])

    async def main():
        async with Herd(config) as nodes, aiohttp.ClientSession() as session:
            server = await HttpServer(nodes["A"], interval=0.2).start()
            try:
                async with session.get(server.url) as response:
                    assert response.status == 200 and response.content_type == "text/html"
                    page = await response.text()
                assert "<script" in page and 'new EventSource("events")' in page
                for outside in ("http://", "https://", "//cdn", "<link", "src="):
                    assert outside not in page.replace("http://www.w3.org/2000/svg", ""), outside
                views = []
                async with session.get(server.url + "events") as response:
                    assert response.headers["Content-Type"] == "text/event-stream"
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            views.append(json.loads(line[6:]))
                            if len(views) == 2:
                                break
                assert [n["name"] for n in views[1]["nodes"]] == ["A", "B", "C"]
                assert all(n["up"] for n in views[1]["nodes"])
                assert views[1]["summary"] == {**views[1]["summary"], "nodes_up": 3, "links_up": 2, "links": 2}
                assert views[1]["nodes"][0]["rate"] is not None  # the second view has rates
                await until(lambda: not server._watchers, timeout=5.0)  # the stream closed: polling stops
            finally:
                await server.close()

    run(main)


def test_many_http_clients_ask_the_herd_at_most_once_per_interval(run):
    """The routes need no credentials, so no number of HTTP clients may turn into load on the
    herd: 30 /view requests at once, and a page watching, share one round per interval."""
    config = herd_config(["A", "B"])

    async def main():
        async with Herd(config) as nodes, aiohttp.ClientSession() as session:
            server = await HttpServer(nodes["A"], interval=60.0).start()
            try:
                asked = nodes["B"].stats()["actors"]["$node"]["messages"]

                async def view():
                    async with session.get(server.url + "view") as response:
                        assert response.status == 200
                        return await response.json()

                views = await asyncio.gather(*(view() for _ in range(30)))
                assert all(v == views[0] for v in views) and views[0]["summary"]["nodes_up"] == 2
                async with session.get(server.url + "events") as response:
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            assert json.loads(line[6:]) == views[0]  # the same round, not a new one
                            break
                assert nodes["B"].stats()["actors"]["$node"]["messages"] == asked + 1
            finally:
                await server.close()

    run(main)


def _status(name, messages, links, live=("A", "B", "C"), dead=0):
    return {
        "node": name,
        "pid": 1,
        "live": list(live),
        "links": links,
        "clients": 0,
        "ring_share": {"A": 0.5, "B": 0.25, "C": 0.25},
        "actors": 2,
        "keyed_actors": 0,
        "stats": {"messages": messages, "mailbox_depth": 0},
        "dead_letters": {"total": dead, "by_reason": {"unknown_actor": dead} if dead else {}},
        "busiest": [
            {
                "actor": "echo",
                "messages": messages,
                "failures": 0,
                "mailbox_depth": 0,
                "handler_mean": None,
                "handler_p99": 1e-5,
            }
        ],
    }


def test_herd_watch_rates_states_and_links():
    config = herd_config(["A", "B", "C"], links=[("A", "B"), ("B", "C")])
    watch = HerdWatch(config)
    up = {"state": "up", "last_rtt": 0.001}
    first = watch.update(
        {"A": _status("A", 100, {"B": up}), "B": _status("B", 10, {"A": up, "C": up}), "C": _status("C", 0, {"B": up})},
        now=10.0,
    )
    assert [n["rate"] for n in first["nodes"]] == [None, None, None]
    assert first["summary"]["rate"] is None and first["summary"]["links_up"] == 2
    second = watch.update(
        {"A": _status("A", 300, {"B": up}, dead=4), "B": _status("B", 60, {"A": up}), "C": TimeoutError("slow")},
        now=12.0,
    )
    a, b, c = second["nodes"]
    assert (a["rate"], b["rate"]) == (100.0, 25.0)
    assert c == {"name": "C", "up": False, "error": "TimeoutError: slow"}
    assert second["links"] == [
        {"a": "A", "b": "B", "up": True, "rtt": 0.001},
        {"a": "B", "b": "C", "up": False, "rtt": None},
    ]
    assert second["summary"] == {"nodes_up": 2, "nodes": 3, "links_up": 1, "links": 2, "rate": 125.0, "messages": 360}
    assert second["dead_letters"] == {"total": 4, "by_reason": {"unknown_actor": 4}}
    assert [(r["node"], r["rate"]) for r in second["busiest"]] == [("A", 100.0), ("B", 25.0)]


def test_serve_node_with_http_port_serves_health_and_metrics(tmp_path):
    """`herdrt serve --node A --http-port P` as a process: it says where, /healthz is ready (a herd
    of one has no neighbor to wait for) and /metrics parses; `--http-port` without `--node` is a
    usage error."""
    from click.testing import CliRunner

    from herdrt.cli import main as cli_main

    herd_port, http_port = free_ports(2)
    path = tmp_path / "herd.toml"
    path.write_text(f'[herd]\nsecret = "{SECRET}"\n[[nodes]]\nname = "A"\nport = {herd_port}\n')
    procs = NodeProcesses(tmp_path / "out")
    procs.serve("A", path, "--http-port", str(http_port))
    try:
        url = f"http://127.0.0.1:{http_port}/"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline, procs.output("A")
                time.sleep(0.1)
        assert health == {"node": "A", "ready": True, "reason": "links up to 0/0 neighbors; 1/1 nodes live"}
        with urllib.request.urlopen(url + "metrics", timeout=5) as response:
            names = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert {"herdrt_messages", "herdrt_dead_letters", "herdrt_nodes_live", "herdrt_ring_share"} <= names
        assert f"herd page and /metrics on {url}" in procs.output("A")
    finally:
        procs.stop_all()
    result = CliRunner().invoke(cli_main, ["serve", "--config", str(path), "--http-port", "9999"])
    assert result.exit_code == 2 and "--http-port need --node" in result.output
