"""The ZeroMQ bridge: real pyzmq DEALER services against real herd nodes in this process (uvloop and
stdlib asyncio), over TCP on 127.0.0.1."""

import asyncio
import time

import msgpack
import pytest
import zmq
import zmq.asyncio
from click.testing import CliRunner

from _herdtest import Recorder, Slow, free_ports, until
from herdrt import Actor
from herdrt.bridge import REGISTER, SERVICE_HELLO, UNREGISTER, WELCOME, Bridge, service_credential
from herdrt.cli import main as cli_main
from herdrt.config import loads_config
from herdrt.errors import ActorNotFound, FrameTooLarge, MailboxFull, NodeUnavailable, RemoteError
from herdrt.herd import HerdNode
from herdrt.herd import protocol as P
from herdrt.herd.backpressure import BACKLOG_HIGH

SECRET = "bridge-test-secret-0123"
SECRET_BYTES = SECRET.encode()
TELL, ASK, ERROR, HEARTBEAT, REPLY, BYE, TELLS = 2, 3, 4, 5, 6, 9, 15


def bridge_config(names=("A", "B"), bridged=("A",), links=None, bridge_table="", extra="", base=None):
    ports = free_ports(2 * len(names))
    text = f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.1\n{extra}'
    if links is not None:
        text += "links = [" + ", ".join(f'["{a}", "{b}"]' for a, b in links) + "]\n"
    if bridge_table:
        text += "[herd.bridge]\n" + bridge_table + "\n"
    for i, name in enumerate(names):
        text += f'[[nodes]]\nname = "{name}"\nport = {ports[2 * i]}\n'
        if name in bridged:
            text += f"bridge_port = {ports[2 * i + 1]}\n"
    return loads_config(text, "test-herd.toml", base)


class Echo(Actor):
    def receive(self, message, ctx):
        if message == "boom":
            raise KeyError("boom")
        return [self.node.name, message]


class BridgedNode(HerdNode):
    """A herd node with its bridge attached when its config has a bridge_port, as `herdrt serve`
    wires them (the herd itself knows nothing of bridges)."""

    bridge: Bridge | None = None

    async def start(self):
        await super().start()
        if self.bridge is None and self.config.node(self.name).bridge_port is not None:
            self.bridge = Bridge.attach(self)
        return self


class Herd:
    def __init__(self, config):
        self.config = config
        self.nodes = {}

    async def __aenter__(self):
        for name in self.config.nodes:
            node = BridgedNode(self.config, name, strict_messages=True, ask_timeout=5.0)
            await node.start()
            node.spawn(Echo, name="echo")
            node.register_kind("echoes", Echo)
            self.nodes[name] = node
        live = set(self.nodes)
        await until(lambda: all(n.membership.live() == live for n in self.nodes.values()))
        return self.nodes

    async def __aexit__(self, *exc):
        for node in self.nodes.values():
            await node.shutdown()


