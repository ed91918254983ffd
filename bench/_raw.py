"""Raw framing baselines shared by the link and herd benchmarks.

Length-prefixed msgpack frames (the core's ``encode_frames`` / ``FrameDecoder``, as the links use)
with no handshake, no heartbeats and no per-envelope dispatch: what a herd link is measured against.

In-process pieces: :class:`RawSender` (an asyncio Protocol: queued, one ``encode_frames`` + one
write per loop turn), :class:`RawEcho` (a Protocol answering every frame at once, inside the read
callback), :func:`stream_echo` / :class:`StreamClient` (the same over asyncio streams: a task
awaits each read, as a plain uvloop streams program does). Run as a script, this module is the
far side of a two-process baseline::

    python bench/_raw.py count|echo|stream-echo [uvloop|asyncio]

prints ``READY <port>`` once it listens on 127.0.0.1 and runs until stdin closes or SIGTERM.
``count`` counts data frames (kind 2) and, armed by a ``[ARM, n]`` frame, writes ``[ACK, count]``
once ``n`` more have arrived; ``echo`` (Protocol) and ``stream-echo`` (streams) send every frame
straight back.
"""

from __future__ import annotations

import asyncio
import sys

from _harness import stopped
from herdrt.core import FrameDecoder, encode_frame, encode_frames

#: Control frames of the ``count`` server (data frames are TELL-shaped, kind 2).
ARM = 3
ACK = 6
#: Bytes asked of a stream per read.
READ_SIZE = 1 << 16
MODES = ("count", "echo", "stream-echo")


class RawSender(asyncio.Protocol):
    """Batched writes: ``send`` queues; one ``encode_frames`` + one write per loop turn (as a link does).

    ``paused`` / ``resumed`` follow the transport's flow control; frames coming back are decoded and
    passed to ``on_message`` one by one."""

    def __init__(self):
        self.queue: list = []
        self.paused = False
        self.resumed: asyncio.Future | None = None
        self.on_message = None

    def connection_made(self, transport):
        self.transport = transport
        self.decoder = FrameDecoder()
        self.loop = asyncio.get_running_loop()

    def send(self, env):
        self.queue.append(env)
        if len(self.queue) == 1:
            self.loop.call_soon(self.flush)

    def flush(self):
        q, self.queue = self.queue, []
        self.transport.write(encode_frames(q))

    def pause_writing(self):
        self.paused = True
        self.resumed = self.loop.create_future()

    def resume_writing(self):
        self.paused = False
        self.resumed.set_result(None)

    async def wait_writable(self):
        """Return once the transport takes writes again."""
        if self.paused:
            await self.resumed

    def data_received(self, data):
        for env in self.decoder.feed(data):
            self.on_message(env)


class RawEcho(asyncio.Protocol):
    """Sends every frame back at once, as a REPLY (kind 6)."""

    def connection_made(self, transport):
        self.transport = transport
        self.decoder = FrameDecoder()

    def data_received(self, data):
        for env in self.decoder.feed(data):
            env[0] = ACK
            self.transport.write(encode_frame(env))


class RawCounter(asyncio.Protocol):
    """Counts data frames; after ``[ARM, n]``, answers ``[ACK, count]`` when ``n`` more have come."""

    def connection_made(self, transport):
        self.transport = transport
        self.decoder = FrameDecoder()
        self.count = 0
        self.goal = -1

    def data_received(self, data):
        count = self.count
        for env in self.decoder.feed(data):
            if env[0] == ARM:
                self.goal = count + env[1]
            else:
                count += 1
        self.count = count
        if 0 <= self.goal <= count:
            self.goal = -1
            self.transport.write(encode_frame([ACK, count]))


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of the streams echo: every frame read goes straight back, as a REPLY."""
    decoder = FrameDecoder()
    while data := await reader.read(READ_SIZE):
        for env in decoder.feed(data):
            env[0] = ACK
            writer.write(encode_frame(env))
    writer.close()


class StreamClient:
    """The asking end over asyncio streams: write one frame, await the frame that answers it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()

    @classmethod
    async def connect(cls, port: int) -> StreamClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def round_trip(self, env):
        """Send ``env``; the next frame that comes back (one request in flight)."""
        self.writer.write(encode_frame(env))
        read, feed = self.reader.read, self.decoder.feed
        while not (envs := feed(await read(READ_SIZE))):
            pass
        return envs[0]


async def _serve(mode: str) -> None:
    loop = asyncio.get_running_loop()
    if mode == "stream-echo":
        server = await asyncio.start_server(stream_echo, "127.0.0.1", 0)
    else:
        server = await loop.create_server(RawCounter if mode == "count" else RawEcho, "127.0.0.1", 0)
    stop = stopped()
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await stop
    server.close()


def main(argv: list[str]) -> None:
    mode = argv[1] if len(argv) > 1 else ""
    flavour = argv[2] if len(argv) > 2 else "uvloop"
    if mode not in MODES or flavour not in ("uvloop", "asyncio"):
        sys.exit("usage: python bench/_raw.py count|echo|stream-echo [uvloop|asyncio]")
    if flavour == "uvloop":
        import uvloop

        uvloop.run(_serve(mode))
    else:
        asyncio.run(_serve(mode))


if __name__ == "__main__":
    main(sys.argv)
