"""The herd across two processes on loopback: remote tell throughput and remote ask round trips.

This process is herd node ``a`` (a :class:`~herdrt.herd.HerdNode` on the loop under test, uvloop
or stdlib asyncio); a child process (``bench/_herd_node.py``, same loop flavour) is node ``b``,
running ``sink`` (counts tells, answers an ask with its count) and ``echo`` (answers with the
message). The two are linked as a herd is: authenticated TCP, heartbeats, failure detection.

* ``herd-tell`` (``tell_1_1`` across nodes): N tells to ``sink@b``, then one ask to ``sink@b``,
  which answers once all N were handled (same link, FIFO) — that ask's reply ends the round. The
  sender queues ``CHUNK`` tells per loop turn and waits on ``link.drain()`` while the transport
  pushes back (without it the link's queue would reach ``max_queued``: LinkOverflow). The sink's
  mailbox is unbounded: one read delivers thousands of tells at once.
* ``herd-ask`` (``ask_1_1_sync`` across nodes): N sequential asks to ``echo@b``.

Beside them, in the same groups and run, the raw baselines (both processes on uvloop, see
``bench/_raw.py``): length-prefixed msgpack frames of the same envelopes over plain transports with
batched writes, to a child that counts them and answers when the count is reached; and two
one-in-flight echoes for round trips:

* ``stream echo``, the issue's baseline: a plain uvloop streams program at both ends (a task
  awaits each read; the asker awaits each answer, as an ``await ask()`` loop does);
* ``callback echo``, the floor: uvloop Protocols with the next request written from inside the
  read callback that brought the previous answer, no task, no future.

``herd-ask-paired`` alternates a herd round with a round of each echo, so their ratios are taken on
the same machine state (see ``_harness.record_paired``; printed after the tables).
``extra_info`` holds messages (or round trips) per second.

    pytest bench/bench_herd.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,mean,ops,rounds
"""

from __future__ import annotations

import asyncio
import textwrap

import pytest
import uvloop

from _harness import free_ports, record_paired, record_rate, spawn_ready
from _raw import ACK, ARM, RawSender, StreamClient
from herdrt.config import loads_config
from herdrt.core import encode_frame
from herdrt.herd import HerdNode
from herdrt.herd.tls import make_certificates

