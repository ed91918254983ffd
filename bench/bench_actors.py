"""Actor microbenchmarks: herdrt against a bare asyncio.Queue on uvloop, Pykka and Thespian.

Groups (the usual actor microbenchmarks), each measuring the same work in every contender:

* ``tell_1_1``: one sender, one actor, N tells, then one ask to drain;
* ``ask_1_1_sync``: N sequential asks;
* ``ask_1_1_pipelined``: N asks, a window of W in flight;
* ``ping_pong``: N round trips between two actors;
* ``tell_n_n``: A actors, M tells each, then one ask each to drain.

The baseline is a bare ``asyncio.Queue`` consumer task on uvloop (a queue plus a future per ask).
Pykka (threads) and Thespian (``simpleSystemBase``) run with their own blocking APIs. Throughput is
in ``extra_info["msgs_per_s"]``. Run::

    pytest bench/bench_actors.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,mean,ops,rounds
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from _harness import record_paired
from herdrt import Actor, Node

N_TELL = 100_000
N_ASK = 20_000
WINDOW = 500
N_PING = 20_000
N_ACTORS = 100
M_EACH = 1_000
ROUNDS = 5


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: shrink the work to a smoke test."""
    if request.config.getoption("benchmark_disable", False):
        small = {"N_TELL": 2_000, "N_ASK": 500, "WINDOW": 100, "N_PING": 500, "N_ACTORS": 10, "M_EACH": 100}
        for key, value in small.items():
            monkeypatch.setitem(globals(), key, value)


def _bench(benchmark, fn, messages: int) -> None:
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["msgs_per_s"] = round(messages / stats.stats.min)


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


# --- herdrt ---------------------------------------------------------------------------------------


class Sink(Actor):
    def __init__(self):
        self.count = 0

    def receive(self, message, ctx):
        self.count += 1
        return message


class Pinger(Actor):
    """Bounces ``message - 1`` to its peer (the actor named ``peer``, looked up when it starts:
    both are spawned by then) until it reaches 0, then resolves the done future."""

    def __init__(self, done_box, peer):
        self.peer_name = peer
        self.peer = None
        self.done_box = done_box

    def on_start(self):
        self.peer = self.node.lookup(self.peer_name)

    def receive(self, message, ctx):
        if message <= 0:
            self.done_box[0].set_result(None)
        else:
            self.peer.tell(message - 1)


def _herdrt(loop, setup, work):
    """Build a node with ``setup(node)`` on ``loop``; return a callable running ``work`` once."""
    node = Node("bench", mailbox_size=None)

    async def build():
        return setup(node)  # spawn binds the node to the running loop

    state = loop.run_until_complete(build())

    def once():
        loop.run_until_complete(work(node, state))

    return node, once


@pytest.fixture
def herd(loop):
    nodes = []

    def make(setup, work):
        node, once = _herdrt(loop, setup, work)
        nodes.append(node)
        return once

    yield make
    for node in nodes:
        loop.run_until_complete(node.shutdown())


@pytest.mark.benchmark(group="tell_1_1")
def test_tell_1_1_herdrt(benchmark, herd):
    async def work(node, ref):
        tell = ref.tell
        for i in range(N_TELL):
            tell(i)
        await ref.ask(None)

    _bench(benchmark, herd(lambda node: node.spawn(Sink), work), N_TELL)


@pytest.mark.benchmark(group="ask_1_1_sync")
def test_ask_1_1_sync_herdrt(benchmark, herd):
    async def work(node, ref):
        ask = ref.ask
        for i in range(N_ASK):
            await ask(i)

    _bench(benchmark, herd(lambda node: node.spawn(Sink), work), N_ASK)


@pytest.mark.benchmark(group="ask_1_1_sync")
def test_ask_1_1_sync_herdrt_own_timeout(benchmark, herd):
    """The same asks, each with its own timeout (``ask(m, timeout=10)``, as the README's example)."""

    async def work(node, ref):
        ask = ref.ask
        for i in range(N_ASK):
            await ask(i, timeout=10.0)

    _bench(benchmark, herd(lambda node: node.spawn(Sink), work), N_ASK)


