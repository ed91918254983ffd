"""Herd nodes in one process, over real TCP links on 127.0.0.1 (uvloop and stdlib asyncio).

The same behaviour across real OS processes (SIGKILL, restart, the CLI) is in test_herd_processes.py.
"""

import asyncio
import time

import pytest

from _herdtest import SECRET, Herd, Recorder, Slow, free_ports, herd_config, until
from _rawlink import raw_handshake
from herd_app import Counter
from herdrt import Actor
from herdrt.config import loads_config
from herdrt.errors import (
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    FrameTooLarge,
    MailboxFull,
    NodeUnavailable,
    RemoteError,
)
from herdrt.herd import ADMIN_ACTOR, HerdNode, ring_shares
from herdrt.herd import protocol as P
from herdrt.herd.backpressure import BACKLOG_HIGH
from herdrt.herd.client import HerdClient
from herdrt.herd.link import TELLS_MAX, LinkRefused


def test_remote_tell_and_ask_both_ways_and_two_hops(run):
    # a - b - c: a and c are not neighbors, so a <-> c goes through b
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        async with Herd(config) as nodes:
            a, c = nodes["a"], nodes["c"]
            assert await a.lookup("echo@b").ask("hi") == ["b", "hi"]
            assert await a.lookup("echo@c").ask({"x": [1, 2.5, b"\x00"]}) == ["c", {"x": [1, 2.5, b"\x00"]}]
            assert await c.lookup("echo@a").ask("back") == ["a", "back"]
            assert nodes["b"].counters["forwarded"] >= 2  # both asks and replies went through b
            rec = c.spawn(Recorder, name="rec")
            for i in range(100):
                a.lookup("rec@c").tell(i)
            assert await a.lookup("rec@c").ask("get") == list(range(100))  # FIFO across two hops
            assert rec.path == "rec@c"

    run(main)


def test_errors_cross_the_herd_typed(run):
    config = herd_config(["a", "b"])

    async def main():
        async with Herd(config) as nodes:
            a = nodes["a"]
            with pytest.raises(ActorNotFound, match="no actor 'ghost' on node b"):
                await a.lookup("ghost@b").ask(1)
            with pytest.raises(RemoteError) as info:
                await a.lookup("echo@b").ask("boom")
            assert info.value.type_name == "KeyError"
            with pytest.raises(AskTimeout):
                await a.lookup("echo@b").ask({"sleep": 1.0}, timeout=0.1)
            with pytest.raises(NodeUnavailable, match="not a node of this herd"):
                a.lookup("echo@zed").tell(1)
            with pytest.raises(TypeError):  # strict mode: what would not survive msgpack fails at the sender
                a.lookup("echo@b").tell({1, 2})
            assert await a.lookup("echo@b").ask("still fine") == ["b", "still fine"]
            assert nodes["b"].counters["unknown_actor"] == 1

    run(main)


def test_batched_tells_are_delivered_and_counted_per_message(run):
    # Tells queued in one loop turn travel as one TELLS envelope; whatever the receiver cannot
    # take is still counted message by message.
    config = herd_config(["a", "b"])

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["a"], nodes["b"]
            b.spawn(Recorder, name="rec")
            b.spawn(Recorder, name="tiny", mailbox_size=10, overflow="reject")
            rec, tiny = a.lookup("rec@b"), a.lookup("tiny@b")
            for i in range(50):
                rec.tell(i)
                if i < 8:
                    tiny.tell(i)  # interleaved: batches of one, in order
            for i in range(5):
                a.lookup("ghost@b").tell(i)
            for i in range(50, 80):
                rec.tell(i)
            assert await rec.ask("get") == list(range(80))
            assert await tiny.ask("get") == list(range(8))
            for i in range(30):
                tiny.tell(100 + i)  # one TELLS of 30 into a mailbox of 10: 10 in, 20 dead letters
            dead = []
            b.on_dead_letter(dead.append)
            await until(lambda: b.dead_letters.total == 25)
            assert (await tiny.ask("get"))[8:] == list(range(100, 110))
            assert b.counters["unknown_actor"] == 5
            assert b.dead_letters.stats() == {
                "total": 25,
                "by_reason": {"unknown_actor": 5, "mailbox_full": 20},
                "by_target": {"ghost@b": 5, "tiny@b": 20},
                "reported": {"total": 0, "by_reason": {}, "by_node": {}},
            }
            # ...and reported back to a, whose tells they were (within a tick or so)
            await until(lambda: a.dead_letters.reported_total == 25)
            assert a.dead_letters.stats()["reported"] == {
                "total": 25,
                "by_reason": {"unknown_actor": 5, "mailbox_full": 20},
                "by_node": {"b": 25},
            }
            assert a.dead_letters.total == 0  # a lost none itself
            assert [(d.target, d.reason, d.message) for d in dead] == [
                ("tiny@b", "mailbox_full", 100 + i) for i in range(10, 30)
            ]
            assert b.counters["tells_in"] == 80 + 8 + 5 + 30

    run(main)