SECRET = "bench secret, not for production"
N_TELL = 300_000
N_ASK = 5_000
CHUNK = 1_000  # tells queued per loop turn before the sender yields
ROUNDS = 3
PAIRED_ROUNDS = 7  # alternations of herd / stream echo / callback echo
DRAIN_TIMEOUT = 60.0  # seconds for the ask that ends a tell round


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: shrink the work to a smoke test."""
    if request.config.getoption("benchmark_disable", False):
        monkeypatch.setitem(globals(), "N_TELL", 3_000)
        monkeypatch.setitem(globals(), "N_ASK", 200)


def _new_loop(flavour: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if flavour == "uvloop" else asyncio.new_event_loop()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# --- the herd pair --------------------------------------------------------------------------------


class _Pair:
    """Node ``a`` here on ``loop``, node ``b`` in a child process, linked."""

    def __init__(self, flavour: str, loop: asyncio.AbstractEventLoop, node: HerdNode):
        self.flavour = flavour
        self.loop = loop
        self.node = node
        self.sink = node.lookup("sink@b")
        self.echo = node.lookup("echo@b")

    async def link(self):
        """The link to ``b``, once up. The loop sits idle between tests: let whatever arrived
        meanwhile (a heartbeat, or a dropped link to redial) be handled before a round starts."""
        await asyncio.sleep(0.005)
        return await self.node.links.wait_up("b", timeout=10)

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module", params=["uvloop", "asyncio", "uvloop-tls"])
def pair(request, tmp_path_factory):
    flavour, _, tls = request.param.partition("-")
    port_a, port_b = free_ports(2)
    directory = tmp_path_factory.mktemp(f"herd-{request.param}")
    tls_table = ""
    if tls:  # the same herd with mutual TLS on its link ([herd.tls]), beside plain links
        make_certificates(directory / "pki", ["a", "b"])
        tls_table = (
            f'[herd.tls]\nca_file = "{directory}/pki/ca.pem"\n'
            f'cert_file = "{directory}/pki/{{node}}.pem"\nkey_file = "{directory}/pki/{{node}}.key"\n'
        )
    text = (
        textwrap.dedent(
            f"""
        [herd]
        secret = "{SECRET}"

        [[nodes]]
        name = "a"
        port = {port_a}

        [[nodes]]
        name = "b"
        port = {port_b}
        """
        )
        + tls_table
    )
    path = directory / "herd.toml"
    path.write_text(text)
    spawn_ready(request, "_herd_node.py", str(path), "b", flavour)

    loop = _new_loop(flavour)
    node = HerdNode(loads_config(text, str(path)), "a")

    def close():
        if not loop.is_closed():
            loop.run_until_complete(node.shutdown())
            _close_loop(loop)

    request.addfinalizer(close)  # runs before the child is reaped (finalizers run last-in first-out)
    p = _Pair(flavour, loop, node)
    p.run(node.start())
    p.run(p.link())
    assert p.run(p.echo.ask("hello")) == "hello"
    return p


# --- raw baselines (uvloop both sides) ------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_loop():
    loop = uvloop.new_event_loop()
    yield loop
    _close_loop(loop)


def _raw_sender(request, loop, mode: str) -> RawSender:
    (port,) = spawn_ready(request, "_raw.py", mode, "uvloop")
    _, sender = loop.run_until_complete(loop.create_connection(RawSender, "127.0.0.1", port))
    request.addfinalizer(sender.transport.close)
    return sender


@pytest.fixture(scope="module")
def raw_counter(request, raw_loop):
    return _raw_sender(request, raw_loop, "count")


@pytest.fixture(scope="module")
def raw_echo(request, raw_loop):
    return _raw_sender(request, raw_loop, "echo")


# --- herd-tell ------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="herd-tell")
def test_tell_herd(benchmark, pair):
    n = N_TELL
    sink = pair.sink
    expected = [pair.run(sink.ask("count"))]  # the sink's count carries over between rounds

    async def round_():
        link = await pair.link()
        tell = sink.tell
        for start in range(0, n, CHUNK):
            for i in range(start, min(start + CHUNK, n)):
                tell(i)
            await link.drain()  # waits only while the transport pushes back
            await asyncio.sleep(0)  # let the link flush this chunk
        # Up to the kernel's and the transport's buffers of tells may still be in flight: the
        # drain ask waits behind them, so give it more than the node's default ask timeout.
        count = await sink.ask("count", timeout=DRAIN_TIMEOUT)
        expected[0] += n
        assert count == expected[0], f"sink@b counted {count} tells, expected {expected[0]}"

    record_rate(benchmark, lambda: pair.run(round_()), n, ROUNDS, loop=pair.flavour)
    assert pair.node.counters["undeliverable"] == 0


@pytest.mark.benchmark(group="herd-tell")
def test_tell_raw_baseline(benchmark, raw_loop, raw_counter):
    """The same TELL envelopes as frames over a plain uvloop transport; the child counts them."""
    n = N_TELL
    sender = raw_counter
    acks: list = []
    box: list = [None]

    def on_message(env):
        acks.append(env[1])
        box[0].set_result(None)

    sender.on_message = on_message

    async def round_():
        box[0] = raw_loop.create_future()
        send = sender.send
        send([ARM, n])
        for start in range(0, n, CHUNK):
            for i in range(start, min(start + CHUNK, n)):
                send([2, "b", "sink", i])
            await sender.wait_writable()
            await asyncio.sleep(0)
        await box[0]

    record_rate(benchmark, lambda: raw_loop.run_until_complete(round_()), n, ROUNDS, loop="uvloop (raw)")
    assert acks and acks == [n * (k + 1) for k in range(len(acks))]  # every frame of every round arrived


# --- herd-ask -------------------------------------------------------------------------------------


def _herd_asks(pair: _Pair):
    """One round: ``N_ASK`` sequential asks to ``echo@b``."""
    echo = pair.echo

    async def round_():
        await pair.link()
        ask = echo.ask
        n = N_ASK
        reply = None
        for i in range(n):
            reply = await ask(i)
        assert reply == n - 1

    return lambda: pair.run(round_())


def _stream_echoes(loop, client: StreamClient):
    """One round over asyncio streams: ``N_ASK`` frames, each awaited before the next goes."""

    async def round_():
        trip = client.round_trip
        n = N_ASK
        env = None
        for i in range(n):
            env = await trip([3, "b", "echo", i, "a", i])
        assert env == [ACK, "b", "echo", n - 1, "a", n - 1]

    return lambda: loop.run_until_complete(round_())


def _callback_echoes(loop, client: RawSender):
    """One round over a Protocol: the next frame is written inside the read callback that brought
    the answer to the previous one (no task, no future per round trip)."""
    state: dict = {}

    def on_message(env):
        left = state["left"] = state["left"] - 1
        if left:
            client.transport.write(encode_frame([3, "b", "echo", left, "a", left]))
        else:
            state["last"] = env
            state["done"].set_result(None)

    async def round_():
        client.on_message = on_message
        n = state["left"] = N_ASK
        state["done"] = loop.create_future()
        client.transport.write(encode_frame([3, "b", "echo", n, "a", n]))
        await state["done"]
        assert state["last"] == [ACK, "b", "echo", 1, "a", 1]

    return lambda: loop.run_until_complete(round_())


@pytest.fixture(scope="module")
def raw_stream(request, raw_loop):
    (port,) = spawn_ready(request, "_raw.py", "stream-echo", "uvloop")
    client = raw_loop.run_until_complete(StreamClient.connect(port))
    request.addfinalizer(client.writer.close)
    return client


@pytest.mark.benchmark(group="herd-ask")
def test_ask_herd(benchmark, pair):
    record_rate(benchmark, _herd_asks(pair), N_ASK, ROUNDS, loop=pair.flavour)


@pytest.mark.benchmark(group="herd-ask")
def test_ask_raw_stream_echo(benchmark, raw_loop, raw_stream):
    """The issue's baseline: a one-in-flight echo over plain uvloop streams, both ends."""
    record_rate(benchmark, _stream_echoes(raw_loop, raw_stream), N_ASK, ROUNDS, loop="uvloop streams (raw)")


