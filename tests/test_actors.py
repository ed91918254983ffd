"""The actor runtime: delivery, asks, backpressure, supervision, timers, shutdown, statistics.

Every scheduler test runs on uvloop and on stdlib asyncio (the ``run`` fixture), with strict
messages on, and checks that no task is left behind.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import msgpack
import psutil
import pytest
import uvloop

import herdrt
from _herdtest import Recorder, until
from herdrt import (
    Actor,
    ActorError,
    ActorNotFound,
    ActorStopped,
    AskDeadlock,
    AskTimeout,
    MailboxFull,
    Node,
    NodeUnavailable,
    RemoteError,
    Terminated,
)


def strict_node(name="t", **kw) -> Node:
    return Node(name, strict_messages=True, **kw)


class Echo(Actor):
    def receive(self, message, ctx):
        return message


# --- delivery and asks -----------------------------------------------------------------------------


def test_tell_is_fifo_and_ask_drains(run):
    async def main():
        async with strict_node() as node:
            ref = node.spawn(Recorder, name="rec", mailbox_size=None)
            for i in range(3000):
                ref.tell(i)
            assert await ref.ask("get") == list(range(3000))

    run(main)


def test_refs_and_lookup(run):
    async def main():
        async with strict_node("n1") as node:
            ref = node.spawn(Echo, name="echo")
            assert ref.path == "echo@n1" and str(ref) == "echo@n1"
            assert node.lookup("echo") == ref == node.lookup("echo@n1")
            assert hash(node.lookup("echo")) == hash(ref)
            with pytest.raises(ActorNotFound):
                node.lookup("nobody")
            with pytest.raises(ActorError):
                node.spawn(Echo, name="echo")
            auto = node.spawn(Echo)
            assert auto.name.startswith("echo-") and auto != ref
            remote = node.lookup("echo@elsewhere")
            assert remote.node_name == "elsewhere" and not remote.is_local
            with pytest.raises(NodeUnavailable):
                remote.tell("x")
            with pytest.raises(NodeUnavailable):
                await remote.ask("x")
            assert [r.name for r in node.actors()] == ["echo", auto.name]

    run(main)


def test_reply_by_return_value_or_ctx_reply(run):
    kinds = []

    class Replier(Actor):
        def receive(self, message, ctx):
            kinds.append(ctx.is_ask)
            if message == "explicit":
                ctx.reply("first")
                ctx.reply("ignored")
                return "also ignored"
            return message

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Replier)
            assert await ref.ask("explicit") == "first"
            assert await ref.ask("returned") == "returned"
            ref.tell("a tell")  # a return value with nobody asking goes nowhere
            assert await ref.ask(None) is None
            assert kinds[-4:] == [True, True, False, True]

    run(main)


def test_handler_exception_reaches_asker_as_remote_error(run):
    class Faulty(Actor):
        def receive(self, message, ctx):
            raise ValueError(f"bad {message}")

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Faulty, name="faulty")
            with pytest.raises(RemoteError) as info:
                await ref.ask("input")
            assert info.value.type_name == "ValueError"
            assert info.value.message == "bad input"

    run(main)


def test_async_handlers_await_other_actors_one_message_at_a_time(run):
    class Slow(Actor):
        def __init__(self, log):
            self.log = log

        async def receive(self, message, ctx):
            self.log.append(("in", message))
            await asyncio.sleep(0.001)  # slow work that really suspends the handler: under test
            self.log.append(("out", message))
            return message * 2

    class Proxy(Actor):
        def __init__(self, target):
            self.target = target

        async def receive(self, message, ctx):
            return await self.target.ask(message) + 1

    async def main():
        log = []
        async with strict_node() as node:
            slow = node.spawn(Slow, log)
            proxy = node.spawn(Proxy, slow)
            results = await asyncio.gather(*(proxy.ask(i) for i in range(5)))
            assert results == [2 * i + 1 for i in range(5)]
            # never two handlers of the same actor at once, and in order
            assert log == [e for i in range(5) for e in (("in", i), ("out", i))]
            assert node.stats()["actors"][slow.name]["messages"] == 5

    run(main)


def test_self_ask_fails_at_once(run):
    class Narcissus(Actor):
        async def receive(self, message, ctx):
            if message == "self":
                try:
                    await self.ref.ask("x")
                except AskDeadlock as exc:
                    return str(exc)
            return "plain"

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Narcissus, name="narcissus")
            text = await ref.ask("self", timeout=2.0)
            assert "asked itself" in text and "narcissus@t" in text

    run(main)


def test_ask_cycle_is_detected(run):
    class Peer(Actor):
        def __init__(self):
            self.other = None

        async def receive(self, message, ctx):
            if isinstance(message, dict):  # {"peer": name}
                self.other = self.node.lookup(message["peer"])
                return "ok"
            if message == "start":
                return await self.other.ask("bounce")
            try:
                return await self.other.ask("start")
            except AskDeadlock as exc:
                return f"refused: {exc}"

    async def main():
        async with strict_node() as node:
            a = node.spawn(Peer, name="a")
            b = node.spawn(Peer, name="b")
            await a.ask({"peer": "b"})
            await b.ask({"peer": "a"})
            text = await a.ask("start", timeout=2.0)
            assert text.startswith("refused") and "cycle" in text

    run(main)


def test_ask_timeouts_default_and_explicit(run):
    class Stuck(Actor):
        async def receive(self, message, ctx):
            await asyncio.Event().wait()

    async def main():
        async with strict_node(ask_timeout=0.05) as node:
            ref = node.spawn(Stuck, name="stuck")
            with pytest.raises(AskTimeout) as info:
                await ref.ask("first")  # the node's default timeout
            assert isinstance(info.value, TimeoutError)
            with pytest.raises(AskTimeout, match="stuck@t"):
                await ref.ask("second", timeout=0.02)  # queued behind the stuck one
            assert node.stats()["asks_pending"] == 0

    run(main)


def test_strict_mode_rejects_what_msgpack_would_change(run):
    class Setter(Actor):
        def receive(self, message, ctx):
            return {1, 2}  # a set cannot cross

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Echo)
            for bad in [(1, 2), {1: "int key"}, object(), [1, (2, 3)]]:
                with pytest.raises(TypeError, match="msgpack"):
                    ref.tell(bad)
            good = {"a": [1, 2.5, None, True, b"raw", "text"]}
            assert await ref.ask(good) == good
            with pytest.raises(RemoteError) as info:
                await node.spawn(Setter).ask("x")
            assert info.value.type_name == "TypeError"
        async with Node("lax") as node:  # strict mode off: passed by reference
            obj = object()
            assert await node.spawn(Echo).ask(obj) is obj

    run(main)


def test_deliver_is_the_inbound_seam_for_links(run):
    class Maybe(Actor):
        def receive(self, message, ctx):
            if message == "fail":
                raise KeyError("k")
            return {"got": message}

    async def main():
        outcomes = []
        async with strict_node(ask_timeout=0.05) as node:
            node.spawn(Maybe, name="m")
            node.spawn(Gate, name="gate")
            node.deliver("m", "a tell")
            node.deliver("m", "x", reply=lambda ok, v: outcomes.append((ok, v)))
            node.deliver("m", "fail", reply=lambda ok, v: outcomes.append((ok, v)))
            node.deliver("gate", "never", reply=lambda ok, v: outcomes.append((ok, v)))
            with pytest.raises(ActorNotFound):
                node.deliver("nobody", "x")
            await until(lambda: len(outcomes) == 3)  # the third: the gate's ask timing out
            assert outcomes[:2] == [(True, {"got": "x"}), (False, ("KeyError", "'k'"))]
            assert outcomes[2][0] is False and outcomes[2][1][0] == "AskTimeout"
            # every outcome can go back over a link as it is
            msgpack.packb(outcomes, use_bin_type=True)

    run(main)


class Gatherer(Actor):
    """Defers asks and answers the whole group once three are waiting; "bad" fails the group.
    Every ask it defers goes into ``deferred`` too, as ``(message, Deferred)``, for the test."""

    supervision = "resume"  # a failed handler keeps the instance (and the asks it holds)

    def __init__(self, deferred):
        self.waiting = []
        self.deferred = deferred

    def receive(self, message, ctx):
        if message == "tell-defer":
            ctx.defer()  # a tell has no ask to defer: ActorError (a handler failure)
        self.waiting.append((message, ctx.defer()))
        self.deferred.append(self.waiting[-1])
        if message == "bad":
            for _, d in self.waiting:
                d.fail(KeyError(message))
            self.waiting = []
        elif len(self.waiting) == 3:
            got = [m for m, _ in self.waiting]
            for _, d in self.waiting:
                d.reply(got)
            self.waiting = []
        return "not the reply"  # ignored: the ask was deferred


def test_deferred_asks_are_answered_later_and_the_actor_goes_on_meanwhile(run):
    async def main():
        async with strict_node(ask_timeout=0.2) as node:
            deferred = []
            g = node.spawn(Gatherer, deferred, name="g")
            first = [asyncio.ensure_future(g.ask(i)) for i in range(2)]
            await until(lambda: len(deferred) == 2)
            assert not any(f.done() for f in first)  # handled, deferred, nobody answered yet
            assert await g.ask(2) == [0, 1, 2]
            assert [await f for f in first] == [[0, 1, 2]] * 2
            with pytest.raises(RemoteError) as info:
                await g.ask("bad")
            assert info.value.type_name == "KeyError"
            g.tell("tell-defer")
            with pytest.raises(AskTimeout):
                await g.ask("alone")  # deferred, never answered: the asker's timeout applies
            message, stale = deferred[-1]
            assert message == "alone"  # handled, so the tell before it was too (FIFO)
            assert node.stats()["actors"]["g"]["failures"] == 1  # defer() on a tell raised ActorError
            assert not stale.waiting and "done" in repr(stale)
            stale.reply("late")  # answering after the timeout is ignored

    run(main)


def test_deliver_many_posts_in_order_and_counts_what_did_not_fit(run):
    async def main():
        async with strict_node() as node:
            rec = node.spawn(Recorder, name="rec", mailbox_size=5, overflow="reject")
            assert node.deliver_many("rec", [1, 2, 3]) == 0
            assert node.deliver_many("rec", [4, 5, 6, 7]) == 2  # 3 + 4 > 5: two found it full
            with pytest.raises(ActorNotFound):
                node.deliver_many("nobody", [1])
            await until(lambda: len(node.mailbox("rec")) == 0)  # drained: room for the ask
            assert await rec.ask("get") == [1, 2, 3, 4, 5]
            assert node.deliver_many("rec", list(range(5))) == 0  # drained: room again
            await node.stop(rec)
            with pytest.raises(ActorNotFound):  # gone from the node once stopped
                node.deliver_many("rec", [1])

    run(main)


def test_remote_refs_route_through_the_poster_and_resolve(run):
    """What a link layer does: carry (target, message, corr) out, bring the outcome back."""

    async def main():
        wire = []

        class LinkedNode(Node):
            def remote_poster(self, name, node_name):
                return lambda message, corr=0: wire.append((name, message, corr))

        async with LinkedNode("here", strict_messages=True) as node:
            far = node.lookup("svc@there")
            far.tell({"k": 1})
            ok_ask = far.ask("q1")
            bad_ask = far.ask("q2")
            assert [w[:2] for w in wire] == [("svc", {"k": 1}), ("svc", "q1"), ("svc", "q2")]
            assert wire[0][2] == 0 and wire[1][2] and wire[2][2]
            node.resolve(wire[1][2], True, [1, 2])
            node.resolve(wire[2][2], False, ["ValueError", "nope"])
            node.resolve(12345, True, None)  # unknown: ignored
            assert await ok_ask == [1, 2]
            with pytest.raises(RemoteError) as info:
                await bad_ask
            assert (info.value.type_name, info.value.message) == ("ValueError", "nope")

    run(main)


# --- backpressure ----------------------------------------------------------------------------------


def test_overflow_reject(run):
    async def main():
        async with strict_node() as node:
            ref = node.spawn(Recorder, mailbox_size=2, overflow="reject")
            ref.tell(1)
            ref.tell(2)
            with pytest.raises(MailboxFull):
                ref.tell(3)
            with pytest.raises(MailboxFull):
                await ref.send(4)
            with pytest.raises(MailboxFull):
                await ref.ask("get")
            await until(lambda: len(node.mailbox(ref.name)) == 0)  # drained: room for the ask
            assert await ref.ask("get") == [1, 2]
            s = node.stats()["actors"][ref.name]
            assert s["rejected"] == 3 and s["dropped"] == 0

    run(main)


def test_overflow_drop_newest_and_oldest(run):
    async def main():
        async with strict_node() as node:
            newest = node.spawn(Recorder, name="newest", mailbox_size=2, overflow="drop_newest")
            oldest = node.spawn(Recorder, name="oldest", mailbox_size=2, overflow="drop_oldest")
            for i in range(5):
                newest.tell(i)
            with pytest.raises(MailboxFull):
                await newest.ask("get")  # a dropped ask fails at once
            dropped_ask = oldest.ask("get")
            for i in range(5):
                oldest.tell(i)
            with pytest.raises(MailboxFull):
                await dropped_ask
            await until(lambda: len(node.mailbox("newest")) == len(node.mailbox("oldest")) == 0)  # both drained
            assert await newest.ask("get") == [0, 1]
            assert await oldest.ask("get") == [3, 4]
            actors = node.stats()["actors"]
            assert actors["newest"]["dropped"] == 4  # three tells and the ask
            assert actors["oldest"]["dropped"] == 4  # the ask and three tells

    run(main)


def test_overflow_block_send_waits_tell_raises(run):
    async def main():
        async with strict_node() as node:
            ref = node.spawn(Recorder, mailbox_size=2)  # block is the default
            ref.tell(0)
            ref.tell(1)
            with pytest.raises(MailboxFull):
                ref.tell(2)
            for i in range(2, 50):
                await ref.send(i)  # waits for room instead of failing
            assert await ref.ask("get") == list(range(50))
            assert node.stats()["actors"][ref.name]["rejected"] == 1

    run(main)


class Gate(Actor):
    """Its handler waits forever (until the actor is stopped)."""

    async def receive(self, message, ctx):
        await asyncio.Event().wait()


def test_blocked_sender_fails_when_actor_stops(run):
    async def main():
        async with strict_node() as node:
            ref = node.spawn(Gate, mailbox_size=1)
            ref.tell(0)  # handled, then stuck
            await until(lambda: len(node.mailbox(ref.name)) == 0)  # taken by the stuck handler
            ref.tell(1)  # fills the mailbox
            waiting = asyncio.ensure_future(ref.send(2))
            await asyncio.sleep(0.001)  # a chance to finish wrongly: it must still wait for room
            assert not waiting.done()
            await node.stop(ref)
            with pytest.raises(ActorStopped):
                await waiting
            with pytest.raises(ActorStopped):
                ref.tell(2)

    run(main)


# --- scheduling fairness ---------------------------------------------------------------------------


def test_flooded_actor_does_not_starve_others(run):
    async def main():
        log = []

        class Logger(Actor):
            def receive(self, message, ctx):
                log.append(message)

        async with strict_node(batch_budget=32) as node:
            flooded = node.spawn(Logger, name="flooded", mailbox_size=None)
            quiet = node.spawn(Logger, name="quiet")
            for _ in range(5000):
                flooded.tell("f")
            quiet.tell("q")
            await flooded.ask("done")
            # quiet waited for one batch of the flooded actor, not for its whole backlog
            assert log.index("q") == 32

    run(main)


# --- supervision -----------------------------------------------------------------------------------


class Fragile(Actor):
    """Counts messages; "boom" raises. Records lifecycle events in a shared list."""

    events: list = []

    def __init__(self, events):
        self.events = events
        self.count = 0
        events.append("init")

    def on_start(self):
        self.events.append("start")

    def on_restart(self, exc):
        self.events.append(f"restart:{type(exc).__name__}")

    def on_failure(self, exc):
        self.events.append("failure")

    def on_stop(self):
        self.events.append("stop")

    def receive(self, message, ctx):
        if message == "boom":
            raise RuntimeError("boom")
        self.count += 1
        return self.count


def test_restart_gives_fresh_state_and_drops_the_failing_message(run, caplog):
    async def main():
        events = []
        async with strict_node() as node:
            ref = node.spawn(Fragile, events, name="fragile")
            assert await ref.ask("x") == 1
            assert await ref.ask("x") == 2
            with caplog.at_level(logging.ERROR, logger="herdrt.runtime.actor"):
                ref.tell("boom")
                assert await ref.ask("x") == 1  # fresh instance
            assert any("fragile@t" in r.getMessage() for r in caplog.records)
            assert events == ["init", "start", "failure", "init", "restart:RuntimeError"]
            s = node.stats()["actors"]["fragile"]
            assert s["failures"] == 1 and s["restarts"] == 1
        assert events[-1] == "stop"

    run(main)


def test_retry_failed_message_on_restart(run):
    class FlakyOnce(Actor):
        retry_failed_message = True
        failed = []

        def receive(self, message, ctx):
            if not self.failed:
                self.failed.append(message)
                raise OSError("transient")
            return f"handled {message}"

    async def main():
        async with strict_node() as node:
            assert await node.spawn(FlakyOnce).ask("m") == "handled m"

    run(main)


def test_resume_keeps_state(run):
    class Resilient(Fragile):
        supervision = "resume"

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Resilient, [])
            assert await ref.ask("x") == 1
            with pytest.raises(RemoteError):
                await ref.ask("boom")
            assert await ref.ask("x") == 2

    run(main)


def test_on_failure_can_override_the_policy(run):
    class Picky(Fragile):
        def on_failure(self, exc):
            return "resume"

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Picky, [])
            await ref.ask("x")
            ref.tell("boom")
            assert await ref.ask("x") == 2

    run(main)


def test_stop_policy_tells_watchers(run):
    class Brittle(Fragile):
        supervision = "stop"

    class Watcher(Actor):
        """Resolves ``notified`` with what it is told (told twice: InvalidStateError, a failure)."""

        def __init__(self, notified):
            self.notified = notified

        def receive(self, message, ctx):
            self.notified.set_result(message)

    async def main():
        events = []
        async with strict_node() as node:
            ref = node.spawn(Brittle, events, name="brittle")
            notified = asyncio.get_running_loop().create_future()
            watcher = node.spawn(Watcher, notified, name="watcher")
            node.watch(ref, watcher)
            with pytest.raises(RemoteError):
                await ref.ask("boom")
            notice = await asyncio.wait_for(notified, 2.0)
            assert notice == Terminated(ref, "stopped after failure: RuntimeError: boom")
            assert events[-1] == "stop"
            with pytest.raises(ActorStopped):
                ref.tell("x")
            with pytest.raises(ActorNotFound):
                node.lookup("brittle")
            assert node.stats()["actors"]["watcher"]["failures"] == 0  # told once

    run(main)


def test_restart_limit_stops_the_actor(run):
    class Limited(Fragile):
        max_restarts = 2
        restart_window = 60.0

    async def main():
        notices = []
        async with strict_node() as node:
            ref = node.spawn(Limited, [])
            stopped = asyncio.get_running_loop().create_future()
            node.watch(ref, stopped.set_result)
            for _ in range(3):
                with pytest.raises(RemoteError):
                    await ref.ask("boom")
            notice = await asyncio.wait_for(stopped, 2.0)
            assert notice.ref == ref and notice.reason.startswith("too many restarts")
            with pytest.raises(ActorStopped):
                await ref.ask("x")
            totals = node.stats()["total"]
            assert totals["failures"] == 3 and totals["restarts"] == 2
            # watching an actor that is gone answers at once
            node.watch(ref, notices.append)
            assert notices[-1].reason == "not running"

    run(main)


def test_restarts_outside_the_window_do_not_count(run):
    class Forgiving(Fragile):
        max_restarts = 1
        restart_window = 0.0  # every earlier restart is already outside the window

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Forgiving, [])
            for _ in range(5):
                with pytest.raises(RemoteError):
                    await ref.ask("boom")
            assert await ref.ask("x") == 1
            assert node.stats()["actors"][ref.name]["restarts"] == 5

    run(main)


def test_async_on_start_runs_before_first_message(run):
    class Warm(Actor):
        async def on_start(self):
            await asyncio.sleep(0.001)  # a hook that really suspends: under test
            self.ready = True

        def receive(self, message, ctx):
            return self.ready

    async def main():
        async with strict_node() as node:
            ref = node.spawn(Warm)
            assert await ref.ask("ready?") is True

    run(main)


# --- stopping --------------------------------------------------------------------------------------


def test_shutdown_reverse_order_and_pending_asks_fail(run):
    order = []

    class Named(Actor):
        def __init__(self, tag):
            self.tag = tag

        async def receive(self, message, ctx):
            await asyncio.Event().wait()  # never answers

        async def on_stop(self):
            await asyncio.sleep(0)  # a hook that suspends: the order must hold anyway
            order.append(self.tag)

    async def main():
        node = strict_node()
        async with node:
            refs = [node.spawn(Named, i) for i in range(3)]
            stuck = refs[0].ask("handled, then stuck")
            queued = refs[0].ask("still queued")
            refs[2].tell("x")
            # refs[0] is inside its first handler with one ask queued; refs[2] inside its handler
            await until(lambda: len(node.mailbox(refs[0].name)) == 1 and len(node.mailbox(refs[2].name)) == 0)
        assert order == [2, 1, 0]
        for fut in (stuck, queued):
            with pytest.raises(ActorStopped):
                await fut
        assert node.stats()["actors"] == {}
        with pytest.raises(ActorError):
            node.spawn(Echo)

    run(main)


def test_self_stop_and_node_stop(run):
    class Quitter(Actor):
        def __init__(self, log):
            self.log = log

        def receive(self, message, ctx):
            if message == "quit":
                self.stop()
                return "bye"
            self.log.append(message)

        def on_stop(self):
            self.log.append("stopped")

    async def main():
        log = []
        async with strict_node() as node:
            ref = node.spawn(Quitter, log)
            ref.tell(1)
            bye = ref.ask("quit")
            ref.tell(2)  # queued behind "quit": never handled
            assert await bye == "bye"
            await node.stop(ref)  # idempotent, waits for on_stop
            assert log == [1, "stopped"]
            assert node.dead_letters.stats()["by_reason"] == {"actor_stopped": 1}
            other = node.spawn(Quitter, log)
            await node.stop(other)
            assert log[-1] == "stopped"
            await node.stop(other)

    run(main)


def test_timers_fire_and_are_cancelled_on_stop(run):
    class Ticker(Actor):
        """Resolves ``third`` with its 60 s timer at the third tick."""

        def __init__(self, third):
            self.third = third
            self.ticks = 0
            self.once = 0

        def on_start(self):
            self.every = self.schedule_every(0.002, "tick")
            self.schedule(0.001, "once")
            self.never = self.schedule(60.0, "never")

        def receive(self, message, ctx):
            if message == "tick":
                self.ticks += 1
                if self.ticks == 3:
                    self.every.cancel()
                    self.third.set_result(self.never)
            elif message == "once":
                self.once += 1
            elif message == "get":
                return [self.ticks, self.once, self.every.active, self.never.active]
            elif message == "never":
                raise AssertionError("cancelled timer fired")

    async def main():
        async with strict_node() as node:
            third = asyncio.get_running_loop().create_future()
            ref = node.spawn(Ticker, third)
            never = await asyncio.wait_for(third, 2.0)
            await asyncio.sleep(0.01)  # a cancelled timer would tick again in this time: under test
            assert await ref.ask("get") == [3, 1, False, True]
            await node.stop(ref)
            assert not never.active  # the 60 s timer went with the actor

    run(main)


def test_stop_cancels_a_suspended_handler(run):
    class Waiter(Actor):
        async def receive(self, message, ctx):
            await asyncio.sleep(30)  # a handler that waits until stopped

    async def main():
        # sleep(0): the stop lands after the handler suspended but before the task driving it
        # first ran (that ask once waited for its timeout); 0.001: while the handler waits.
        for pause in (0, 0.001):
            async with strict_node(ask_timeout=2.0) as node:
                ref = node.spawn(Waiter)
                fut = ref.ask("wait")
                await asyncio.sleep(pause)
                await node.stop(ref)
                with pytest.raises(ActorStopped):
                    await asyncio.wait_for(fut, 1.0)

    run(main)


# --- statistics ------------------------------------------------------------------------------------


def test_stats_are_plain_and_merge(run, core):
    async def main():
        async with strict_node("s") as node:
            a = node.spawn(Echo, name="a")
            b = node.spawn(Recorder, name="b", mailbox_size=3, overflow="drop_newest")
            for i in range(10):
                await a.ask(i)
            for i in range(5):
                b.tell(i)
            stats = node.stats()
            assert msgpack.unpackb(msgpack.packb(stats, use_bin_type=True), raw=False) == stats
            sa, sb = stats["actors"]["a"], stats["actors"]["b"]
            assert sa["messages"] == 10 and sa["handler_time"]["count"] >= 1
            assert sb["mailbox_depth"] == 3 and sb["dropped"] == 2
            total = stats["total"]
            assert total["dropped"] == 2 and total["mailbox_depth"] == 3 and total["actors"] == 2
            merged = core.OnlineStats.from_dict(sa["handler_time"]).merge(
                core.OnlineStats.from_dict(sb["handler_time"])
            )
            assert merged.count == total["handler_time"]["count"]
            await node.stop(a)
            after = node.stats()  # stopped actors still count in the node totals
            b_now = after["actors"]["b"]["messages"]
            assert after["total"]["messages"] == 10 + b_now and after["total"]["actors"] == 1

    run(main)


# --- run and memory --------------------------------------------------------------------------------


def test_run_helper_uses_uvloop_or_asyncio():
    async def main():
        async with Node() as node:
            return type(asyncio.get_running_loop()).__module__, await node.spawn(Echo).ask(7)

    module, value = herdrt.run(main)
    assert module.startswith("uvloop") and value == 7
    module, value = herdrt.run(main(), use_uvloop=False)
    assert module.startswith("asyncio") and value == 7


def test_many_actors_spawned_and_stopped_do_not_leak():
    proc = psutil.Process()

    async def round_trip(n):
        async with Node("mem") as node:
            refs = [node.spawn(Echo) for _ in range(n)]
            refs[-1].tell("x")
            assert await refs[0].ask("x") == "x"
            del refs
        assert node.stats()["actors"] == {}

    def rss_after(n):
        uvloop.run(round_trip(n))
        gc.collect()
        return proc.memory_info().rss

    before = rss_after(100_000)  # the first round warms up: allocator arenas, caches
    after = rss_after(100_000)
    # a leak of even 100 bytes per actor would show as ~10 MB per round
    assert after - before < 8 * 1024 * 1024, f"RSS grew by {(after - before) / 1e6:.1f} MB"