class Service:
    """A test service: one DEALER, the bridge protocol spoken by hand."""

    def __init__(
        self,
        node,
        name="svc",
        names=("calc",),
        *,
        secret=SECRET_BYTES,
        credential=...,
        curve=None,
        rcvhwm=None,
        routing_id=None,
    ):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if routing_id is not None:
            self.sock.routing_id = routing_id
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
            self.sock.rcvbuf = 4096
        if curve is not None:
            server_public, public, secret_key = curve
            self.sock.curve_serverkey = server_public
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret_key
        self.sock.connect(node.bridge.endpoint)
        self.node_name = node.name
        self.name = name
        self.names = list(names)
        self.credential = service_credential(secret, name) if credential is ... else credential
        self.task = None
        self.serving = False
        self.seen = []  # tells received by the serve loop

    def send(self, env):
        self.sock.send(msgpack.packb(env, use_bin_type=True))

    def send_raw(self, *frames):
        self.sock.send_multipart(list(frames))

    async def recv(self, timeout=2.0, skip_heartbeats=True):
        while True:
            frame = await asyncio.wait_for(self.sock.recv(), timeout)
            env = msgpack.unpackb(frame, raw=False)
            if not (skip_heartbeats and env[0] == HEARTBEAT):
                return env

    async def nothing(self, wait=0.3):
        """Assert nothing but heartbeats arrives within ``wait`` seconds."""
        with pytest.raises(asyncio.TimeoutError):
            await self.recv(wait)

    async def hello(self, version=P.PROTOCOL_VERSION, names=None):
        self.send([SERVICE_HELLO, version, self.name, self.names if names is None else names, self.credential])
        return await self.recv()

    def serve(self, heartbeat=True):
        """Answer asks in the background: "fail" -> ValueError, "missing" -> ActorNotFound."""
        self.serving = True
        self.task = asyncio.ensure_future(self._serve(heartbeat))
        return self

    async def _serve(self, heartbeat):
        seq = 0
        last = 0.0
        while self.serving:
            try:
                env = await self.recv(0.05, skip_heartbeats=False)
            except TimeoutError:
                env = None
            if heartbeat and time.monotonic() - last > 0.1:
                seq += 1
                last = time.monotonic()
                self.send([HEARTBEAT, seq, time.time()])
            if env is None:
                continue
            if env[0] == TELL:
                self.seen.append((env[2], env[3]))
            elif env[0] == TELLS:
                self.seen.extend((env[2], body) for body in env[3])
            elif env[0] == ASK:
                _, _, name, body, src, corr = env
                if body == "fail":
                    self.send([REPLY, src, corr, False, ["ValueError", "bad input"]])
                elif body == "missing":
                    self.send([REPLY, src, corr, False, ["ActorNotFound", f"no handler for {name}"]])
                elif body == "seen":
                    self.send([REPLY, src, corr, True, [list(s) for s in self.seen]])
                else:
                    self.send([REPLY, src, corr, True, {"by": self.name, "name": name, "echo": body}])

    async def close(self):
        if self.task is not None:
            # a flag, not cancel(): on 3.11 wait_for can swallow a cancellation (gh-86296)
            self.serving = False
            await self.task
        self.sock.close(0)
        self.ctx.term()


def test_hello_welcome_register_and_status(run):
    config = bridge_config()

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            svc = Service(a, names=["calc"])
            try:
                assert await svc.hello() == [WELCOME, "A", 0.1, 1 << 20]
                svc.send([REGISTER, ["more"]])
                await until(lambda: "more" in a.bridge.stats()["services"]["svc"]["names"])
                status = await a.lookup("$node@A").ask("status")
                info = status["bridge"]["services"]["svc"]
                assert info["live"] and info["names"] == ["calc", "more"]
                assert status["bridge"]["counters"]["welcomed"] == 1 and not status["bridge"]["curve"]
                assert a.lookup("calc").path == "calc@A"  # a proxy actor on the node
                svc.send([UNREGISTER, ["more"]])
                await until(lambda: "more" not in a.bridge.stats()["services"]["svc"]["names"])
                with pytest.raises(ActorNotFound):
                    await nodes["B"].lookup("more@A").ask(1)
                svc.send([REGISTER, ["more"]])  # at once again: the name was freed synchronously
                await until(lambda: "more" in a.bridge.stats()["services"]["svc"]["names"])
                assert "bridge" not in nodes["B"].herd_status()  # B runs no bridge
            finally:
                await svc.close()

    run(main)


def test_refusals_wrong_credential_version_and_taken_names(run):
    config = bridge_config()

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            bad = Service(a, credential=b"\x00" * 32)
            nocred = Service(a, name="other", credential=None)
            old = Service(a, name="old")
            first = Service(a, name="first", names=["shared"])
            second = Service(a, name="second", names=["shared"])
            local = Service(a, name="local", names=["echo"])
            try:
                assert await bad.hello() == [
                    ERROR,
                    None,
                    "auth",
                    "authentication failed: the credential does not match the herd secret",
                ]
                bad.send([TELL, None, "echo", 1])  # the identity was forgotten
                err = await bad.recv()
                assert err[:3] == [ERROR, None, "protocol"] and "SERVICE_HELLO first" in err[3]
                assert (await nocred.hello())[:3] == [ERROR, None, "auth"]
                err = await old.hello(version=P.PROTOCOL_VERSION + 1)
                assert err[:3] == [ERROR, None, "version"] and f"version {P.PROTOCOL_VERSION}" in err[3]
                assert (await first.hello())[0] == WELCOME
                err = await second.hello()
                assert err[:3] == [ERROR, None, "name_taken"] and "shared (served by first)" in err[3]
                err = await local.hello()
                assert err[:3] == [ERROR, None, "name_taken"] and "echo (a local actor)" in err[3]
                counters = a.bridge.stats()["counters"]
                assert counters["refused"] == 5 and counters["welcomed"] == 1
                assert set(a.bridge.stats()["services"]) == {"first"}
            finally:
                for s in (bad, nocred, old, first, second, local):
                    await s.close()

    run(main)