def test_a_tell_flood_holds_back_the_link_not_memory(run):
    config = herd_config(["a", "b"])
    n = 20_000

    async def main():
        async with Herd(config) as nodes:
            a, b = nodes["a"], nodes["b"]
            b.spawn(Slow, name="slow", mailbox_size=None)  # unbounded: only backpressure bounds it
            slow = a.lookup("slow@b")
            link = a.links.link("b")
            peak = 0
            for start in range(0, n, 1000):
                for i in range(start, start + 1000):
                    slow.tell(i)
                await link.drain()
                await asyncio.sleep(0)
                peak = max(peak, len(b.mailbox("slow")))
            assert await slow.ask("count", timeout=30) == n  # every tell arrived, none dropped
            assert b.counters["throttled"] >= 1  # b stopped reading the link while slow lagged
            assert peak < BACKLOG_HIGH + 4 * TELLS_MAX  # the mark, plus what the last read held
            assert b.counters["undeliverable"] == 0

    run(main)


class Later(Actor):
    """Defers every ask and answers it 20 ms later from a timer: the value, or a failure."""

    def receive(self, message, ctx):
        deferred = ctx.defer()
        loop = asyncio.get_running_loop()
        if message == "full":
            loop.call_later(0.02, deferred.fail, MailboxFull("try later"))
        elif message == "bad":
            loop.call_later(0.02, deferred.fail, ValueError("no"))
        else:
            loop.call_later(0.02, deferred.reply, [message, "later"])


class Inflate(Actor):
    """Answers an ask with ``n`` bytes."""

    def receive(self, message, ctx):
        return b"x" * message


def test_a_message_too_big_for_the_peer_fails_the_ask_at_once_and_keeps_the_link(run):
    ports = free_ports(3)
    text = (
        f'[herd]\nsecret = "{SECRET}"\nheartbeat_interval = 0.1\nmax_frame_size = 4096\n'
        'links = [["a", "b"], ["b", "c"]]\n'
    )
    text += "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip("abc", ports, strict=False))
    config = loads_config(text)

    async def main():
        async with Herd(config) as nodes:
            a = nodes["a"]
            for node in nodes.values():
                node.spawn(Inflate, name="inflate")
            started = time.monotonic()
            with pytest.raises(FrameTooLarge, match="over the frame limit of 4096"):
                await a.lookup("echo@b").ask("y" * 5000)  # the ask itself cannot travel
            with pytest.raises(RemoteError) as info:
                await a.lookup("inflate@b").ask(5000)  # the reply cannot travel back
            assert info.value.type_name == "FrameTooLarge"
            with pytest.raises(RemoteError) as info:
                await a.lookup("inflate@c").ask(5000)  # nor over two hops
            assert info.value.type_name == "FrameTooLarge"
            assert time.monotonic() - started < 2.0  # at once, not after the 5 s ask timeout
            assert await a.lookup("inflate@c").ask(3000) == b"x" * 3000  # the links stayed up
            assert a.links.link("b").errors == {"oversize": 1}

    run(main)


def test_deferred_replies_cross_the_herd(run):
    config = herd_config(["a", "b"])

    async def main():
        async with Herd(config) as nodes:
            nodes["b"].spawn(Later, name="later")
            later = nodes["a"].lookup("later@b")
            answers = await asyncio.gather(*(later.ask(i) for i in range(5)))  # all in flight at once
            assert answers == [[i, "later"] for i in range(5)]
            with pytest.raises(MailboxFull, match="try later"):  # herdrt's errors keep their type
                await later.ask("full")
            with pytest.raises(RemoteError) as info:
                await later.ask("bad")
            assert (info.value.type_name, info.value.message) == ("ValueError", "no")

    run(main)


def test_node_leaving_fails_asks_at_once_and_tells_are_counted(run):
    # A graceful shutdown answers what it was handling (ActorStopped); a crash (SIGKILL) is in
    # test_herd_processes.py, where the asker gets NodeUnavailable.
    config = herd_config(["a", "b", "c"], links=[("a", "b"), ("b", "c")])

    async def main():
        async with Herd(config) as nodes:
            a = nodes["a"]
            slow = asyncio.ensure_future(a.lookup("echo@c").ask({"sleep": 5}, timeout=10))
            await until(lambda: nodes["c"].stats()["actors"]["echo"]["messages"] == 1)  # c is handling it
            started = time.monotonic()
            await nodes.pop("c").shutdown()
            with pytest.raises(ActorStopped, match="echo@c"):
                await slow  # answered as c shut down, not after the 10 s timeout
            assert time.monotonic() - started < 5.0  # far below the 10 s the ask would wait
            await until(lambda: a.membership.live() == {"a", "b"})
            with pytest.raises(NodeUnavailable, match="unreachable"):
                await a.lookup("echo@c").ask(1)
            before = a.counters["undeliverable"]
            with pytest.raises(NodeUnavailable):
                a.lookup("echo@c").tell(1)
            assert a.counters["undeliverable"] == before + 1
            assert await a.lookup("echo@b").ask(1) == ["b", 1]

    run(main)