@pytest.mark.benchmark(group="ask-timeout-paired")
def test_ask_timeout_paired(benchmark, request, herd):
    """Asks with their own timeout alternated round by round with plain asks (the node's default):
    the ratio is what a timeout costs (see ``_harness.record_paired``)."""

    async def plain(node, ref):
        ask = ref.ask
        for i in range(N_ASK):
            await ask(i)

    async def timed(node, ref):
        ask = ref.ask
        for i in range(N_ASK):
            await ask(i, timeout=10.0)

    sink = []
    contender = herd(lambda node: sink.append(node.spawn(Sink)) or sink[0], timed)
    baseline = herd(lambda node: node.spawn(Sink), plain)
    record_paired(benchmark, request.node.name, contender, {"plain ask": baseline}, 7)


@pytest.mark.benchmark(group="ask_1_1_pipelined")
def test_ask_1_1_pipelined_herdrt(benchmark, herd):
    async def work(node, ref):
        ask = ref.ask
        for _ in range(N_ASK // WINDOW):
            futs = [ask(i) for i in range(WINDOW)]
            for f in futs:
                await f

    _bench(benchmark, herd(lambda node: node.spawn(Sink), work), N_ASK)


@pytest.mark.benchmark(group="ping_pong")
def test_ping_pong_herdrt(benchmark, herd):
    box = [None]

    def setup(node):
        a = node.spawn(Pinger, box, "pong", name="ping")
        node.spawn(Pinger, box, "ping", name="pong")
        return a

    async def work(node, a):
        box[0] = asyncio.get_running_loop().create_future()
        a.tell(2 * N_PING)  # N round trips = 2N messages
        await box[0]

    _bench(benchmark, herd(setup, work), 2 * N_PING)


@pytest.mark.benchmark(group="tell_n_n")
def test_tell_n_n_herdrt(benchmark, herd):
    async def work(node, refs):
        for i in range(M_EACH):
            for ref in refs:
                ref.tell(i)
        for ref in refs:
            await ref.ask(None)

    _bench(benchmark, herd(lambda node: [node.spawn(Sink) for _ in range(N_ACTORS)], work), N_ACTORS * M_EACH)


# --- baseline: a bare asyncio.Queue on uvloop -----------------------------------------------------


async def _consumer(q: asyncio.Queue):
    while True:
        message, fut = await q.get()
        if fut is not None:
            fut.set_result(message)


class _QueueWorld:
    def __init__(self, loop, n_queues=1):
        self.loop = loop
        self.queues: list[asyncio.Queue] = []
        self.tasks = []

        async def start():
            for _ in range(n_queues):
                q = asyncio.Queue()
                self.queues.append(q)
                self.tasks.append(asyncio.get_running_loop().create_task(_consumer(q)))

        loop.run_until_complete(start())

    def close(self):
        for t in self.tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*self.tasks, return_exceptions=True))


@pytest.fixture
def queues(loop):
    worlds = []

    def make(n=1):
        w = _QueueWorld(loop, n)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


@pytest.mark.benchmark(group="tell_1_1")
def test_tell_1_1_asyncio_queue(benchmark, queues, loop):
    (q,) = queues().queues

    async def work():
        put = q.put_nowait
        for i in range(N_TELL):
            put((i, None))
        fut = loop.create_future()
        put((None, fut))
        await fut

    _bench(benchmark, lambda: loop.run_until_complete(work()), N_TELL)


@pytest.mark.benchmark(group="ask_1_1_sync")
def test_ask_1_1_sync_asyncio_queue(benchmark, queues, loop):
    (q,) = queues().queues

    async def work():
        put = q.put_nowait
        create = loop.create_future
        for i in range(N_ASK):
            fut = create()
            put((i, fut))
            await fut

    _bench(benchmark, lambda: loop.run_until_complete(work()), N_ASK)


