"""The pure-Python twin of the compiled core ``herdrt.core._fast``.

Same public API, same results (exactly for framing and the ring; within float rounding for the
statistics). It is what the compiled core is benchmarked against, and ``HERDRT_PURE=1`` runs the
whole test suite on it. Keep the two in step: a change here is a change to ``_fast.pyx`` too.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EmptyRingError, FrameError, FrameTooLarge, RecordError
from ._api import PUBLIC_NAMES

__all__ = list(PUBLIC_NAMES)

# ---------------------------------------------------------------------------------------------
# Framing: a 4-byte big-endian unsigned length, then one msgpack body.
# ---------------------------------------------------------------------------------------------

#: Default limit on a frame's body, in bytes (1 MiB).
DEFAULT_MAX_FRAME_SIZE = 1 << 20
_MAX_LENGTH = 0xFFFFFFFF
_HEADER = struct.Struct(">I")


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _with_header(body: bytes) -> bytes:
    if len(body) > _MAX_LENGTH:
        raise FrameTooLarge(f"message encodes to {len(body)} bytes; a frame holds at most {_MAX_LENGTH}")
    return _HEADER.pack(len(body)) + body


def encode_frame(obj) -> bytes:
    """Encode one message as a frame: 4-byte big-endian body length, then the msgpack body.

    Raises ``TypeError`` for a value msgpack cannot carry (only None, bool, int, float, str,
    bytes, list/tuple, dict and msgpack ``ExtType``/``Timestamp`` travel)."""
    return _with_header(_pack(obj))


def encode_frames(objs: Iterable, max_size: int | None = None) -> bytes:
    """Encode a batch of messages into one buffer of consecutive frames (one write per batch).

    With ``max_size``, raises ``FrameTooLarge`` (naming the message's index and size) if any
    message's body would be longer than ``max_size`` bytes, the limit of the peer's decoder:
    nothing is returned then, so the caller can split or drop that message."""
    if max_size is None:
        return b"".join([_with_header(_pack(obj)) for obj in objs])
    if not 0 < max_size <= _MAX_LENGTH:
        raise ValueError(f"max_size must be between 1 and {_MAX_LENGTH}, not {max_size}")
    frames = []
    for i, obj in enumerate(objs):
        body = _pack(obj)
        if len(body) > max_size:
            raise FrameTooLarge(f"message {i} encodes to {len(body)} bytes, over the frame limit of {max_size}")
        frames.append(_with_header(body))
    return b"".join(frames)


def _decode_body(body) -> object:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise FrameError(
            f"frame body of {len(body)} bytes holds one message and {len(exc.extra)} trailing bytes"
        ) from None
    except (ValueError, TypeError) as exc:  # FormatError, StackError, bad UTF-8, bad map key ...
        raise FrameError(f"frame body of {len(body)} bytes is not valid msgpack: {exc}") from None


class FrameDecoder:
    """Streaming decoder of length-prefixed msgpack frames.

    ``feed(data)`` returns every message completed by ``data`` (possibly none) and keeps a partial
    frame for the next call, however the stream is split. A length prefix over ``max_frame_size``
    raises :class:`FrameTooLarge` from the header alone; a body that is not exactly one valid
    msgpack value raises :class:`FrameError`. Either way the messages decoded earlier in the same
    call are on the exception as ``exc.messages`` (nothing good is lost), and the decoder refuses
    all further input: the stream can no longer be trusted. ``close()`` raises :class:`FrameError`
    if the stream ended inside a frame.
    """

    __slots__ = ("_max", "_buf", "_failed")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        if not 0 < max_frame_size <= _MAX_LENGTH:
            raise ValueError(f"max_frame_size must be between 1 and {_MAX_LENGTH}, not {max_frame_size}")
        self._max = max_frame_size
        self._buf = bytearray()
        self._failed: str | None = None  # why the decoder refuses input (None: it does not)

    @property
    def max_frame_size(self) -> int:
        """The largest frame body accepted, in bytes."""
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a frame not yet complete."""
        return len(self._buf)

    def _refuse(self) -> NoReturn:
        raise FrameError(f"decoder refuses input after an earlier error: {self._failed}")

    def _fail(self, exc: FrameError, messages: list[Any]) -> NoReturn:
        self._failed = str(exc)
        self._buf.clear()
        exc.messages = messages
        raise exc

    def feed(self, data) -> list[Any]:
        """Add bytes from the stream; return the messages they complete, in order."""
        if self._failed is not None:
            self._refuse()
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = 0
        end_of_data = len(buf)
        while end_of_data - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > self._max:
                self._fail(FrameTooLarge(f"frame length {length} is over the limit of {self._max} bytes"), out)
            end = pos + 4 + length
            if end > end_of_data:
                break
            try:
                out.append(_decode_body(bytes(buf[pos + 4 : end])))
            except FrameError as exc:
                self._fail(exc, out)
            pos = end
        del buf[:pos]
        return out

    def close(self) -> None:
        """End of stream: raise :class:`FrameError` if it stopped inside a frame."""
        if self._failed is not None:
            return
        if self._buf:
            held = len(self._buf)
            self._failed = f"stream ended inside a frame ({held} bytes buffered)"
            self._buf.clear()
            raise FrameError(self._failed)
        self._failed = "decoder is closed"


# ---------------------------------------------------------------------------------------------
# Hashing: ketama MD5 ring, md5 modulo, jump consistent hash.
# ---------------------------------------------------------------------------------------------


def _key_bytes(key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"hash keys must be str or bytes, not {type(key).__name__}")


def md5_shard(key, n: int) -> int:
    """The textbook shard: the key's MD5 digest read as a big-endian 128-bit integer, modulo ``n``."""
    if n < 1:
        raise ValueError(f"md5_shard needs n >= 1, not {n}")
    return int.from_bytes(hashlib.md5(_key_bytes(key)).digest(), "big") % n


_U64 = (1 << 64) - 1


def jump_hash(key: int, n: int) -> int:
    """Jump consistent hash (Lamping & Veach, 2014): bucket in ``range(n)`` of a 64-bit key."""
    if n < 1:
        raise ValueError(f"jump_hash needs n >= 1, not {n}")
    if not 0 <= key <= _U64:
        raise OverflowError(f"jump_hash key must be an unsigned 64-bit integer, not {key}")
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & _U64
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


class HashRing:
    """A ketama-compatible consistent-hash ring over MD5 (as libketama and memcached clients).

    Each node gets ``vnodes`` points (scaled by its weight; ``vnodes`` is a multiple of 4): for
    ``i`` in ``range(vnodes // 4 * len(nodes) * weight // total_weight)`` the MD5 digest of
    ``f"{node}-{i}"`` gives 4 points, each 4 digest bytes read little-endian. A key's hash is the
    first 4 bytes of its MD5 digest, little-endian; its owner is the node of the first point at or
    after the hash, wrapping around. Where two nodes draw the same point, the node whose name
    sorts first (by UTF-8 bytes) keeps it. ``PROTOCOL.md`` pins this down for other languages.
    """

    __slots__ = ("_vnodes", "_weights", "_points", "_owners")

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = 160, weights: Mapping[str, int] | None = None):
        vnodes = operator.index(vnodes)
        if vnodes < 4 or vnodes % 4:
            raise ValueError(f"vnodes must be a positive multiple of 4, not {vnodes}")
        self._vnodes = vnodes
        self._weights: dict[str, int] = {}
        weights = dict(weights or {})
        for node in nodes:
            self._check_new(node, weights.get(node, 1))
            self._weights[node] = weights.pop(node, 1)
        if weights:
            raise ValueError(f"weights name nodes that are not on the ring: {sorted(weights)}")
        self._rebuild()

    def _check_new(self, node, weight):
        if not isinstance(node, str):
            raise TypeError(f"ring node names must be str, not {type(node).__name__}")
        if node in self._weights:
            raise ValueError(f"node {node!r} is already on the ring")
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"node {node!r}: weight must be a positive integer, not {weight!r}")

    def _rebuild(self):
        total = sum(self._weights.values())
        n = len(self._weights)
        per_node = self._vnodes // 4
        points = []
        for node, weight in self._weights.items():
            for i in range(per_node * n * weight // total):
                digest = hashlib.md5(f"{node}-{i}".encode()).digest()
                for k in range(0, 16, 4):
                    points.append((int.from_bytes(digest[k : k + 4], "little"), node.encode("utf-8"), node))
        points.sort()
        self._points: list[int] = []
        self._owners: list[str] = []
        for point, _, node in points:
            if self._points and self._points[-1] == point:
                continue  # tie: the first name in byte order keeps the point
            self._points.append(point)
            self._owners.append(node)

    def _index(self, key) -> int:
        if not self._points:
            raise EmptyRingError("the hash ring has no nodes; add one before looking up keys")
        digest = hashlib.md5(_key_bytes(key)).digest()
        i = bisect_left(self._points, int.from_bytes(digest[:4], "little"))
        return 0 if i == len(self._points) else i

    def lookup(self, key) -> str:
        """The node that owns ``key`` (str or bytes)."""
        return self._owners[self._index(key)]

    def lookup_n(self, key, n: int) -> list[str]:
        """Up to ``n`` distinct nodes for ``key`` in ring order, the owner first (for replicas)."""
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"lookup_n needs n >= 0, not {n}")
        want = min(n, len(self._weights))
        if want == 0:
            return []
        i = self._index(key)
        found: list[str] = []
        owners = self._owners
        size = len(owners)
        for step in range(size):
            node = owners[(i + step) % size]
            if node not in found:
                found.append(node)
                if len(found) == want:
                    break
        return found

    def add(self, node: str, weight: int = 1) -> None:
        """Add ``node`` with an integer ``weight`` (its share relative to the others)."""
        self._check_new(node, weight)
        self._weights[node] = weight
        try:
            self._rebuild()
        except BaseException:  # e.g. a name with a lone surrogate cannot be UTF-8 encoded
            del self._weights[node]
            self._rebuild()
            raise

    def remove(self, node: str) -> None:
        """Remove ``node``; its keys move to the nodes that follow its points."""
        if node not in self._weights:
            raise KeyError(f"node {node!r} is not on the ring (nodes: {sorted(self._weights)})")
        del self._weights[node]
        self._rebuild()

    @property
    def nodes(self) -> list[str]:
        """The nodes, in the order they were added."""
        return list(self._weights)

    @property
    def vnodes(self) -> int:
        """Points per node at weight 1 (on equal weights, exactly the points of each node)."""
        return self._vnodes

    def weight(self, node: str) -> int:
        """The weight of ``node``."""
        return self._weights[node]

    def points(self) -> list[tuple[int, str]]:
        """The whole continuum as sorted ``(point, node)`` pairs (for inspection and test vectors)."""
        return list(zip(self._points, self._owners, strict=False))

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node) -> bool:
        return node in self._weights

    def __repr__(self) -> str:
        return f"HashRing({self.nodes!r}, vnodes={self._vnodes})"