def test_herd_actors_tell_and_ask_a_service_on_another_node(run):
    config = bridge_config(["A", "B", "C"], links=[("A", "B"), ("B", "C")])

    async def main():
        async with Herd(config) as nodes:
            svc = Service(nodes["A"], names=["calc"]).serve()
            try:
                assert (await svc.hello())[0] == WELCOME
                c = nodes["C"]  # two hops from the bridge
                assert await c.lookup("calc@A").ask({"x": [1, 2.5, b"\x00"]}) == {
                    "by": "svc",
                    "name": "calc",
                    "echo": {"x": [1, 2.5, b"\x00"]},
                }
                answers = await asyncio.gather(*(c.lookup("calc@A").ask(i) for i in range(50)))
                assert [a["echo"] for a in answers] == list(range(50))  # many asks in flight at once
                for i in range(20):
                    c.lookup("calc@A").tell(i)
                assert await c.lookup("calc@A").ask("seen") == [["calc", i] for i in range(20)]  # FIFO
                with pytest.raises(RemoteError) as info:
                    await c.lookup("calc@A").ask("fail")
                assert info.value.type_name == "ValueError" and info.value.message == "bad input"
                with pytest.raises(ActorNotFound, match="no handler for calc"):
                    await nodes["A"].lookup("calc").ask("missing")  # from the bridge node itself
                with pytest.raises(TypeError):  # what msgpack cannot carry fails at the sender
                    c.lookup("calc@A").tell({1, 2})
                counters = nodes["A"].bridge.stats()["counters"]
                assert counters["asks_to_services"] >= 53 and counters["tells_to_services"] == 20
                assert counters["replies_from_services"] == counters["asks_to_services"]
            finally:
                await svc.close()

    run(main)


def test_a_service_tells_and_asks_across_the_herd(run):
    config = bridge_config(["A", "B", "C"], links=[("A", "B"), ("B", "C")])

    async def main():
        async with Herd(config) as nodes:
            nodes["C"].spawn(Recorder, name="rec")
            svc = Service(nodes["A"], names=[])
            try:
                assert (await svc.hello())[0] == WELCOME
                svc.send([ASK, "C", "echo", "hi", "svc", 7])  # C is not A's neighbor: routed via B
                assert await svc.recv() == [REPLY, "svc", 7, True, ["C", "hi"]]
                svc.send([ASK, None, "echo@B", b"\x01", "svc", 0])  # name@node; corr 0 is an ask too
                assert await svc.recv() == [REPLY, "svc", 0, True, ["B", b"\x01"]]
                svc.send([ASK, None, "echo", {"k": None}, "svc", 8])  # nil: the bridge's node
                assert await svc.recv() == [REPLY, "svc", 8, True, ["A", {"k": None}]]
                svc.send([ASK, None, ["echoes", "k1"], 1.5, "svc", 9])  # keyed, placed by the ring
                reply = await svc.recv()
                assert reply[:4] == [REPLY, "svc", 9, True] and reply[4] == [nodes["A"].owner("echoes", "k1"), 1.5]
                for i in range(10):
                    svc.send([TELL, "C", "rec", i])
                await until(lambda: nodes["C"].stats()["actors"]["rec"]["messages"] == 10)
                assert await nodes["A"].lookup("rec@C").ask("get") == list(range(10))
                # errors come back typed
                svc.send([ASK, "C", "ghost", 1, "svc", 10])
                reply = await svc.recv()
                assert reply[:4] == [REPLY, "svc", 10, False] and reply[4][0] == "ActorNotFound"
                svc.send([ASK, "C", "echo", "boom", "svc", 11])
                assert await svc.recv() == [REPLY, "svc", 11, False, ["KeyError", "'boom'"]]
                svc.send([ASK, "Nowhere", "echo", 1, "svc", 12])
                reply = await svc.recv()
                assert reply[:4] == [REPLY, "svc", 12, False] and reply[4][0] == "NodeUnavailable"
                svc.send([ASK, None, ["nokind", "k"], 1, "svc", 13])
                reply = await svc.recv()
                assert reply[:4] == [REPLY, "svc", 13, False] and reply[4][0] == "ActorNotFound"
                svc.send([ASK, None, 42, 1, "svc", 14])  # a bad target: ERROR with the corr
                err = await svc.recv()
                assert err[:3] == [ERROR, 14, "protocol"]
            finally:
                await svc.close()

    run(main)