@pytest.mark.benchmark(group="ask_1_1_pipelined")
def test_ask_1_1_pipelined_asyncio_queue(benchmark, queues, loop):
    (q,) = queues().queues

    async def work():
        put = q.put_nowait
        create = loop.create_future
        for _ in range(N_ASK // WINDOW):
            futs = []
            for i in range(WINDOW):
                fut = create()
                put((i, fut))
                futs.append(fut)
            for f in futs:
                await f

    _bench(benchmark, lambda: loop.run_until_complete(work()), N_ASK)


@pytest.mark.benchmark(group="ping_pong")
def test_ping_pong_asyncio_queue(benchmark, loop):
    async def player(inbox, outbox, done):
        while True:
            n = await inbox.get()
            if n <= 0:
                done.set_result(None)
                return
            outbox.put_nowait(n - 1)

    async def work():
        a, b = asyncio.Queue(), asyncio.Queue()
        done = loop.create_future()
        t1 = loop.create_task(player(a, b, done))
        t2 = loop.create_task(player(b, a, done))
        a.put_nowait(2 * N_PING)
        await done
        for t in (t1, t2):
            t.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)

    _bench(benchmark, lambda: loop.run_until_complete(work()), 2 * N_PING)


@pytest.mark.benchmark(group="tell_n_n")
def test_tell_n_n_asyncio_queue(benchmark, queues, loop):
    qs = queues(N_ACTORS).queues

    async def work():
        for i in range(M_EACH):
            for q in qs:
                q.put_nowait((i, None))
        for q in qs:
            fut = loop.create_future()
            q.put_nowait((None, fut))
            await fut

    _bench(benchmark, lambda: loop.run_until_complete(work()), N_ACTORS * M_EACH)


# --- Pykka (threads) ------------------------------------------------------------------------------


@pytest.fixture
def pykka():
    pykka = pytest.importorskip("pykka")
    yield pykka
    pykka.ActorRegistry.stop_all()


def _pykka_classes(pykka):
    class PSink(pykka.ThreadingActor):
        def on_receive(self, message):
            return message

    class PPinger(pykka.ThreadingActor):
        def __init__(self, done):
            super().__init__()
            self.peer = None
            self.done = done

        def on_receive(self, message):
            if isinstance(message, dict):
                self.peer = message["peer"]
            elif message <= 0:
                self.done.set()
            else:
                self.peer.tell(message - 1)

    return PSink, PPinger


@pytest.mark.benchmark(group="tell_1_1")
def test_tell_1_1_pykka(benchmark, pykka):
    PSink, _ = _pykka_classes(pykka)
    ref = PSink.start()

    def work():
        tell = ref.tell
        for i in range(N_TELL):
            tell(i)
        ref.ask(None)

    _bench(benchmark, work, N_TELL)


@pytest.mark.benchmark(group="ask_1_1_sync")
def test_ask_1_1_sync_pykka(benchmark, pykka):
    PSink, _ = _pykka_classes(pykka)
    ref = PSink.start()

    def work():
        for i in range(N_ASK):
            ref.ask(i)

    _bench(benchmark, work, N_ASK)


