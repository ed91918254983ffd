"""Python -> service over the ZMQ bridge, beside raw pyzmq doing the same transport work.

This process runs herd node ``A`` (one-node herd, its bridge on a free port, uvloop or stdlib
asyncio). A child process (``bench/_bridge_service.py service``) is the service: one blocking
pyzmq DEALER in plain Python, serving ``sink`` (counts tells; an ask answers the count) and
``echo``. A separate process keeps the service off this process's GIL, as a Go service would be.

* ``bridge-tell``: N tells to the proxy actor ``sink`` (mailbox -> proxy -> msgpack -> ROUTER),
  then one ask to ``sink`` that answers once all N were handled (FIFO): its reply ends the round.
  The sender yields every ``CHUNK`` tells (or when the proxy's mailbox is full) and waits while
  the bridge's outbox holds messages.
* ``bridge-ask``: N sequential asks to ``echo`` (one in flight): the round trip through the proxy,
  the ROUTER, the service and its REPLY.

Baselines in the same groups (``_bridge_service.py raw``, a child with the same plain pyzmq loop):
``raw-push-pull`` sends the same N msgpack TELL bodies from a blocking PUSH to a PULL that counts
them and answers an empty message with its count; ``raw-dealer-router`` is N sequential
one-in-flight echoes through a ROUTER. ``extra_info`` holds messages (or round trips) per second.

    pytest bench/bench_bridge.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,mean,ops,rounds
"""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import uvloop
import zmq

from _harness import START_TIMEOUT, free_ports, record_rate, spawn_ready
from herdrt.bridge import Bridge
from herdrt.config import loads_config
from herdrt.errors import MailboxFull
from herdrt.herd import HerdNode

SECRET = "bench secret, not for production"
N_TELL = 200_000
N_ASK = 5_000
CHUNK = 1_000
ROUNDS = 3


@pytest.fixture(autouse=True)
def _small_when_disabled(request, monkeypatch):
    """Under ``--benchmark-disable`` (CI) every contender runs once: shrink the work to a smoke test."""
    if request.config.getoption("benchmark_disable", False):
        monkeypatch.setitem(globals(), "N_TELL", 3_000)
        monkeypatch.setitem(globals(), "N_ASK", 200)


# --- the bridge node and its service --------------------------------------------------------------


class _Bridged:
    def __init__(self, loop: asyncio.AbstractEventLoop, node: HerdNode):
        self.loop = loop
        self.node = node

    def run(self, coro):
        return self.loop.run_until_complete(coro)


async def _attach(node):
    return Bridge.attach(node)  # on the node's loop


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def bridged(request):
    flavour = request.param
    port, bridge_port = free_ports(2)
    text = (
        f'[herd]\nsecret = "{SECRET}"\nmailbox_size = 65536\n'
        f'[[nodes]]\nname = "A"\nport = {port}\nbridge_port = {bridge_port}\n'
    )
    config = loads_config(text, "bench herd")
    loop = uvloop.new_event_loop() if flavour == "uvloop" else asyncio.new_event_loop()
    node = HerdNode(config, "A")
    b = _Bridged(loop, node)
    b.run(node.start())
    b.bridge = b.run(_attach(node))

    def close():
        b.run(node.shutdown())
        loop.close()

    spawn_ready(request, "_bridge_service.py", "service", b.bridge.endpoint, SECRET)
    request.addfinalizer(close)  # before the child is reaped (finalizers run last-in first-out)

    async def joined():
        while "sink" not in node:
            await asyncio.sleep(0.005)
        return node.lookup("sink"), node.lookup("echo")

    b.sink, b.echo = b.run(asyncio.wait_for(joined(), START_TIMEOUT))
    assert b.run(b.echo.ask("hello")) == "hello"
    return b


async def _tell_round(b: _Bridged) -> None:
    tell = b.sink.tell
    bridge = b.bridge
    i = 0
    while i < N_TELL:
        try:
            for j in range(i, min(i + CHUNK, N_TELL)):
                tell(j)
                i = j + 1
        except MailboxFull:  # the proxy's mailbox: let the scheduler drain it
            pass
        await asyncio.sleep(0)
        while bridge.queued > CHUNK:  # ZeroMQ pushed back: let the outbox drain
            await asyncio.sleep(0.0005)
    got = await b.sink.ask("count", timeout=60)
    assert got == N_TELL, f"the service counted {got} of {N_TELL} tells"


async def _ask_round(b: _Bridged) -> None:
    ask = b.echo.ask
    for i in range(N_ASK):
        assert await ask(i) == i


@pytest.mark.benchmark(group="bridge-tell")
def test_bridge_tell(benchmark, bridged):
    record_rate(
        benchmark, lambda: bridged.run(_tell_round(bridged)), N_TELL, ROUNDS, loop=type(bridged.loop).__module__
    )
    assert bridged.bridge.counters["dropped_tells"] == 0


@pytest.mark.benchmark(group="bridge-ask")
def test_bridge_ask(benchmark, bridged):
    record_rate(benchmark, lambda: bridged.run(_ask_round(bridged)), N_ASK, ROUNDS, loop=type(bridged.loop).__module__)


# --- raw pyzmq baselines ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(request):
    pull_port, back_port, router_port = spawn_ready(request, "_bridge_service.py", "raw")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 100_000
    back = ctx.socket(zmq.PULL)
    dealer = ctx.socket(zmq.DEALER)
    push.connect(f"tcp://127.0.0.1:{pull_port}")
    back.connect(f"tcp://127.0.0.1:{back_port}")
    dealer.connect(f"tcp://127.0.0.1:{router_port}")
    for s in (push, back, dealer):
        s.linger = 0
        s.rcvtimeo = 60_000
    dealer.send(b"warm up")
    assert dealer.recv() == b"warm up"

    def close():
        for s in (push, back, dealer):
            s.close(0)
        ctx.term()

    request.addfinalizer(close)
    return push, back, dealer


@pytest.mark.benchmark(group="bridge-tell")
def test_raw_push_pull(benchmark, raw):
    push, back, _ = raw
    pack = msgpack.Packer(use_bin_type=True).pack

    def round_():
        send = push.send
        for i in range(N_TELL):
            send(pack([2, "A", "sink", i]))  # the body the bridge sends for each tell
        send(b"")
        assert int(back.recv()) == N_TELL

    record_rate(benchmark, round_, N_TELL, ROUNDS, loop="none (blocking pyzmq)")


@pytest.mark.benchmark(group="bridge-ask")
def test_raw_dealer_router(benchmark, raw):
    _, _, dealer = raw
    pack = msgpack.Packer(use_bin_type=True).pack
    unpack = msgpack.unpackb

    def round_():
        for i in range(N_ASK):
            dealer.send(pack([3, "A", "echo", i, "A", i]))
            assert unpack(dealer.recv())[3] == i

    record_rate(benchmark, round_, N_ASK, ROUNDS, loop="none (blocking pyzmq)")