def test_eviction_fails_asks_fast_and_hello_restores(run):
    config = bridge_config(bridge_table="evict_after = 0.4")

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["A"], nodes["B"]
            svc = Service(a, names=["calc"])
            try:
                assert (await svc.hello())[0] == WELCOME
                assert (await svc.recv(1.0, skip_heartbeats=False))[0] == HEARTBEAT  # the node beats
                # silent: no heartbeats from the service -> evicted, told BYE
                bye = await svc.recv(2.0)
                assert bye[0] == BYE and bye[1].startswith("evicted: silent for")
                assert a.bridge.stats()["services"]["svc"]["live"] is False
                started = time.monotonic()
                with pytest.raises(NodeUnavailable, match="evicted"):
                    await b.lookup("calc@A").ask(1, timeout=5)
                assert time.monotonic() - started < 1.0  # at once, not after the ask timeout
                b.lookup("calc@A").tell("lost")
                await until(lambda: a.bridge.counters["dropped_tells"] == 1)
                svc.send([TELL, None, "echo", 1])  # the old session is gone
                assert (await svc.recv())[:3] == [ERROR, None, "protocol"]
                assert (await svc.hello())[0] == WELCOME  # the same service again: its names are back
                svc.serve()
                assert (await b.lookup("calc@A").ask(2))["echo"] == 2
                assert a.bridge.counters["evictions"] >= 1  # (a loaded machine may evict it twice)
            finally:
                await svc.close()

    run(main)


def test_reconnect_replaces_and_bye_unregisters(run):
    config = bridge_config()

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["A"], nodes["B"]
            first = Service(a, names=["calc"])
            second = Service(a, names=["calc"])
            try:
                assert (await first.hello())[0] == WELCOME
                assert (await second.hello())[0] == WELCOME  # same service name, new connection
                second.serve()
                assert (await first.recv())[:2] == [BYE, "replaced by a newer connection"]
                assert (await b.lookup("calc@A").ask(3))["echo"] == 3  # answered by the new one
                second.send([BYE, "done"])
                await until(lambda: "svc" not in a.bridge.stats()["services"])
                with pytest.raises(ActorNotFound):
                    await b.lookup("calc@A").ask(4)
                assert a.bridge.counters["byes"] == 1
            finally:
                await first.close()
                await second.close()

    run(main)