def test_broadcast_reaches_every_node_exactly_once_around_cycles(run):
    # a ring with a chord: many paths, yet one delivery per node
    names = ["a", "b", "c", "d", "e"]
    links = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a"), ("a", "c")]
    config = herd_config(names, links=links)

    async def main():
        async with Herd(config) as nodes:
            got = {n: [] for n in names}
            for n in names:
                nodes[n].subscribe("news", got[n].append)
            rec = nodes["d"].spawn(Recorder, name="rec")
            nodes["d"].subscribe("news", rec)
            nodes["a"].broadcast("news", {"i": 1})
            nodes["c"].broadcast("news", {"i": 2})
            await until(lambda: all(len(v) == 2 for v in got.values()))
            await asyncio.sleep(0.1)  # any duplicate would arrive by now
            assert all(sorted(m["i"] for m in v) == [1, 2] for v in got.values()), got
            assert sorted(m["i"] for m in await rec.ask("get")) == [1, 2]
            # with a node gone, the flood goes around it
            await nodes.pop("b").shutdown()
            await until(lambda: nodes["a"].membership.live() == {"a", "c", "d", "e"})
            nodes["a"].broadcast("news", {"i": 3})
            await until(lambda: all(len(got[n]) == 3 for n in nodes))
            assert got["b"] == [{"i": 1}, {"i": 2}] or sorted(m["i"] for m in got["b"]) == [1, 2]

    run(main)


def test_keyed_actors_are_placed_by_the_ring_and_handed_off(run):
    config = herd_config(["a", "b", "c"])

    async def main():
        herd = Herd(config)
        async with herd as nodes:
            keys = [f"user-{i}" for i in range(30)]
            owners = {k: nodes["a"].owner("counter", k) for k in keys}
            assert all(nodes[n].owner("counter", k) == owners[k] for n in nodes for k in keys)
            assert set(owners.values()) == {"a", "b", "c"}  # the ring spreads them
            for i, k in enumerate(keys):  # ask each key from a different node
                via = nodes["abc"[i % 3]]
                assert await via.ref_for("counter", k).ask("inc") == [owners[k], 1]
                assert await via.ref_for("counter", k).ask("inc") == [owners[k], 2]
            assert sum(n.herd_status()["keyed_actors"] for n in nodes.values()) == len(keys)  # one copy each
            # c leaves: its keys move; their state travels with them (on_handoff -> on_takeover)
            moved = [k for k in keys if owners[k] == "c"]
            await nodes.pop("c").shutdown()
            await until(lambda: nodes["a"].membership.live() == {"a", "b"} == nodes["b"].membership.live())
            for k in keys:
                owner, n = await nodes["a"].ref_for("counter", k).ask("inc")
                assert owner == nodes["a"].owner("counter", k) != "c"
                assert n == 3 or k in moved  # keys that stayed kept their actor
            shares = ring_shares(nodes["a"].placement.ring)
            assert set(shares) == {"a", "b"} and abs(sum(shares.values()) - 1) < 1e-9

    run(main)


def test_handoff_state_travels_when_a_node_joins(run):
    config = herd_config(["a", "b"])

    async def main():
        herd = Herd(config, names=["a"])
        async with herd as nodes:
            a = nodes["a"]
            keys = [f"k{i}" for i in range(20)]
            for k in keys:
                for _ in range(5):
                    await a.ref_for("counter", k).ask("inc")
            b = HerdNode(config, "b", strict_messages=True)
            await b.start()
            b.register_kind("counter", Counter)
            nodes["b"] = b
            await herd.converged({"a", "b"})
            moved = [k for k in keys if a.owner("counter", k) == "b"]
            assert moved, "some keys must move to the new node"
            await until(lambda: a.herd_status()["keyed_actors"] == len(keys) - len(moved))
            for k in keys:  # every counter continues at 6, wherever it lives now
                assert await a.ref_for("counter", k).ask("inc") == [a.owner("counter", k), 6]
            assert a.counters["handoffs_out"] == len(moved) == b.counters["handoffs_in"]

    run(main)


