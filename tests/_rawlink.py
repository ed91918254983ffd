"""The link protocol spoken by hand over a plain asyncio stream: for tests that play a peer (or an
attacker) byte by byte, independently of :class:`herdrt.herd.link.Link`."""

from __future__ import annotations

import asyncio

from herdrt.core import FrameDecoder, encode_frames
from herdrt.errors import FrameError
from herdrt.herd import protocol as P
from herdrt.herd.handshake import LinkSession, transcript


class RawLink:
    """One connection to a node, dialled by hand. ``hello()`` reads the node's HELLO; ``handshake()``
    authenticates as ``name`` with ``secret``; then ``send``/``send_bytes`` write sealed records and
    ``read`` opens and decodes what comes back. Before the handshake, ``read`` decodes plain frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 20)
        self.opener = None
        self.sealer = None
        self.peer_name: str | None = None
        self.peer_nonce: bytes | None = None
        self.nonce = P.new_nonce()
        self.eof = False
        self._buf = bytearray()
        self._pending: list = []

    @classmethod
    async def connect(cls, address) -> RawLink:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def read(self, count: int = 1, timeout: float = 3.0) -> list:
        """Up to ``count`` envelopes (fewer if the connection ends first: then ``self.eof``)."""
        out = self._pending
        async with asyncio.timeout(timeout):
            while len(out) < count and not self.eof:
                if not self._buf or (self.opener is None and not self._whole_frame()):
                    data = await self.reader.read(65536)
                    if not data:
                        self.eof = True
                        break
                    self._buf += data
                if self.opener is None:
                    # In clear, one frame at a time: the bytes after AUTH are sealed records.
                    if self._whole_frame():
                        end = 4 + int.from_bytes(self._buf[:4], "big")
                        out.extend(FrameDecoder(1 << 20).feed(bytes(self._buf[:end])))
                        del self._buf[:end]
                    continue
                data, self._buf = bytes(self._buf), bytearray()
                try:
                    out.extend(self.decoder.feed(self.opener.feed(data)))
                except FrameError as exc:
                    out.extend(getattr(exc, "messages", []))
                    break
        self._pending = out[count:]
        return out[:count]

    def _whole_frame(self) -> bool:
        return len(self._buf) >= 4 and len(self._buf) >= 4 + int.from_bytes(self._buf[:4], "big")

    async def until_eof(self, timeout: float = 3.0) -> bool:
        """True once the node has closed the connection: EOF, or a reset (a close with bytes of
        ours still unread in its buffer ends in RST)."""
        async with asyncio.timeout(timeout):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:
                pass
        self.eof = True
        return True

    async def hello(self) -> tuple[str, bytes]:
        """Read the node's HELLO: ``(its name, its nonce)``."""
        (env,) = await self.read(1)
        _, self.peer_name, self.peer_nonce = P.parse_hello(env)
        return self.peer_name, self.peer_nonce

    def write_plain(self, envs: list) -> None:
        self.writer.write(encode_frames(envs))

    def session(self, name: str, secret: bytes, version: int = P.PROTOCOL_VERSION) -> LinkSession:
        """The keys of this connection, dialled as ``name`` (call after :meth:`hello`)."""
        assert self.peer_name is not None and self.peer_nonce is not None, "read the node's HELLO first"
        script = transcript(version, name, self.nonce, self.peer_name, self.peer_nonce)
        return LinkSession(secret, script, dialer=True)

    def open_records(self, session: LinkSession) -> None:
        """Read what the node writes after its AUTH (sealed records, even if this side never
        sent its own AUTH)."""
        self.opener = session.opener()

    async def handshake(self, name: str, secret: bytes, version: int = P.PROTOCOL_VERSION) -> None:
        """Authenticate as ``name`` (the dialling side); asserts the node's AUTH verifies."""
        if self.peer_name is None:
            await self.hello()
        session = self.session(name, secret, version)
        self.write_plain([P.hello(name, self.nonce, version), P.auth(session.own_mac)])
        (auth,) = await self.read(1)
        assert auth[0] == P.AUTH, auth
        assert session.verify(P.parse_auth(auth))
        self.sealer = session.sealer()
        self.open_records(session)

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(self.sealer.seal(data))

    def send(self, envs: list) -> None:
        self.send_bytes(encode_frames(envs))

    def close(self) -> None:
        self.writer.close()


async def raw_handshake(address, name: str, secret: bytes) -> RawLink:
    """A :class:`RawLink` to ``address`` authenticated as node ``name``."""
    raw = await RawLink.connect(address)
    await raw.handshake(name, secret)
    return raw