def test_malformed_messages_do_not_disturb_other_services(run):
    config = bridge_config(extra="max_frame_size = 4096\n")

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["A"], nodes["B"]
            good = Service(a, name="good", names=["calc"]).serve()
            bad = Service(a, name="bad", names=["other"])
            stranger = Service(a, name="stranger")
            try:
                assert (await good.hello())[0] == WELCOME
                # unknown sender: garbage is dropped and counted, never answered
                stranger.send_raw(b"\xc1\xff garbage")
                stranger.send_raw(b"x" * 5000)
                await stranger.nothing(0.2)
                assert a.bridge.counters["dropped_unknown"] == 2
                assert (await bad.hello())[0] == WELCOME
                cases = [
                    (lambda: bad.send_raw(b"\xc1"), "frame"),  # not msgpack
                    (lambda: bad.send_raw(b"\x01\x02"), "frame"),  # trailing bytes
                    (lambda: bad.send_raw(msgpack.packb([2, None, "x", "y" * 5000])), "frame"),  # oversized
                    (lambda: bad.send_raw(b"\x92\x02", b"\x01"), "frame"),  # two frames
                    (lambda: bad.send({"kind": 2}), "protocol"),  # a map, not an envelope
                    (lambda: bad.send([]), "protocol"),
                    (lambda: bad.send([99, 1]), "protocol"),  # unknown kind
                    (lambda: bad.send([TELL, None]), "protocol"),  # short TELL
                    (lambda: bad.send([REPLY, "A", "x", True, 1]), "protocol"),
                    (lambda: bad.send([REGISTER, ["a@b"]]), "protocol"),
                    (lambda: bad.send([HEARTBEAT, "x", 1.0]), "protocol"),
                    (lambda: bad.sock.send(msgpack.packb([TELL, None, "echo", msgpack.ExtType(5, b"")])), "protocol"),
                ]
                for send, code in cases:
                    send()
                    err = await bad.recv()
                    assert err[0] == ERROR and err[2] == code, (err, code)
                    assert (await b.lookup("calc@A").ask("ok"))["echo"] == "ok"  # the other one is fine
                bad.send([REPLY, "A", 12345, True, 1])  # a reply nobody waits for: counted, no answer
                await until(lambda: a.bridge.counters["stray_replies"] == 1)
                assert (await bad.hello())[0] == WELCOME  # the bad one is still in session
                assert a.bridge.counters["malformed"] >= len(cases) + 2
                assert a.bridge.stats()["services"]["good"]["live"]
            finally:
                for s in (good, bad, stranger):
                    await s.close()

    run(main)


def test_outbox_overflow_is_visible(run):
    config = bridge_config(bridge_table="max_queued = 10\nevict_after = 30")

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            svc = Service(a, names=["sink"], rcvhwm=1)
            try:
                assert (await svc.hello())[0] == WELCOME
                ref = a.lookup("sink")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the service does not read: ZeroMQ pushes back
                    for _ in range(100):
                        try:
                            ref.tell(b"x" * 20_000)
                        except MailboxFull:  # the proxy's own mailbox: let it drain
                            break
                    await asyncio.sleep(0)
                    if a.bridge.counters["outbox_overflows"]:
                        break
                assert a.bridge.counters["outbox_overflows"] > 0
                assert 0 < a.bridge.stats()["services"]["svc"]["queued"] <= 10
                # ZeroMQ is pushing back: tells queued ahead of an ask (same turn) fill the outbox,
                # so the ask finds it full
                for _ in range(100):
                    ref.tell(b"x" * 20_000)
                with pytest.raises(MailboxFull, match="outbox"):
                    await ref.ask("x")
            finally:
                await svc.close()

    run(main)


def _write_curve(tmp_path):
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    (tmp_path / "bridge.key").write_text(server_secret.decode() + "\n")
    (tmp_path / "bridge.key").chmod(0o600)
    table = (
        'curve_secret_key_file = "bridge.key"\n'
        f'curve_public_key = "{server_public.decode()}"\n'
        f'allowed_client_keys = ["{client_public.decode()}"]'
    )
    return table, server_public, (client_public, client_secret)


def test_curve_admits_allowed_keys_only(run, tmp_path):
    table, server_public, (client_public, client_secret) = _write_curve(tmp_path)
    config = bridge_config(bridge_table=table, base=tmp_path)
    stranger_public, stranger_secret = zmq.curve_keypair()

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            allowed = Service(
                a, names=["calc"], credential=None, curve=(server_public, client_public, client_secret)
            ).serve()
            try:
                assert (await allowed.hello())[0] == WELCOME  # the key authenticates: credential nil
                assert (await nodes["B"].lookup("calc@A").ask(5))["echo"] == 5
                counters = a.bridge.counters
                # Three ways to be refused; each is counted (every attempt: ZeroMQ redials).
                for _kind, make in [
                    (
                        "a key not allowed",
                        lambda: Service(
                            a, name="intruder", names=["x"], curve=(server_public, stranger_public, stranger_secret)
                        ),
                    ),
                    ("no CURVE at all, but the right credential", lambda: Service(a, name="plain", names=["y"])),
                    (
                        "CURVE to the wrong server key",
                        lambda: Service(
                            a, name="lost", names=["z"], curve=(stranger_public, client_public, client_secret)
                        ),
                    ),
                ]:
                    before = counters["curve_denied"]
                    s = make()
                    try:
                        s.send([SERVICE_HELLO, P.PROTOCOL_VERSION, s.name, s.names, s.credential])
                        s.send([TELL, None, "echo", 1])
                        await s.nothing(0.3)
                        await until(lambda before=before: counters["curve_denied"] > before)
                    finally:
                        await s.close()
                assert counters["curve_denied"] == counters["handshakes_failed"] >= 3
                assert set(a.bridge.stats()["services"]) == {"svc"} and a.bridge.stats()["curve"]
                assert a.stats()["actors"]["echo"]["messages"] == 0  # none of their tells got in
            finally:
                await allowed.close()

    run(main)