@pytest.mark.benchmark(group="herd-ask")
def test_ask_raw_callback_echo(benchmark, raw_loop, raw_echo):
    """The floor: one frame in flight over uvloop Protocols, each sent from the read callback."""
    record_rate(benchmark, _callback_echoes(raw_loop, raw_echo), N_ASK, ROUNDS, loop="uvloop protocol (raw)")


@pytest.mark.benchmark(group="herd-ask-paired")
def test_ask_paired(benchmark, request, pair, raw_loop, raw_stream, raw_echo):
    """Herd asks and both raw echoes, alternated round by round (see ``record_paired``)."""
    baselines = {
        "stream echo": _stream_echoes(raw_loop, raw_stream),
        "callback echo": _callback_echoes(raw_loop, raw_echo),
    }
    record_paired(benchmark, request.node.name, _herd_asks(pair), baselines, PAIRED_ROUNDS)


# --- herd-send: credit-paced sends, against plain tells in the same run ---------------------------


def _tell_round(pair_or_line, sink, n: int):
    """One round of ``n`` plain tells to ``sink`` (paced by ``link.drain()`` as test_tell_herd)."""

    async def round_():
        link = await pair_or_line.link()
        before = await sink.ask("count", timeout=DRAIN_TIMEOUT)
        tell = sink.tell
        for start in range(0, n, CHUNK):
            for i in range(start, min(start + CHUNK, n)):
                tell(i)
            await link.drain()
            await asyncio.sleep(0)
        count = await sink.ask("count", timeout=DRAIN_TIMEOUT)
        assert count - before == n, f"{sink} counted {count - before} tells, expected {n}"

    return lambda: pair_or_line.run(round_())