# ---------------------------------------------------------------------------------------------
# Online statistics: Welford / Chan et al., and a DDSketch-style quantile sketch.
# ---------------------------------------------------------------------------------------------

_NAN = math.nan
_INF = math.inf


def _finite(x: float) -> bool:
    return x - x == 0.0  # False for NaN and +-inf


class OnlineStats:
    """Count, mean, variance, min, max and sum of a stream, in O(1) memory (Welford's algorithm).

    Mergeable (Chan et al.): ``a.merge(b)`` equals one ``OnlineStats`` fed both streams, so
    per-actor stats merge into per-node and herd-wide views. Non-finite samples (NaN, +-inf) are
    not folded in — one NaN would poison every later figure — but counted in ``skipped``. With no
    samples, ``mean``, ``variance``, ``stddev``, ``min`` and ``max`` are NaN.
    """

    __slots__ = ("_n", "_mean", "_m2", "_min", "_max", "_sum", "_skipped")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = _INF
        self._max = -_INF
        self._sum = 0.0
        self._skipped = 0

    def update(self, x: float) -> None:
        """Add one sample."""
        x = float(x)
        if not _finite(x):
            self._skipped += 1
            return
        n = self._n + 1
        self._n = n
        delta = x - self._mean
        self._mean += delta / n
        self._m2 += delta * (x - self._mean)
        self._sum += x
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x

    def update_many(self, samples) -> None:
        """Add every sample of an iterable of numbers or a buffer of doubles (e.g. ``array('d')``)."""
        if isinstance(samples, memoryview) and samples.format != "d":
            raise TypeError(f"update_many needs a buffer of doubles (format 'd'), not {samples.format!r}")
        for x in samples:
            self.update(x)

    def merge(self, other: OnlineStats) -> OnlineStats:
        """Fold ``other`` into this one (in place); returns ``self``."""
        nb = other._n
        self._skipped += other._skipped
        if nb == 0:
            return self
        na = self._n
        if na == 0:
            self._n, self._mean, self._m2 = nb, other._mean, other._m2
            self._min, self._max, self._sum = other._min, other._max, other._sum
            return self
        n = na + nb
        delta = other._mean - self._mean
        self._mean += delta * nb / n
        self._m2 += other._m2 + delta * delta * na * nb / n
        self._n = n
        self._sum += other._sum
        if other._min < self._min:
            self._min = other._min
        if other._max > self._max:
            self._max = other._max
        return self

    def copy(self) -> OnlineStats:
        """An independent copy."""
        return OnlineStats.from_dict(self.to_dict())

    @property
    def count(self) -> int:
        return self._n

    @property
    def skipped(self) -> int:
        """Non-finite samples that were refused."""
        return self._skipped

    @property
    def mean(self) -> float:
        return self._mean if self._n else _NAN

    @property
    def variance(self) -> float:
        """Population variance."""
        return self._m2 / self._n if self._n else _NAN

    @property
    def sample_variance(self) -> float:
        """Sample (Bessel-corrected) variance; NaN below two samples."""
        return self._m2 / (self._n - 1) if self._n > 1 else _NAN

    @property
    def stddev(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self._m2 / self._n) if self._n else _NAN

    @property
    def min(self) -> float:
        return self._min if self._n else _NAN

    @property
    def max(self) -> float:
        return self._max if self._n else _NAN

    @property
    def sum(self) -> float:
        return self._sum

    def to_dict(self) -> dict:
        """The state as a plain dict (msgpack-ready); ``from_dict`` restores it exactly."""
        return {
            "count": self._n,
            "mean": self._mean,
            "m2": self._m2,
            "min": self._min,
            "max": self._max,
            "sum": self._sum,
            "skipped": self._skipped,
        }

    @classmethod
    def from_dict(cls, state: Mapping) -> OnlineStats:
        """Rebuild from ``to_dict()`` output (e.g. received from another node)."""
        try:
            n, skipped = state["count"], state["skipped"]
            floats = [float(state[k]) for k in ("mean", "m2", "min", "max", "sum")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an OnlineStats state: {exc!r}") from None
        if not isinstance(n, int) or n < 0 or not isinstance(skipped, int) or skipped < 0:
            raise ValueError("OnlineStats state: count and skipped must be non-negative integers")
        if n > _INT64_MAX or skipped > _INT64_MAX:
            raise ValueError("OnlineStats state: count and skipped must fit in 64 bits")
        self = cls()
        self._n, self._skipped = n, skipped
        self._mean, self._m2, self._min, self._max, self._sum = floats
        return self

    def __repr__(self) -> str:
        return (
            f"OnlineStats(count={self._n}, mean={self.mean:.6g}, stddev={self.stddev:.6g}, "
            f"min={self.min:.6g}, max={self.max:.6g})"
        )


class _Buckets:
    """One store of a sketch: counts by bucket index, within a window of ``max_bins`` below the top."""

    __slots__ = ("counts", "top", "max_bins")

    def __init__(self, max_bins: int):
        self.counts: dict[int, int] = {}
        self.top: int | None = None
        self.max_bins = max_bins

    def put(self, index: int, count: int) -> None:
        top = self.top
        if top is None or index > top:
            self.top = top = index
            floor = top - self.max_bins + 1
            low = [i for i in self.counts if i < floor]
            if low:
                self.counts[floor] = self.counts.get(floor, 0) + sum(self.counts.pop(i) for i in low)
        floor = top - self.max_bins + 1
        if index < floor:
            index = floor
        self.counts[index] = self.counts.get(index, 0) + count

    def put_checked(self, index: int, count: int) -> None:
        """``put`` for state from elsewhere: positive counts, indices within +-2**61."""
        if count < 1:
            raise ValueError(f"bucket {index} has count {count}; counts must be positive")
        if not -_INDEX_LIMIT <= index <= _INDEX_LIMIT:
            raise ValueError(f"bucket index {index} is out of range")
        self.put(index, count)

    def pairs(self) -> list[list[int]]:
        return [[i, self.counts[i]] for i in sorted(self.counts)]


class QuantileSketch:
    """A mergeable quantile sketch with bounded relative error (DDSketch-style log buckets).

    A value ``x > 0`` falls in bucket ``ceil(log(x) / log(gamma))`` with
    ``gamma = (1 + a) / (1 - a)`` for relative accuracy ``a`` (default 1%); negative values use the
    same buckets of ``-x`` in a second store; zero (and subnormals) are counted apart. Each store
    keeps at most ``max_bins`` (at most 2**20) consecutive buckets ending at the highest one seen;
    lower ones fold into its lowest bucket (so only the smallest magnitudes can lose accuracy).
    ``quantile(q)`` returns a value within relative error ``a`` of the true ``q``-quantile (rank
    ``q * (n - 1)``, lower), clamped to the exact min and max (which ``q`` = 0 and 1 return).
    Non-finite samples are skipped and counted.
    """

    __slots__ = ("_a", "_gamma", "_lg", "_max_bins", "_pos", "_neg", "_zero", "_n", "_min", "_max", "_skipped")

    def __init__(self, relative_accuracy: float = 0.01, max_bins: int = 2048):
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), not {relative_accuracy}")
        max_bins = operator.index(max_bins)
        if max_bins < 1:
            raise ValueError(f"max_bins must be positive, not {max_bins}")
        if max_bins > _MAX_BINS:
            raise ValueError(f"max_bins must be at most {_MAX_BINS}, not {max_bins}")
        self._a = float(relative_accuracy)
        self._gamma = (1.0 + self._a) / (1.0 - self._a)
        self._lg = math.log(self._gamma)
        self._max_bins = max_bins
        self._pos = _Buckets(max_bins)
        self._neg = _Buckets(max_bins)
        self._zero = 0
        self._n = 0
        self._min = _INF
        self._max = -_INF
        self._skipped = 0

    @property
    def relative_accuracy(self) -> float:
        return self._a

    @property
    def count(self) -> int:
        return self._n

    @property
    def skipped(self) -> int:
        return self._skipped

    def add(self, x: float) -> None:
        """Add one sample."""
        x = float(x)
        if not _finite(x):
            self._skipped += 1
            return
        if x >= _TINY:
            self._pos.put(math.ceil(math.log(x) / self._lg), 1)
        elif x <= -_TINY:
            self._neg.put(math.ceil(math.log(-x) / self._lg), 1)
        else:
            self._zero += 1
        self._n += 1
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x

    def add_many(self, samples) -> None:
        """Add every sample of an iterable or buffer of doubles."""
        for x in samples:
            self.add(x)

    def _value(self, index: int) -> float:
        try:
            return 2.0 * math.pow(self._gamma, index) / (self._gamma + 1.0)
        except OverflowError:  # a bucket next to the largest double; the caller clamps to max
            return _INF

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1), e.g. 0.5, 0.9, 0.99; NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile needs 0 <= q <= 1, not {q}")
        if self._n == 0:
            return _NAN
        if q == 0.0:
            return self._min
        if q == 1.0:
            return self._max
        rank = q * (self._n - 1)
        seen = 0
        value = self._max
        done = False
        neg = self._neg.counts
        for i in sorted(neg, reverse=True):
            seen += neg[i]
            if seen > rank:
                value, done = -self._value(i), True
                break
        if not done:
            seen += self._zero
            if seen > rank:
                value, done = 0.0, True
        if not done:
            pos = self._pos.counts
            for i in sorted(pos):
                seen += pos[i]
                if seen > rank:
                    value = self._value(i)
                    break
        return min(max(value, self._min), self._max)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Fold ``other`` (same accuracy and bins) into this sketch, in place; returns ``self``."""
        if other._a != self._a or other._max_bins != self._max_bins:
            raise ValueError("can only merge sketches with the same relative_accuracy and max_bins")
        for mine, theirs in ((self._pos, other._pos), (self._neg, other._neg)):
            for i, c in theirs.pairs():
                mine.put(i, c)
        self._zero += other._zero
        self._n += other._n
        self._skipped += other._skipped
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        return self

    def to_dict(self) -> dict:
        """Plain dict state (msgpack-ready; bucket maps as sorted ``[index, count]`` pairs)."""
        return {
            "relative_accuracy": self._a,
            "max_bins": self._max_bins,
            "pos": self._pos.pairs(),
            "neg": self._neg.pairs(),
            "zero": self._zero,
            "count": self._n,
            "min": self._min,
            "max": self._max,
            "skipped": self._skipped,
        }

    @classmethod
    def from_dict(cls, state: Mapping) -> QuantileSketch:
        """Rebuild from ``to_dict()`` output.

        Stricter than a plain read (this state arrives from other nodes): bucket counts must be
        positive, ``zero``, ``count`` and ``skipped`` non-negative, all within 64 bits, and bucket
        indexes within +-2**61.
        """
        try:
            self = cls(state["relative_accuracy"], state["max_bins"])
            for i, c in state["pos"]:
                self._pos.put_checked(int(i), int(c))
            for i, c in state["neg"]:
                self._neg.put_checked(int(i), int(c))
            self._zero = _count(state["zero"], "zero")
            self._n = _count(state["count"], "count")
            self._min = float(state["min"])
            self._max = float(state["max"])
            self._skipped = _count(state["skipped"], "skipped")
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"not a QuantileSketch state: {exc!r}") from None
        return self

    def __repr__(self) -> str:
        return f"QuantileSketch(count={self._n}, p50={self.quantile(0.5):.6g}, p99={self.quantile(0.99):.6g})"


def _count(value, name: str) -> int:
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, not {value}")
    if value > _INT64_MAX:
        raise OverflowError(f"{name} must fit in 64 bits, not {value}")
    return value


_MAX_BINS = 1 << 20
_INDEX_LIMIT = 1 << 61
_INT64_MAX = (1 << 63) - 1

#: Magnitudes below this (zero and subnormals) count in the zero bucket.
_TINY = 2.2250738585072014e-308


# ---------------------------------------------------------------------------------------------
# Sealed link records (PROTOCOL.md, Records): AES-256-GCM, through the `cryptography` package.
# ---------------------------------------------------------------------------------------------

#: Most plaintext bytes one record carries; a longer write is sealed as several records.
RECORD_MAX = 1 << 16
#: The AES-GCM tag at the end of every record.
RECORD_TAG_SIZE = 16
_REC_HEADER = 4


class RecordSealer:
    """Seals the bytes one side of a link writes into records numbered from 0 (``seq``)."""

    __slots__ = ("_encrypt", "seq")

    def __init__(self, key: bytes):
        self._encrypt = AESGCM(key).encrypt
        self.seq = 0

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """``data`` (any length, even empty) as one record, or several of up to RECORD_MAX bytes."""
        n = len(data)
        if n <= RECORD_MAX:
            header = (n + RECORD_TAG_SIZE).to_bytes(_REC_HEADER, "big")
            seq = self.seq
            self.seq = seq + 1
            return header + self._encrypt(seq.to_bytes(12, "big"), data, header)
        view = memoryview(data)
        return b"".join(self.seal(view[i : i + RECORD_MAX]) for i in range(0, n, RECORD_MAX))


class RecordOpener:
    """Opens the records of a byte stream split anywhere; ``feed`` returns the plaintext."""

    __slots__ = ("_decrypt", "_max", "_buf", "seq")

    def __init__(self, key: bytes, max_record: int = RECORD_MAX):
        self._decrypt = AESGCM(key).decrypt
        self._max = max_record + RECORD_TAG_SIZE
        self._buf = bytearray()
        self.seq = 0

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished record held back."""
        return len(self._buf)

    def _open(self, header, sealed) -> bytes:
        try:
            plain = self._decrypt(self.seq.to_bytes(12, "big"), sealed, header)
        except InvalidTag:
            raise RecordError(f"record {self.seq} failed authentication (forged, replayed or corrupt)") from None
        self.seq += 1
        return plain

    def _length(self, header) -> int:
        n = int.from_bytes(header, "big")
        if not RECORD_TAG_SIZE <= n <= self._max:
            raise RecordError(f"record length {n} is outside [{RECORD_TAG_SIZE}, {self._max}]")
        return n

    def feed(self, data) -> bytes:
        """The plaintext of every record completed by ``data`` (``b""`` if none). Raises
        :class:`RecordError` on the first record that does not open; the stream is then dead."""
        buf = self._buf
        size = len(data)
        if not buf and size > _REC_HEADER:  # common case: the read holds exactly one whole record
            header = data[:_REC_HEADER]
            n = int.from_bytes(header, "big")
            if size == _REC_HEADER + n and RECORD_TAG_SIZE <= n <= self._max:
                # (a small record is cheaper sliced than viewed; a big one is not copied)
                body = data[_REC_HEADER:] if size < 8192 else memoryview(data)[_REC_HEADER:]
                seq = self.seq
                try:
                    plain = self._decrypt(seq.to_bytes(12, "big"), body, header)
                except InvalidTag:
                    raise RecordError(f"record {seq} failed authentication (forged, replayed or corrupt)") from None
                self.seq = seq + 1
                return plain
        buf += data
        out = []
        pos = 0
        view = memoryview(buf)
        try:
            while len(buf) - pos >= _REC_HEADER:
                n = self._length(view[pos : pos + _REC_HEADER])
                end = pos + _REC_HEADER + n
                if end > len(buf):
                    break
                out.append(self._open(view[pos : pos + _REC_HEADER], view[pos + _REC_HEADER : end]))
                pos = end
        except RecordError as exc:
            exc.plain = b"".join(out)
            raise
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out[0] if len(out) == 1 else b"".join(out)
