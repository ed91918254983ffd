"""A test application for herd node processes: `herdrt serve ... --app herd_app:setup`."""

import asyncio

from herdrt import Actor


class Echo(Actor):
    """Answers [its node, the message]; {"sleep": s} waits s seconds first; "boom" raises KeyError."""

    async def receive(self, message, ctx):
        if message == "boom":
            raise KeyError("boom")
        if isinstance(message, dict) and "sleep" in message:
            await asyncio.sleep(message["sleep"])
        return [self.node.name, message]


class Counter(Actor):
    """A keyed counter: each message counts one and answers [its node, the count]; its count
    moves with it when its key moves to another node."""

    def __init__(self):
        self.n = 0

    def receive(self, message, ctx):
        self.n += 1
        return [self.node.name, self.n]

    def on_handoff(self):
        return {"n": self.n}

    def on_takeover(self, state):
        self.n = state["n"]


class News(Actor):
    """Keeps every broadcast on "news" it receives; "get" returns them; {"say": x} broadcasts x."""

    def __init__(self):
        self.seen = []

    def receive(self, message, ctx):
        if message == "get":
            return self.seen
        if isinstance(message, dict) and "say" in message:
            self.node.broadcast("news", message["say"])
            return "sent"
        self.seen.append(message)


def setup(node):
    node.spawn(Echo, name="echo")
    node.register_kind("counter", Counter)
    node.subscribe("news", node.spawn(News, name="news"))


class Sink(Actor):
    """Takes ``[tag, i]`` messages (or a bare int i, tag ``"int"``), checks that each tag's i come
    in order and without gaps, and burns about ``busy`` µs a message (a slow consumer); an ask
    (``"stats"``) answers what it saw."""

    def __init__(self, busy: int = 0):
        self.loops = busy * 100  # sum(range(100 * busy)): about busy µs here (as Slow)
        self.count = 0
        self.next: dict[str, int] = {}
        self.disorder = 0  # came after a later one (or twice)
        self.gaps = 0  # came after a gap: the ones before it were lost

    def receive(self, message, ctx):
        if ctx.is_ask:  # "stats" (or anything: a Go benchmark asks "$count" behind its tells)
            return {"count": self.count, "next": self.next, "disorder": self.disorder, "gaps": self.gaps}
        tag, i = message if message.__class__ is list else ("int", message)
        expected = self.next.get(tag, 0)
        if i < expected:
            self.disorder += 1
        elif i > expected:
            self.gaps += 1
        self.next[tag] = i + 1
        self.count += 1
        if self.loops:
            sum(range(self.loops))


class Flooder(Actor):
    """Floods an actor from inside this node: ``{"send": path, "seconds": s, "batch": k}``
    starts awaiting ``ref.send`` (k == 1) or ``ref.send_many`` of k messages ``[tag, i]`` for s
    seconds; ``{"tell": path, "n": n}`` tells n at once; ``"poll"`` answers the progress."""

    def __init__(self):
        self.sent = 0
        self.error = None
        self.done = False
        self.task = None

    def receive(self, message, ctx):
        if message == "poll":
            return {"sent": self.sent, "error": self.error, "done": self.done}
        if "tell" in message:
            ref, tag = self.node.lookup(message["tell"]), self.node.name
            told = 0
            for i in range(message["n"]):
                try:
                    ref.tell([tag, i])
                    told += 1
                except Exception:  # LinkOverflow, NodeUnavailable: the sender hears at once
                    pass
            return told
        self.task = asyncio.ensure_future(self.flood(message["send"], message["seconds"], message.get("batch", 1)))
        return "started"

    async def flood(self, path, seconds, batch):
        ref, tag = self.node.lookup(path), self.node.name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        i = 0
        try:
            while loop.time() < deadline:
                if batch == 1:
                    for _ in range(256):
                        await ref.send([tag, i])
                        i += 1
                        self.sent = i
                else:
                    await ref.send_many([[tag, j] for j in range(i, i + batch)])
                    i += batch
                    self.sent = i
        except Exception as exc:
            self.error = [type(exc).__name__, str(exc)]
        self.done = True


def flow(node):
    """The app of the flow-control tests: ``setup`` plus a flooder and a slow and a fast sink."""
    setup(node)
    node.spawn(Flooder, name="flooder")
    node.spawn(Sink, 20, name="slow", mailbox_size=1000)
    node.spawn(Sink, name="sink", mailbox_size=1000, overflow="reject")
