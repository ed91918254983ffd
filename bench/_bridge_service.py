"""Child process for bench_bridge.py: a bridge service, or the raw pyzmq baselines.

    python _bridge_service.py service ENDPOINT SECRET   # DEALER: SERVICE_HELLO, then serve
    python _bridge_service.py raw                        # PULL (counting) + ROUTER (echo)

Plain blocking pyzmq in one thread (no event loop): the simplest fast Python peer. Prints
``READY <port>`` (0 for the service) and runs until stdin closes.

The service serves ``sink`` (tells are counted; an ask answers the count so far and resets it)
and ``echo`` (an ask answers its body). The raw side: a PULL that counts messages and, on an
empty message, sends the count back on a PUSH; and a ROUTER that echoes every message.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import threading
import time

import msgpack
import zmq

SERVICE_HELLO, WELCOME, TELL, ASK, REPLY, HEARTBEAT, BYE = 11, 12, 2, 3, 6, 5, 9


def _stdin_closed(flag: threading.Event) -> None:
    sys.stdin.read()
    flag.set()


def service(endpoint: str, secret: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 100_000
    sock.connect(endpoint)
    pack = msgpack.Packer(use_bin_type=True).pack
    unpack = msgpack.unpackb
    cred = hmac.new(secret.encode(), b"herdrt-bridge-v1" + b"bench", hashlib.sha256).digest()
    print("READY 0", flush=True)  # before the hello: the node answers it once its loop runs again
    sock.send(pack([SERVICE_HELLO, 1, "bench", ["sink", "echo"], cred]))
    if not sock.poll(30_000):
        raise SystemExit("no WELCOME within 30 s")
    welcome = unpack(sock.recv())
    assert welcome[0] == WELCOME, welcome
    interval = welcome[2]
    done = threading.Event()
    threading.Thread(target=_stdin_closed, args=(done,), daemon=True).start()
    count = 0
    seq = 0
    next_beat = time.monotonic()
    recv = sock.recv
    send = sock.send
    while not done.is_set():
        now = time.monotonic()
        if now >= next_beat:
            seq += 1
            send(pack([HEARTBEAT, seq, time.time()]))
            next_beat = now + interval
        if not sock.poll(int(interval * 500)):
            continue
        for _ in range(10_000):  # drain what is there, then look at the clock again
            try:
                env = unpack(recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            kind = env[0]
            if kind == TELL:
                count += 1
            elif kind == ASK:
                _, node, name, body, src, corr = env
                if name == "sink":
                    send(pack([REPLY, src, corr, True, count]))
                    count = 0
                else:
                    send(pack([REPLY, src, corr, True, body]))
    sock.send(pack([BYE, "benchmark over"]))
    sock.close(200)
    ctx.term()


def raw() -> None:
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
    while not done.is_set():
        events = dict(poller.poll(100))
        if pull in events:
            for _ in range(10_000):
                try:
                    body = pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if body:
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
                router.send_multipart(frames)
    for s in (pull, back, router):
        s.close(0)
    ctx.term()


if __name__ == "__main__":
    if sys.argv[1] == "service":
        service(sys.argv[2], sys.argv[3])
    else:
        raw()