def test_a_session_is_bound_to_its_connection_not_to_a_routing_id(run):
    """The attack: a service with a fixed routing id leaves without BYE; another socket takes the
    id and asks, without any credential. Now ids are the node's to assign, and a closed connection
    ends its session at once: an id whose session ended is a stranger."""
    config = bridge_config()

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            fixed = Service(a, name="fixed", names=["f"], routing_id=b"svc-1")
            try:
                err = await fixed.hello()
                assert err[:3] == [ERROR, None, "protocol"] and "own ZeroMQ routing id" in err[3]
                assert a.bridge.counters["own_ids_refused"] == 1 and "fixed" not in a.bridge.stats()["services"]
            finally:
                await fixed.close()

            svc = Service(a, names=["calc"]).serve()
            assert (await svc.hello())[0] == WELCOME
            identity = bytes.fromhex(a.bridge.stats()["services"]["svc"]["routing_id"])
            assert identity[0] == 0 and len(identity) == 5  # assigned by the node
            t0 = time.monotonic()
            await svc.close()  # gone without BYE
            await until(lambda: a.bridge.counters["disconnects"] == 1, timeout=2.0)
            assert time.monotonic() - t0 < 1.0 < a.bridge.evict_after  # at once, not after the eviction window
            assert not a.bridge.stats()["services"]["svc"]["live"]
            with pytest.raises(NodeUnavailable):
                await nodes["B"].lookup("calc@A").ask(1, timeout=2.0)
            # the intruder claims exactly the id the node had assigned (as if it had guessed it)
            intruder = Service(a, name="svc", names=[], credential=None, routing_id=identity)
            try:
                intruder.send([ASK, None, "echo", "steal", "svc", 7])
                err = await intruder.recv()  # an ERROR answering an ASK carries its corr
                assert err[:3] == [ERROR, 7, "protocol"] and "SERVICE_HELLO first" in err[3]
                assert (await intruder.hello())[:3] == [ERROR, None, "auth"]  # nor say hello without the credential
            finally:
                await intruder.close()
            assert a.stats()["actors"]["echo"]["messages"] == 0  # the stolen ask was never performed

    run(main)


def test_keys_command_prints_a_usable_key_pair(tmp_path):
    result = CliRunner().invoke(cli_main, ["keys", "--secret-file", str(tmp_path / "k.key")])
    assert result.exit_code == 0, result.output
    public = [line.split('"')[1] for line in result.output.splitlines() if line.startswith("public_key")][0]
    secret = (tmp_path / "k.key").read_text().strip()
    assert zmq.curve_public(secret.encode()).decode() == public
    assert (tmp_path / "k.key").stat().st_mode & 0o077 == 0  # private
    printed = CliRunner().invoke(cli_main, ["keys"])
    pub, sec = (line.split('"')[1] for line in printed.output.splitlines() if "_key = " in line)
    assert zmq.curve_public(sec.encode()).decode() == pub


