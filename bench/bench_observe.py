"""What watching the herd costs: tell and ask, local and remote, with metrics on against metrics off.

Two herds of two nodes (``a`` and ``b``, linked over TCP on loopback), each on its own uvloop loop
in this process, do the same work round by round:

* **metrics off**: plain herd nodes;
* **metrics on**: each node also serves HTTP (:class:`~herdrt.observe.HttpServer`), and a thread
  per node scrapes its ``/metrics`` every ``SCRAPE_EVERY`` seconds (four times a second: sixty
  times Prometheus' default of 15 s), so the scrapes land inside the timed rounds.

The runtime's statistics (counts, handler times, the quantile sketch) are kept either way: they
are what ``/metrics`` reads, and what ``herdrt status`` always showed. The rounds:

* ``tell local`` / ``ask local``: N tells then one ask to ``sink@a``, from ``a``; N sequential asks
  to ``echo@a``;
* ``tell remote`` / ``ask remote``: the same to ``sink@b`` / ``echo@b``, over the link.

Each benchmark alternates a "metrics on" round with a "metrics off" round (``record_paired``):
the ratio printed after the tables is rate with metrics on / rate with metrics off.

    pytest bench/bench_observe.py --benchmark-only --benchmark-columns=min,mean,rounds
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import pytest
import uvloop

from _harness import free_ports, record_paired
from _herd_node import Echo, Sink
from herdrt.config import loads_config
from herdrt.herd import HerdNode
from herdrt.observe import HttpServer

N_TELL = 100_000
N_ASK = 5_000
CHUNK = 1_000  # tells queued per loop turn before the sender yields
PAIRED_ROUNDS = 15
SCRAPE_EVERY = 0.25  # seconds between scrapes of each node
SECRET = "bench secret, not for production"


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: shrink the work to a smoke test."""
    if request.config.getoption("benchmark_disable", False):
        for key, value in {"N_TELL": 2_000, "N_ASK": 100, "PAIRED_ROUNDS": 1}.items():
            monkeypatch.setitem(globals(), key, value)


class Scraper(threading.Thread):
    """GETs ``url`` every ``SCRAPE_EVERY`` seconds until stopped; counts the scrapes."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.scrapes = 0

    def run(self) -> None:
        while not self.stop.wait(SCRAPE_EVERY):
            try:
                with urllib.request.urlopen(self.url, timeout=60) as response:
                    assert b"herdrt_messages_total" in response.read()
            except OSError:
                if self.stop.is_set():
                    return  # the node closed under a pending scrape: the benchmark is over
                raise
            self.scrapes += 1


class TwoNodes:
    """Nodes ``a`` and ``b`` on a loop of their own; with ``metrics``, each serves HTTP and is scraped."""

    def __init__(self, metrics: bool):
        self.loop = uvloop.new_event_loop()
        ports = free_ports(2)
        text = f'[herd]\nsecret = "{SECRET}"\n'
        text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip("ab", ports, strict=True))
        config = loads_config(text)
        self.nodes = {name: HerdNode(config, name) for name in "ab"}
        self.servers: list[HttpServer] = []
        self.scrapers: list[Scraper] = []
        self.run(self._start(metrics))
        for server in self.servers:
            self.scrapers.append(Scraper(server.url + "metrics"))
            self.scrapers[-1].start()

    async def _start(self, metrics: bool) -> None:
        for node in self.nodes.values():
            await node.start()
            node.spawn(Sink, name="sink", mailbox_size=None)
            node.spawn(Echo, name="echo", mailbox_size=None)
            if metrics:
                self.servers.append(await HttpServer(node).start())
        await self.nodes["a"].links.wait_up("b", timeout=10)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        for scraper in self.scrapers:
            scraper.stop.set()
        for server in self.servers:
            self.run(server.close())
        for node in self.nodes.values():
            self.run(node.shutdown())
        for scraper in self.scrapers:
            scraper.join(10)
        self.loop.close()

    def tells(self, target: str):
        sink = self.nodes["a"].lookup(target)

        async def round_():
            link = self.nodes["a"].links.link("b")
            before = await sink.ask("count", timeout=60)
            tell = sink.tell
            for start in range(0, N_TELL, CHUNK):
                for i in range(start, min(start + CHUNK, N_TELL)):
                    tell(i)
                if link is not None:
                    await link.drain()
                await asyncio.sleep(0)
            count = await sink.ask("count", timeout=60)
            assert count - before == N_TELL, f"{target} counted {count - before} tells, expected {N_TELL}"

        return lambda: self.run(round_())

    def asks(self, target: str):
        echo = self.nodes["a"].lookup(target)

        async def round_():
            ask = echo.ask
            for i in range(N_ASK):
                assert await ask(i) == i

        return lambda: self.run(round_())


@pytest.fixture(scope="module")
def herds(request):
    on, off = TwoNodes(metrics=True), TwoNodes(metrics=False)
    yield on, off
    scrapes = [s.scrapes for s in on.scrapers]
    on.close()
    off.close()
    if not request.config.getoption("benchmark_disable", False):
        assert all(scrapes), scrapes  # the "on" nodes were scraped while the rounds ran


@pytest.mark.parametrize("target", ["sink@a", "sink@b"], ids=["local", "remote"])
@pytest.mark.benchmark(group="metrics-cost-tell")
def test_tell_metrics_on_vs_off(benchmark, request, herds, target):
    on, off = herds
    record_paired(benchmark, request.node.name, on.tells(target), {"metrics off": off.tells(target)}, PAIRED_ROUNDS)


@pytest.mark.parametrize("target", ["echo@a", "echo@b"], ids=["local", "remote"])
@pytest.mark.benchmark(group="metrics-cost-ask")
def test_ask_metrics_on_vs_off(benchmark, request, herds, target):
    on, off = herds
    record_paired(benchmark, request.node.name, on.asks(target), {"metrics off": off.asks(target)}, PAIRED_ROUNDS)
