"""Child process for the bridge benchmarks: a bridge service, a bridge client, or raw pyzmq baselines.

    python _bridge_service.py service ENDPOINT SECRET   # DEALER: SERVICE_HELLO, then serve
    python _bridge_service.py client ENDPOINT SECRET    # DEALER: SERVICE_HELLO, then bench rounds
    python _bridge_service.py raw                        # PULL (counting) + ROUTER (echo)
    python _bridge_service.py decode                     # the same, decoding every body (msgpack)

Plain blocking pyzmq in one thread (no event loop): the simplest fast Python peer. ``service`` and
the raw modes print ``READY <port>...`` (0 for the service) and run until stdin closes.

The service (bench_bridge.py) serves ``sink`` (tells are counted; an ask answers the count so far
and resets it) and ``echo`` (an ask answers its body). The raw side: a PULL that counts messages
and, on an empty message, sends the count back on a PUSH; and a ROUTER that echoes every message.
``decode`` (bench_interop.py's baselines) also unpacks every body it receives, as a bridge must.
Both wait on the sockets' readiness, then drain them with non-blocking receives: the fastest
receive loop pyzmq offers (awaiting a receive per message is an order of magnitude slower).

``client`` (bench_interop.py) is the Python twin of ``herd-call bench-loop``: a service serving
no names that tells and asks actors on the bridge's node. Each stdin line ``tell TARGET N`` tells
the numbers ``0..N-1`` to TARGET one by one (each full ``TELLS_BATCH`` of them leaves as one TELLS
envelope), then asks it ``"$count"``, which returns once all are in (FIFO); ``ask TARGET N`` makes
N sequential asks of ``0..N-1``. Each round prints one JSON line ``{"n", "seconds",
"tell_batches"}``, as herd-call does. It heartbeats while idle, so rounds far apart do not get it
evicted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import threading
import time

import msgpack
import zmq

SERVICE_HELLO, WELCOME, TELL, ASK, REPLY, HEARTBEAT, BYE, TELLS = 11, 12, 2, 3, 6, 5, 9, 15
PROTOCOL_VERSION = 4
#: Bodies per TELLS envelope the client sends (herdrt's links batch up to as many).
TELLS_BATCH = 1024


def _stdin_closed(flag: threading.Event) -> None:
    sys.stdin.read()
    flag.set()


class _Peer:
    """A DEALER that has said SERVICE_HELLO as ``service`` and got WELCOME; sends heartbeats when due."""

    def __init__(self, endpoint: str, secret: str, service: str, names: list[str]):
        self.ctx = zmq.Context()
        self.sock = sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 100_000
        sock.connect(endpoint)
        self.pack = msgpack.Packer(use_bin_type=True).pack
        cred = hmac.new(secret.encode(), b"herdrt-bridge-v1" + service.encode(), hashlib.sha256).digest()
        sock.send(self.pack([SERVICE_HELLO, PROTOCOL_VERSION, service, names, cred]))
        if not sock.poll(30_000):
            raise SystemExit("no WELCOME within 30 s")
        welcome = msgpack.unpackb(sock.recv())
        assert welcome[0] == WELCOME, welcome
        self.interval = welcome[2]
        self.seq = 0
        self.next_beat = time.monotonic()

    def beat(self) -> None:
        """Send a HEARTBEAT if one is due (the node evicts a silent service)."""
        now = time.monotonic()
        if now >= self.next_beat:
            self.seq += 1
            self.sock.send(self.pack([HEARTBEAT, self.seq, time.time()]))
            self.next_beat = now + self.interval

    def close(self) -> None:
        self.sock.send(self.pack([BYE, "benchmark over"]))
        self.sock.close(200)
        self.ctx.term()


def service(endpoint: str, secret: str) -> None:
    print("READY 0", flush=True)  # before the hello: the node answers it once its loop runs again
    peer = _Peer(endpoint, secret, "bench", ["sink", "echo"])
    sock, pack = peer.sock, peer.pack
    unpack = msgpack.unpackb
    done = threading.Event()
    threading.Thread(target=_stdin_closed, args=(done,), daemon=True).start()
    count = 0
    recv = sock.recv
    send = sock.send
    while not done.is_set():
        peer.beat()
        if not sock.poll(int(peer.interval * 500)):
            continue
        for _ in range(10_000):  # drain what is there, then look at the clock again
            try:
                env = unpack(recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            kind = env[0]
            if kind == TELL:
                count += 1
            elif kind == TELLS:
                count += len(env[3])
            elif kind == ASK:
                _, node, name, body, src, corr = env
                if name == "sink":
                    send(pack([REPLY, src, corr, True, count]))
                    count = 0
                else:
                    send(pack([REPLY, src, corr, True, body]))
    peer.close()


class _Client:
    """The rounds of ``client``: tells and sequential asks from a service to the node's actors."""

    def __init__(self, peer: _Peer):
        self.peer = peer
        self.corr = 0
        peer.sock.rcvtimeo = 60_000

    def ask(self, target: str, body):
        """One ASK; wait for its REPLY (heartbeats from the node meanwhile are answered in kind)."""
        peer = self.peer
        self.corr = corr = self.corr + 1
        peer.sock.send(peer.pack([ASK, None, target, body, "pybench", corr]))
        recv, unpack = peer.sock.recv, msgpack.unpackb
        while True:
            env = unpack(recv())
            if env[0] == REPLY and env[2] == corr:
                if not env[3]:
                    raise RuntimeError(f"ask {target} failed: {env[4]}")
                return env[4]
            if env[0] == BYE:
                raise RuntimeError(f"the node said BYE: {env[1]}")
            peer.beat()  # a HEARTBEAT, or a late reply: keep our side of the liveness contract

    def round(self, op: str, target: str, n: int) -> dict:
        send, pack = self.peer.sock.send, self.peer.pack
        batches = 0
        start = time.perf_counter()
        if op == "tell":
            # One tell at a time, as a client API takes them; a full batch leaves as one TELLS.
            pending: list = []
            add = pending.append
            for i in range(n):
                add(i)
                if len(pending) == TELLS_BATCH:
                    send(pack([TELLS, None, target, pending]))
                    batches += 1
                    pending.clear()
            if pending:
                send(pack([TELLS, None, target, pending]))
                batches += 1
            self.ask(target, "$count")
        else:
            ask = self.ask
            for i in range(n):
                ask(target, i)
        return {"n": n, "seconds": time.perf_counter() - start, "tell_batches": batches}