def test_clients_authenticate_and_are_proxied(run):
    config = herd_config(["a", "b"], links=[("a", "b")])
    wrong = loads_config(
        f'[herd]\nsecret = "not-the-secret"\n[[nodes]]\nname = "a"\nport = {config.node("a").port}\n'
        f'[[nodes]]\nname = "b"\nport = {config.node("b").port}\n'
    )

    async def main():
        async with Herd(config) as nodes:
            async with HerdClient(config, "a") as client:
                assert await client.ask("echo@b", [1, "x"]) == ["b", [1, "x"]]
                assert await client.ask("echo", "local") == ["a", "local"]
                assert (await client.ask(ADMIN_ACTOR, "status"))["live"] == ["a", "b"]
                assert (await client.ask("u1", "inc", kind="counter"))[1] == 1
                with pytest.raises(ActorNotFound):
                    await client.ask("ghost@b", 1)
                client.tell("echo@b", "fire and forget")
            with pytest.raises(LinkRefused) as info:
                await HerdClient(wrong, "a").connect()
            assert info.value.code == "auth" and "secret" in info.value.reason
            assert nodes["a"].herd_status()["clients"] == 0  # the refused client never became one

    run(main)


def test_a_forged_membership_report_is_refuted_and_the_herd_heals(run):
    # a - b - c, and m: a neighbor of b in the herd file that never runs. The test authenticates as
    # m (it has the secret: what a compromised or buggy member could do) and floods a report that
    # c is alive but has no links, with an incarnation far ahead of c's own.
    config = herd_config(["a", "b", "c", "m"], links=[("a", "b"), ("b", "c"), ("b", "m")])

    async def main():
        async with Herd(config, ["a", "b", "c"]) as nodes:
            a, b, c = nodes["a"], nodes["b"], nodes["c"]
            raw = await raw_handshake(b.address, "m", SECRET.encode())
            await until(lambda: "m" in b.links.up)
            forged_incarnation = time.time_ns() + 30 * 10**9
            raw.send([[P.MEMBERSHIP, "c", forged_incarnation, 1, []]])
            # c hears of it (reports are flooded to their origin too) and outgrows it
            await until(lambda: c.counters["refutations"] == 1, timeout=3.0)
            assert c.incarnation > forged_incarnation
            await until(lambda: a.membership.live() == b.membership.live() == {"a", "b", "c"}, timeout=3.0)
            assert await a.lookup("echo@c").ask("healed", timeout=2.0) == ["c", "healed"]
            # reports no real node sends change nothing, and are counted
            raw.send(
                [
                    [P.MEMBERSHIP, "c", time.time_ns() + 3600 * 10**9, 99, []],  # an hour ahead
                    [P.MEMBERSHIP, "c", c.incarnation, 99, ["a"]],  # a is no neighbor of c
                    [P.MEMBERSHIP, "zed", 1, 1, []],
                ]
            )  # no such node
            await until(lambda: b.counters["reports_refused"] == 3)
            assert c.counters["refutations"] == 1 and a.membership.live() == {"a", "b", "c"}
            assert await a.lookup("echo@c").ask("still", timeout=2.0) == ["c", "still"]
            raw.close()

    run(main)


def test_a_client_may_send_tells_but_no_node_kinds(run):
    """A client (authenticated, but no member) gets its TELLS performed body by body; a kind only
    nodes send (SEND, CREDIT, DEAD_LETTERS, MEMBERSHIP...) is refused with ERROR protocol, and
    the link closed: a client cannot spend another node's credit or forge reports."""
    config = herd_config(["a", "b"])

    async def main():
        async with Herd(config) as nodes:
            b = nodes["b"]
            b.spawn(Recorder, name="rec")
            raw = await raw_handshake(b.address, "~raw", SECRET.encode())
            raw.send([[P.TELLS, "b", "rec", [1, "two", [3]], "~raw"]])
            await until(lambda: b.stats()["actors"]["rec"]["messages"] == 3)
            assert await nodes["a"].lookup("rec@b").ask("get") == [1, "two", [3]]
            for env in (
                [P.SEND, "b", "rec", [4], "~raw", 7, 0],
                [P.CREDIT, "a", 7, 0, 1_000_000, None],
                [P.DEAD_LETTERS, "a", "b", [["rec@b", "mailbox_full", 5]]],
            ):
                raw = await raw_handshake(b.address, "~raw", SECRET.encode())
                raw.send([env])
                (error,) = await raw.read(1)
                assert error[:3] == [P.ERROR, None, P.E_PROTOCOL], error
                assert "clients may send TELL, TELLS and ASK only" in error[3]
                assert await raw.until_eof()
            assert await nodes["a"].lookup("rec@b").ask("get") == [1, "two", [3]]  # nothing else got in
            assert nodes["a"].dead_letters.reported_total == 0

    run(main)
