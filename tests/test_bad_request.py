"""BadRequest: a handler refusing a message is the sender's error, not the actor's failure.

On uvloop and stdlib asyncio (the ``run`` fixture), plain and async handlers, on one node and
across a herd."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

import herdrt
from _herdtest import Herd, herd_config
from herdrt import Actor, BadRequest, HerdError, Node, RemoteError

_names = itertools.count()  # a fresh actor name per run: refusals are logged rate-limited per actor


class Adder(Actor):
    """Adds the ints it is sent; refuses anything else; ``"total"`` asks the sum."""

    def __init__(self):
        self.total = 0

    def receive(self, message, ctx):
        if message == "total":
            return self.total
        if not isinstance(message, int):
            raise BadRequest(f"not an int: {message!r}; send an int")
        self.total += message
        return self.total


class AsyncAdder(Adder):
    """The same, refusing after it really waited (its handler continues in a task)."""

    async def receive(self, message, ctx):
        await asyncio.sleep(0.001)
        return Adder.receive(self, message, ctx)


def test_bad_request_is_public_and_a_value_error():
    assert "BadRequest" in herdrt.__all__ and "BadRequest" in herdrt.errors.__all__
    assert issubclass(BadRequest, HerdError) and issubclass(BadRequest, ValueError)


@pytest.mark.parametrize("cls", [Adder, AsyncAdder], ids=["plain", "async"])
def test_a_refusal_answers_the_asker_and_is_no_failure(run, cls, caplog):
    async def main():
        async with Node("t", strict_messages=True) as node:
            name = f"adder{next(_names)}"
            ref = node.spawn(cls, name=name)
            assert await ref.ask(2) == 2
            with caplog.at_level(logging.INFO, logger="herdrt.actor"):
                with pytest.raises(RemoteError) as info:
                    await ref.ask("three")
                ref.tell("four")  # a refused tell: nobody to answer; the actor goes on
                ref.tell(5)
                assert await ref.ask("total") == 7  # the same instance: no restart lost the sum
            assert (info.value.type_name, info.value.message) == ("BadRequest", "not an int: 'three'; send an int")
            stats = node.stats()["actors"][name]
            assert stats["failures"] == 0 and stats["restarts"] == 0
            refusals = [r for r in caplog.records if r.name == "herdrt.actor"]
            # logged at INFO, no traceback; the second refusal within 5 s is held back (rate-limited)
            assert [(r.levelno, r.exc_info) for r in refusals] == [(logging.INFO, None)]
            assert refusals[0].getMessage() == f"actor {name}@t refused 'three': not an int: 'three'; send an int"

    run(main)


def test_a_refusal_reaches_an_asker_on_another_node_as_remote_error(run):
    async def main():
        config = herd_config(["a", "b"])
        async with Herd(config) as nodes:
            with pytest.raises(RemoteError) as info:
                await nodes["a"].lookup("$node@b").ask("bogus")
            assert info.value.type_name == "BadRequest"
            assert info.value.message.startswith("unknown admin request 'bogus'; ask 'status', 'ping' or 'actors'")
            assert nodes["b"].stats()["actors"]["$node"]["failures"] == 0
            # and the admin actor's new requests, asked from another node
            owner = await nodes["a"].lookup("$node@b").ask({"op": "owner", "kind": "counter", "key": "k"})
            assert owner["owner"] == nodes["a"].owner("counter", "k") and owner["registered"] is True
            told = await nodes["a"].lookup("$node@a").ask({"op": "tell", "target": "echo@b", "message": 1})
            assert told == {"told": "echo@b", "node": "b"}
            report = await nodes["a"].lookup("$node@b").ask("actors")
            assert {row["name"] for row in report["actors"]} == {"$node", "echo"}

    run(main)