def _send_round(pair_or_line, sink, n: int, batch: int = 1):
    """One round of ``n`` messages to ``sink``, each ``await sink.send`` (or ``send_many`` of
    ``batch``): paced by the credit ``sink``'s node grants, no drain, no LinkOverflow possible."""

    async def round_():
        await pair_or_line.link()
        before = await sink.ask("count", timeout=DRAIN_TIMEOUT)
        if batch == 1:
            send = sink.send
            for i in range(n):
                await send(i)
        else:
            send_many = sink.send_many
            chunk = list(range(batch))
            for _ in range(n // batch):
                await send_many(chunk)
        count = await sink.ask("count", timeout=DRAIN_TIMEOUT)
        assert count - before == n, f"{sink} counted {count - before} messages, expected {n}"

    return lambda: pair_or_line.run(round_())


@pytest.mark.benchmark(group="herd-send")
def test_send_herd(benchmark, pair):
    """``await ref.send`` one at a time to ``sink@b``, one hop."""
    record_rate(benchmark, _send_round(pair, pair.sink, N_TELL), N_TELL, ROUNDS, loop=pair.flavour)


@pytest.mark.benchmark(group="herd-send")
def test_send_many_herd(benchmark, pair):
    """``await ref.send_many`` of 1000 at a time to ``sink@b``, one hop."""
    record_rate(benchmark, _send_round(pair, pair.sink, N_TELL, 1000), N_TELL, ROUNDS, loop=pair.flavour)


@pytest.mark.benchmark(group="herd-send-paired")
def test_send_paired(benchmark, request, pair):
    """``send`` and ``send_many`` rounds alternated with plain ``tell`` rounds, one hop: the ratio
    is what pacing by credit costs against fire-and-forget (see ``record_paired``)."""
    baselines = {"tell": _tell_round(pair, pair.sink, N_TELL)}
    record_paired(benchmark, request.node.name, _send_round(pair, pair.sink, N_TELL), baselines, PAIRED_ROUNDS)


@pytest.mark.benchmark(group="herd-send-paired")
def test_send_many_paired(benchmark, request, pair):
    baselines = {"tell": _tell_round(pair, pair.sink, N_TELL)}
    record_paired(benchmark, request.node.name, _send_round(pair, pair.sink, N_TELL, 1000), baselines, PAIRED_ROUNDS)


class _Line(_Pair):
    """Node ``a`` here; ``b`` and ``c`` in child processes; links a - b - c: ``sink@c`` is two hops away."""

    def __init__(self, flavour, loop, node):
        super().__init__(flavour, loop, node)
        self.sink = node.lookup("sink@c")


@pytest.fixture(scope="module")
def line(request, tmp_path_factory):
    ports = free_ports(3)
    directory = tmp_path_factory.mktemp("herd-line")
    text = f'[herd]\nsecret = "{SECRET}"\nlinks = [["a", "b"], ["b", "c"]]\n' + "".join(
        f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip("abc", ports, strict=True)
    )
    path = directory / "herd.toml"
    path.write_text(text)
    for name in "bc":
        spawn_ready(request, "_herd_node.py", str(path), name, "uvloop")
    loop = _new_loop("uvloop")
    node = HerdNode(loads_config(text, str(path)), "a")

    def close():
        if not loop.is_closed():
            loop.run_until_complete(node.shutdown())
            _close_loop(loop)

    request.addfinalizer(close)
    line = _Line("uvloop", loop, node)
    line.run(node.start())
    line.run(line.link())

    async def reachable():
        while "c" not in node.membership.live():
            await asyncio.sleep(0.01)

    line.run(asyncio.wait_for(reachable(), 10))
    return line


@pytest.mark.benchmark(group="herd-send-2-hops")
def test_send_two_hops_paired(benchmark, request, line):
    """``send`` to ``sink@c`` through ``b``, alternated with plain tells the same way."""
    baselines = {"tell": _tell_round(line, line.sink, N_TELL)}
    record_paired(benchmark, request.node.name, _send_round(line, line.sink, N_TELL), baselines, PAIRED_ROUNDS)


@pytest.mark.benchmark(group="herd-send-2-hops")
def test_send_many_two_hops_paired(benchmark, request, line):
    baselines = {"tell": _tell_round(line, line.sink, N_TELL)}
    record_paired(benchmark, request.node.name, _send_round(line, line.sink, N_TELL, 1000), baselines, PAIRED_ROUNDS)