def test_tells_both_ways(run):
    """TELLS from a service: each body in order, locally or across the herd; malformed ones are
    refused like a bad TELL. Tells from the herd pending in one loop turn reach the service as
    TELLS (under max_frame_size); a lone one as TELL."""
    config = bridge_config(["A", "B", "C"], links=[("A", "B"), ("B", "C")], extra="max_frame_size = 2048\n")

    async def main():
        async with Herd(config) as nodes:
            a, c = nodes["A"], nodes["C"]
            near, far = a.spawn(Recorder, name="rec"), c.spawn(Recorder, name="rec")
            svc = Service(a, names=["calc"])
            try:
                assert (await svc.hello())[0] == WELCOME
                svc.send([TELLS, None, "rec", [0, "one", [2], {"k": 3}]])
                svc.send([TELL, None, "rec", 4])
                svc.send([TELLS, "C", "rec", list(range(50))])
                svc.send([TELLS, None, "rec@C", [50, 51]])
                svc.send([TELLS, None, "ghost", [1, 2]])  # no such actor: dropped, counted
                svc.send([TELLS, "Z", "rec", [3, 4, 5]])  # no such node: dead letters on A too
                await until(lambda: a.bridge.stats()["counters"]["undelivered_tells"] == 5)
                assert await near.ask("get") == [0, "one", [2], {"k": 3}, 4]
                await until(lambda: c.stats()["actors"]["rec"]["messages"] == 52)
                assert await far.ask("get") == list(range(52))
                counters = a.bridge.stats()["counters"]
                assert counters["tells_from_services"] == 62 and counters["undelivered_tells"] == 5
                assert a.dead_letters.stats()["by_target"] == {"ghost@A": 2, "rec@Z": 3}
                assert a.dead_letters.stats()["by_reason"] == {"unknown_actor": 2, "no_route": 3}
                for bad in ([TELLS, None, "rec", "not a list"], [TELLS, None, "rec"], [TELLS, None, 42, [1]]):
                    svc.send(bad)
                    err = await svc.recv()
                    assert err[:3] == [ERROR, None, "protocol"], (bad, err)
                assert a.bridge.stats()["counters"]["malformed"] == 3
                assert await near.ask("get") == [0, "one", [2], {"k": 3}, 4]  # nothing of them delivered

                svc.serve()
                proxy = c.lookup("calc@A")
                proxy.tell("lone")
                await until(lambda: svc.seen == [("calc", "lone")])
                for i in range(300):  # ~3 KB of bodies: more than one TELLS under 2048 bytes
                    proxy.tell(f"t{i:05}")
                assert (await proxy.ask("x"))["echo"] == "x"  # behind the tells (FIFO)
                assert svc.seen[1:] == [("calc", f"t{i:05}") for i in range(300)]
                counters = a.bridge.stats()["counters"]
                assert counters["tells_to_services"] == 301
                assert 2 < counters["tells_batches_to_services"] < 100  # coalesced, and split by size
                assert counters["dropped_tells"] == 0
            finally:
                await svc.close()

    run(main)


def test_a_tell_flood_from_a_service_holds_back_the_socket_not_memory(run):
    """While a local actor lags behind the tells a service floods it with, the bridge stops
    reading (ZeroMQ buffers push back on the service); nothing is dropped, the service is not
    judged silent meanwhile, and reading resumes once the backlog is worked off."""
    config = bridge_config()

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            a.spawn(Slow, name="slow", mailbox_size=None)  # unbounded: only backpressure bounds it
            svc = Service(a)
            try:
                assert (await svc.hello())[0] == WELCOME
                for start in range(0, 20_000, 1000):
                    svc.send([TELLS, None, "slow", list(range(start, start + 1000))])
                peak = 0
                while a.bridge.stats()["counters"]["tells_from_services"] < 20_000:
                    peak = max(peak, len(a.mailbox("slow")))
                    await asyncio.sleep(0.005)
                assert await a.lookup("slow").ask("count", timeout=30) == 20_000
                counters = a.bridge.stats()["counters"]
                assert counters["throttled"] >= 1 and counters["undelivered_tells"] == 0
                assert peak < BACKLOG_HIGH + 5 * 1000  # the mark, plus the rest of one drain's budget
                assert counters["evictions"] == 0
            finally:
                await svc.close()

    run(main)


