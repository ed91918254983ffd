"""One herd node for the herd benchmark (bench/bench_herd.py runs it as a child process).

    python bench/_herd_node.py HERD.toml NODE uvloop|asyncio

Runs :class:`~herdrt.herd.HerdNode` ``NODE`` of the herd file with two actors:

* ``sink`` counts the messages it is told; an ask is answered with that count (so one ask after N
  tells, on the same link, returns once all N were handled);
* ``echo`` answers every ask with its message.

Prints ``READY <port>`` once it listens for links, then runs until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys

from _harness import stopped
from herdrt import Actor
from herdrt.config import load_config
from herdrt.herd import HerdNode


class Sink(Actor):
    """Counts tells; answers an ask with the count."""

    def __init__(self):
        self.count = 0

    def receive(self, message, ctx):
        if ctx.is_ask:
            return self.count
        self.count += 1
        return None


class Echo(Actor):
    """Answers with the message."""

    def receive(self, message, ctx):
        return message


async def serve(config_path: str, name: str) -> None:
    stop = stopped()
    async with HerdNode(load_config(config_path), name) as node:
        # Unbounded: a burst of remote tells lands in the mailbox in one read; a bounded mailbox
        # under the herd's default "reject" policy would drop part of it.
        node.spawn(Sink, name="sink", mailbox_size=None)
        node.spawn(Echo, name="echo", mailbox_size=None)
        print("READY", node.address[1], flush=True)
        await stop


def main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[3] not in ("uvloop", "asyncio"):
        sys.exit("usage: python bench/_herd_node.py HERD.toml NODE uvloop|asyncio")
    _, config_path, name, flavour = argv
    if flavour == "uvloop":
        import uvloop

        uvloop.run(serve(config_path, name))
    else:
        asyncio.run(serve(config_path, name))


if __name__ == "__main__":
    main(sys.argv)