@pytest.mark.benchmark(group="ask_1_1_pipelined")
def test_ask_1_1_pipelined_pykka(benchmark, pykka):
    PSink, _ = _pykka_classes(pykka)
    ref = PSink.start()

    def work():
        for _ in range(N_ASK // WINDOW):
            futs = [ref.ask(i, block=False) for i in range(WINDOW)]
            for f in futs:
                f.get()

    _bench(benchmark, work, N_ASK)


@pytest.mark.benchmark(group="ping_pong")
def test_ping_pong_pykka(benchmark, pykka):
    _, PPinger = _pykka_classes(pykka)
    done = threading.Event()
    a, b = PPinger.start(done), PPinger.start(done)
    a.ask({"peer": b})
    b.ask({"peer": a})

    def work():
        done.clear()
        a.tell(2 * N_PING)
        done.wait()

    _bench(benchmark, work, 2 * N_PING)


@pytest.mark.benchmark(group="tell_n_n")
def test_tell_n_n_pykka(benchmark, pykka):
    PSink, _ = _pykka_classes(pykka)
    refs = [PSink.start() for _ in range(N_ACTORS)]

    def work():
        for i in range(M_EACH):
            for ref in refs:
                ref.tell(i)
        for ref in refs:
            ref.ask(None)

    _bench(benchmark, work, N_ACTORS * M_EACH)


# --- Thespian (simpleSystemBase: one thread, synchronous delivery) ---------------------------------


@pytest.fixture
def thespian():
    actors = pytest.importorskip("thespian.actors")

    class TSink(actors.Actor):
        def receiveMessage(self, message, sender):
            if message == "drain":
                self.send(sender, "drained")

    class TEcho(actors.Actor):
        def receiveMessage(self, message, sender):
            if not isinstance(message, actors.ActorSystemMessage):
                self.send(sender, message)

    class TPinger(actors.Actor):
        client = None

        def receiveMessage(self, message, sender):
            if isinstance(message, actors.ActorSystemMessage):
                return
            if isinstance(message, dict):
                if "peer" in message:
                    self.peer = message["peer"]
                    self.send(sender, "ok")
                else:  # {"start": n}: n messages between the two, then "done" to the client
                    self.client = sender
                    self.send(self.peer, message["start"] - 1)
            elif message == "fin":
                self.send(self.client, "done")
            elif message <= 0:
                if self.client is not None:
                    self.send(self.client, "done")
                else:
                    self.send(self.peer, "fin")
            else:
                self.send(sender, message - 1)

    asys = actors.ActorSystem("simpleSystemBase")
    yield asys, TSink, TEcho, TPinger
    asys.shutdown()


@pytest.mark.benchmark(group="tell_1_1")
def test_tell_1_1_thespian(benchmark, thespian):
    asys, TSink, _, _ = thespian
    addr = asys.createActor(TSink)

    def work():
        for i in range(N_TELL):
            asys.tell(addr, i)
        assert asys.ask(addr, "drain", 60) == "drained"

    _bench(benchmark, work, N_TELL)


@pytest.mark.benchmark(group="ask_1_1_sync")
def test_ask_1_1_sync_thespian(benchmark, thespian):
    asys, _, TEcho, _ = thespian
    addr = asys.createActor(TEcho)

    def work():
        for i in range(N_ASK):
            asys.ask(addr, i, 10)

    _bench(benchmark, work, N_ASK)


@pytest.mark.benchmark(group="ping_pong")
def test_ping_pong_thespian(benchmark, thespian):
    asys, _, _, TPinger = thespian
    a, b = asys.createActor(TPinger), asys.createActor(TPinger)
    asys.ask(a, {"peer": b}, 10)
    asys.ask(b, {"peer": a}, 10)

    def work():
        assert asys.ask(a, {"start": 2 * N_PING}, 120) == "done"

    _bench(benchmark, work, 2 * N_PING)


@pytest.mark.benchmark(group="tell_n_n")
def test_tell_n_n_thespian(benchmark, thespian):
    asys, TSink, _, _ = thespian
    addrs = [asys.createActor(TSink) for _ in range(N_ACTORS)]

    def work():
        for i in range(M_EACH):
            for addr in addrs:
                asys.tell(addr, i)
        for addr in addrs:
            asys.ask(addr, "drain", 60)

    _bench(benchmark, work, N_ACTORS * M_EACH)


# --- fairness: a flooded actor must not starve a quiet one ----------------------------------------


@pytest.mark.benchmark(group="fairness")
def test_fairness_herdrt(benchmark, herd):
    """Time to answer one ask to a quiet actor while another has N_TELL messages queued.

    ``extra_info["quiet_share_median"]`` is that latency as a fraction of the flooded actor's whole
    backlog time: near 0 means the quiet actor was served after one batch, 1 that it starved.
    """
    import time

    shares = []

    def setup(node):
        return node.spawn(Sink), node.spawn(Sink)

    async def work(node, refs):
        flooded, quiet = refs
        for i in range(N_TELL):
            flooded.tell(i)
        t0 = time.perf_counter()
        await quiet.ask("ping")
        t1 = time.perf_counter()
        await flooded.ask(None)
        t2 = time.perf_counter()
        shares.append((t1 - t0) / (t2 - t0))

    _bench(benchmark, herd(setup, work), N_TELL)
    benchmark.extra_info["quiet_share_median"] = round(sorted(shares)[len(shares) // 2], 4)