def test_errors_answering_asks_carry_their_corr_and_an_oversized_reply_fails_its_ask(run):
    config = bridge_config(extra="max_frame_size = 4096\n")

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["A"], nodes["B"]
            svc = Service(a, name="svc", names=["calc"])
            try:
                assert (await svc.hello())[0] == WELCOME
                # Every ERROR answering an ASK carries that ASK's corr (never nil).
                for env in (
                    [ASK, None, 7, "body", "svc", 11],  # a bad target
                    [ASK, None, "echo", "y" * 5000, "svc", 12],  # over max_frame_size
                    [ASK, None, "echo", msgpack.ExtType(5, b""), "svc", 13],  # an ext type
                ):
                    svc.send(env)
                    err = await svc.recv()
                    assert err[0] == ERROR and err[1] == env[5], err
                # Fields a later version appends are ignored.
                svc.send([ASK, None, "echo", "hi", "svc", 14, "later"])
                assert (await svc.recv())[:5] == [REPLY, "svc", 14, True, ["A", "hi"]]
                svc.send([HEARTBEAT, 1, 1700000000, "later"][:3])  # an int where a float is specified
                svc.send([HEARTBEAT, 2, 1700000000.5, 1700000000.25, 0.001, "later"])
                svc.send([REGISTER, ["more"], "later"])
                svc.send([ASK, None, "echo", "after", "svc", 15])  # no ERROR came before its REPLY
                assert (await svc.recv())[:3] == [REPLY, "svc", 15]
                assert a.bridge.stats()["services"]["svc"]["names"] == ["calc", "more"]

                # A service's REPLY over max_frame_size: the asker learns it at once (FrameTooLarge),
                # counted; the service gets ERROR frame (corr nil: it answers no ask of the service's).
                asked = asyncio.ensure_future(b.lookup("calc@A").ask("big", timeout=5.0))
                env = await svc.recv()
                assert env[0] == ASK
                t0 = time.monotonic()
                svc.send([REPLY, env[4], env[5], True, "z" * 5000])
                with pytest.raises(RemoteError) as info:  # typed across the herd as RemoteError
                    await asked
                assert info.value.type_name == "FrameTooLarge" and time.monotonic() - t0 < 2.0
                err = await svc.recv()
                assert err[:3] == [ERROR, None, "frame"] and f"corr {env[5]}" in err[3]
                assert a.bridge.counters["refused_replies"] == 1
                # on the bridge's own node the asker gets FrameTooLarge itself
                asked = asyncio.ensure_future(a.lookup("calc").ask("big", timeout=5.0))
                env = await svc.recv()
                svc.send([REPLY, env[4], env[5], True, "z" * 5000])
                with pytest.raises(FrameTooLarge):
                    await asked
                await svc.recv()  # its ERROR
                assert a.bridge.counters["refused_replies"] == 2
                assert (await svc.hello())[0] == WELCOME  # still in session
            finally:
                await svc.close()

    run(main)


def test_metrics_show_the_bridges_services_tells_asks_and_evictions(run):
    """/metrics of a bridged node (read through its collector, as a scrape does): services live and
    evicted, and the tells and asks from services moved by exactly what the service sent."""
    from prometheus_client import generate_latest

    from _herdtest import metric_samples
    from herdrt.observe import node_registry

    config = bridge_config(bridge_table="evict_after = 0.4")

    async def main():
        async with Herd(config) as nodes:
            a = nodes["A"]
            registry = node_registry(a)

            def samples():
                return metric_samples(generate_latest(registry).decode())

            def event(sampled, name):
                return sampled.get(("herdrt_bridge_events_total", (("event", name),)), 0)

            svc = Service(a, names=["calc"])
            try:
                assert (await svc.hello())[0] == WELCOME
                before = samples()
                assert before[("herdrt_bridge_services", (("state", "live"),))] == 1
                svc.send([TELLS, None, "echo", list(range(7))])
                svc.send([TELL, None, "echo", 7])
                svc.send([ASK, None, "echo", "x", "svc", 1])
                assert (await svc.recv())[0] == REPLY
                after = samples()
                assert event(after, "tells_from_services") - event(before, "tells_from_services") == 8
                assert event(after, "asks_from_services") - event(before, "asks_from_services") == 1
                await until(lambda: not a.bridge.stats()["services"]["svc"]["live"], timeout=5.0)  # silent: evicted
                evicted = samples()
                assert evicted[("herdrt_bridge_services", (("state", "evicted"),))] == 1
                assert event(evicted, "evictions") >= 1
            finally:
                await svc.close()

    run(main)
