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
