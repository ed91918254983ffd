"""Herd links on loopback: one-way tell throughput and one-in-flight echo round trips.

Each group compares the herdrt link (authenticated, heartbeats on, per-envelope dispatch) with a raw
baseline measured in the same run: length-prefixed msgpack frames (the same core ``encode_frames`` /
``FrameDecoder``) over plain asyncio Protocols with batched writes and no per-envelope work on the
receiving side — the framing floor. ``extra_info`` holds messages per second.

    pytest bench/bench_links.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,mean,ops,rounds
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
import uvloop

from _harness import child_env, record_rate, stop_child
from _raw import RawEcho as _RawEcho  # shared with bench_herd.py
from _raw import RawSender as _RawSender
from herdrt.core import FrameDecoder, encode_frame
from herdrt.herd.link import LinkSettings
from herdrt.herd.links import LinkServer, connect

SECRET = b"bench secret, not for production"
TELL = [2, "actor-17", None, b"0123456789abcdef"]  # a small TELL-shaped envelope
CHUNK = 1000  # envelopes queued per loop turn by the sender


def _count(benchmark, full: int) -> int:
    return 2000 if benchmark.disabled else full


def _settings(name: str) -> LinkSettings:
    return LinkSettings(name, SECRET, frozenset({"A", "B"}), heartbeat_interval=0.5)


# --- loops ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def loop(request):
    lp = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    lp.flavour = request.param
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


# --- raw baseline --------------------------------------------------------------------------------


class _RawCounter(asyncio.Protocol):
    """Counts frames; the floor does no per-envelope work beyond decoding."""

    def __init__(self, owner):
        self.owner = owner

    def connection_made(self, transport):
        self.transport = transport
        self.decoder = FrameDecoder()

    def data_received(self, data):
        self.owner.received(len(self.decoder.feed(data)))


class _Target:
    """Completes a future when ``count`` messages have arrived."""

    def __init__(self, loop):
        self.loop = loop
        self.count = 0
        self.goal = 0
        self.done: asyncio.Future | None = None

    def arm(self, n):
        self.goal = self.count + n
        self.done = self.loop.create_future()

    def received(self, n):
        self.count += n
        if self.count >= self.goal and not self.done.done():
            self.done.set_result(None)

    def on_envelopes(self, _link, envs):
        self.count += len(envs)
        if self.count >= self.goal and not self.done.done():
            self.done.set_result(None)

    def on_batches(self, _link, envs):
        """Counts the bodies of TELLS envelopes (``Link.send_tell``)."""
        self.count += sum(len(env[3]) for env in envs)
        if self.count >= self.goal and not self.done.done():
            self.done.set_result(None)


async def _pump(send, n, is_paused, wait_writable):
    env = TELL
    sent = 0
    while sent < n:
        for _ in range(min(CHUNK, n - sent)):
            send(env)
        sent += CHUNK
        if is_paused():
            await wait_writable()
        else:
            await asyncio.sleep(0)


# --- link-tell-throughput ------------------------------------------------------------------------


@pytest.mark.benchmark(group="link-tell-throughput")
@pytest.mark.parametrize("mode", ["send", "send_tell"])
def test_tell_herdrt_link(benchmark, loop, mode):
    """``send``: one TELL envelope per message. ``send_tell``: the same tells through
    ``Link.send_tell``, which folds consecutive tells to one target into TELLS envelopes."""
    n = _count(benchmark, 200_000)
    target = _Target(loop)
    on_arrival = target.on_envelopes if mode == "send" else target.on_batches

    async def setup():
        server = await LinkServer(_settings("B"), on_arrival).start()
        link = await connect(*server.address, _settings("A"), lambda _l, _es: None)
        return server, link

    server, link = loop.run_until_complete(setup())
    if mode == "send":
        send = link.send
    else:
        body = TELL[3]

        def send(_env):
            link.send_tell("B", "actor-17", body)

    async def run_once():
        target.arm(n)
        await _pump(send, n, lambda: link._paused, link.drain)
        await target.done

    record_rate(benchmark, lambda: loop.run_until_complete(run_once()), n, 5, loop=loop.flavour)
    assert link.overflows == 0 and target.count >= n

    async def teardown():
        link.close()
        await server.close()

    loop.run_until_complete(teardown())


@pytest.mark.benchmark(group="link-tell-throughput")
def test_tell_raw_baseline(benchmark, loop):
    n = _count(benchmark, 200_000)
    target = _Target(loop)

    async def setup():
        server = await loop.create_server(lambda: _RawCounter(target), "127.0.0.1", 0)
        _, sender = await loop.create_connection(_RawSender, *server.sockets[0].getsockname()[:2])
        return server, sender

    server, sender = loop.run_until_complete(setup())

    async def wait_writable():
        await sender.resumed

    async def run_once():
        target.arm(n)
        await _pump(sender.send, n, lambda: sender.paused, wait_writable)
        await target.done

    record_rate(benchmark, lambda: loop.run_until_complete(run_once()), n, 5, loop=loop.flavour)

    sender.transport.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


# --- two processes: the receiver in a child process ---------------------------------------------

_RECEIVER = textwrap.dedent(
    """
    import asyncio, sys
    import uvloop
    from herdrt.core import FrameDecoder, encode_frame
    from herdrt.herd.link import LinkSettings
    from herdrt.herd.links import LinkServer

    class Raw(asyncio.Protocol):
        count = 0
        def connection_made(self, t):
            self.t = t
            self.d = FrameDecoder()
        def data_received(self, data):
            for env in self.d.feed(data):
                if env[1] == "mark":
                    self.t.write(encode_frame([6, self.count]))
                else:
                    self.count += 1

    async def main(kind):
        count = 0
        def on_envelopes(link, envs):
            nonlocal count
            for env in envs:
                if env[1] == "mark":
                    link.send([6, count])
                else:
                    count += 1
        if kind == "link":
            settings = LinkSettings("B", SECRET, frozenset({"A", "B"}), heartbeat_interval=0.5)
            server = await LinkServer(settings, on_envelopes).start()
            port = server.address[1]
        else:
            server = await asyncio.get_running_loop().create_server(Raw, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    uvloop.run(main(sys.argv[1]))
    """
).replace("SECRET", repr(SECRET))


def _child(kind: str):
    child = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    return child, int(child.stdout.readline())


@pytest.mark.benchmark(group="link-tell-throughput-2proc")
@pytest.mark.parametrize("kind", ["link", "raw"])
def test_tell_two_processes(benchmark, kind):
    """Sender here, receiver in a child process (both uvloop); the child acknowledges a final marker."""
    n = _count(benchmark, 200_000)
    loop = uvloop.new_event_loop()
    child, port = _child(kind)
    try:
        acks: list = []
        state = {}

        def on_reply(_link, envs):
            for env in envs:
                acks.append(env[1])
                state["done"].set_result(None)

        async def setup():
            if kind == "link":
                link = await connect("127.0.0.1", port, _settings("A"), on_reply)
                return link.send, (lambda: link._paused), link.drain
            _, sender = await loop.create_connection(_RawSender, "127.0.0.1", port)
            sender.on_message = lambda env: on_reply(None, [env])

            async def wait_writable():
                await sender.resumed

            return sender.send, (lambda: sender.paused), wait_writable

        send, is_paused, wait_writable = loop.run_until_complete(setup())

        async def run_once():
            state["done"] = loop.create_future()
            await _pump(send, n, is_paused, wait_writable)
            send([2, "mark"])
            await state["done"]

        record_rate(benchmark, lambda: loop.run_until_complete(run_once()), n, 3)
        assert acks[-1] == n * len(acks)  # every message of every round arrived
    finally:
        stop_child(child)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()


# --- link-echo-rtt -------------------------------------------------------------------------------


@pytest.mark.benchmark(group="link-echo-rtt")
def test_echo_herdrt_link(benchmark, loop):
    n = _count(benchmark, 20_000)
    state = {}

    def echo(link, envs):
        for env in envs:
            env[0] = 6
            link.send(env)

    def on_reply(link, envs):
        for _env in envs:
            state["left"] -= 1
            if state["left"]:
                link.send([3, state["left"], b"ping"])
            else:
                state["done"].set_result(None)

    async def setup():
        server = await LinkServer(_settings("B"), echo).start()
        link = await connect(*server.address, _settings("A"), on_reply)
        return server, link

    server, link = loop.run_until_complete(setup())

    async def run_once():
        state["left"] = n
        state["done"] = loop.create_future()
        link.send([3, n, b"ping"])
        await state["done"]

    benchmark.pedantic(lambda: loop.run_until_complete(run_once()), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["round_trips"] = n
    benchmark.extra_info["rtt_per_s"] = round(n / benchmark.stats.stats.min) if not benchmark.disabled else None

    async def teardown():
        link.close()
        await server.close()

    loop.run_until_complete(teardown())


@pytest.mark.benchmark(group="link-echo-rtt")
def test_echo_raw_baseline(benchmark, loop):
    n = _count(benchmark, 20_000)
    state = {}

    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.decoder = FrameDecoder()

        def data_received(self, data):
            for _env in self.decoder.feed(data):
                state["left"] -= 1
                if state["left"]:
                    self.transport.write(encode_frame([3, state["left"], b"ping"]))
                else:
                    state["done"].set_result(None)

    async def setup():
        server = await loop.create_server(_RawEcho, "127.0.0.1", 0)
        _, client = await loop.create_connection(Client, *server.sockets[0].getsockname()[:2])
        return server, client

    server, client = loop.run_until_complete(setup())

    async def run_once():
        state["left"] = n
        state["done"] = loop.create_future()
        client.transport.write(encode_frame([3, n, b"ping"]))
        await state["done"]

    benchmark.pedantic(lambda: loop.run_until_complete(run_once()), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["round_trips"] = n
    benchmark.extra_info["rtt_per_s"] = round(n / benchmark.stats.stats.min) if not benchmark.disabled else None
    client.transport.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


# --- link-records ----------------------------------------------------------------------------------
# What sealing costs one coalesced write: frame it, seal it (an AES-256-GCM record), open it, decode
# it — beside framing and decoding alone, the same write, and beside the pure twin's records
# (`cryptography`). Two writes: a burst of tells (one large record) and one ask (the small record
# a round trip pays for at each end).

_WRITES = {
    "1000-tells": [[15, "b", "sink", [TELL[3]] * 1000]] + [TELL] * 999,
    "one-ask": [[3, "b", "echo", b"ping", "a", 12345]],
}
_KEY = bytes(range(32))


@pytest.mark.benchmark(group="link-records")
@pytest.mark.parametrize("write", list(_WRITES))
@pytest.mark.parametrize("records", [None, "compiled", "pure"], ids=["framing-only", "sealed", "sealed-pure-twin"])
def test_record_per_write(benchmark, write, records):
    from herdrt.core import _fast, _pure, encode_frames

    envs = _WRITES[write]
    decoder = FrameDecoder()
    if records is None:

        def once():
            return decoder.feed(encode_frames(envs))
    else:
        impl = _fast if records == "compiled" else _pure
        seal, open_ = impl.RecordSealer(_KEY).seal, impl.RecordOpener(_KEY).feed

        def once():
            return decoder.feed(open_(seal(encode_frames(envs))))

    assert len(once()) == len(envs)
    benchmark(once)
    benchmark.extra_info["envelopes_per_write"] = len(envs)