def client(endpoint: str, secret: str) -> None:
    peer = _Peer(endpoint, secret, "pybench", [])
    bench = _Client(peer)
    sock, fd = peer.sock, sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(fd, zmq.POLLIN)
    poller.register(sock, zmq.POLLIN)
    pending = b""
    while True:
        peer.beat()
        events = dict(poller.poll(int(peer.interval * 500)))
        while sock.poll(0):  # what the node sent while we were idle (heartbeats): seen
            sock.recv()
        if fd not in events:
            continue
        data = os.read(fd, 4096)
        if not data:  # EOF: the benchmark is over
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            op, target, n = line.decode().split()
            print(json.dumps(bench.round(op, target, int(n))), flush=True)
    peer.close()


def raw(decode: bool = False) -> None:
    """The raw baselines: PULL (count; an empty message asks for the count) and ROUTER (echo)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 100_000
    back = ctx.socket(zmq.PUSH)
    router = ctx.socket(zmq.ROUTER)
    pull_port = pull.bind_to_random_port("tcp://127.0.0.1")
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    router_port = router.bind_to_random_port("tcp://127.0.0.1")
    done = threading.Event()
    threading.Thread(target=_stdin_closed, args=(done,), daemon=True).start()
    print(f"READY {pull_port} {back_port} {router_port}", flush=True)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(router, zmq.POLLIN)
    count = 0
    unpack = msgpack.unpackb
    while not done.is_set():
        events = dict(poller.poll(100))
        if pull in events:
            recv = pull.recv
            for _ in range(10_000):
                try:
                    body = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if body:
                    if decode:
                        unpack(body)
                    count += 1
                else:
                    back.send(str(count).encode())
                    count = 0
        if router in events:
            while True:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if decode:
                    unpack(frames[-1])
                router.send_multipart(frames)
    for s in (pull, back, router):
        s.close(0)
    ctx.term()


def connect_raw(ports: list[int], sndhwm: int) -> tuple[zmq.Context, list[zmq.Socket]]:
    """The far ends of ``raw`` / ``decode``, for the parent: a PUSH, a PULL and a DEALER connected to
    the three ports of its READY line (in that order), with no linger and a 60 s receive timeout."""
    ctx = zmq.Context()
    socks = []
    for kind, port in zip((zmq.PUSH, zmq.PULL, zmq.DEALER), ports, strict=False):
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.rcvtimeo = 60_000
        sock.sndhwm = sndhwm
        sock.connect(f"tcp://127.0.0.1:{port}")
        socks.append(sock)
    return ctx, socks


if __name__ == "__main__":
    if sys.argv[1] == "service":
        service(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3])
    else:
        raw(decode=sys.argv[1] == "decode")
