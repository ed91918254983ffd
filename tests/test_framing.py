"""Framing: 4-byte big-endian length, then one msgpack body.

Equivalence tests hold the compiled core (``fast``) to its pure twin (``pure``) and both to
``msgpack.unpackb(body, raw=False, strict_map_key=True)`` / ``msgpack.packb(obj, use_bin_type=True)``.
Behaviour tests use ``core`` (the active implementation), so ``HERDRT_PURE=1`` runs them on the twin.
"""

from __future__ import annotations

import datetime
import math
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herdrt.errors import FrameError, FrameTooLarge

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def unpackb(body: bytes):
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def same(a, b) -> bool:
    """Equal values of identical types, all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=False)
        )
    if isinstance(a, msgpack.ExtType):
        return a.code == b.code and same(a.data, b.data)
    if isinstance(a, msgpack.Timestamp):
        return (a.seconds, a.nanoseconds) == (b.seconds, b.nanoseconds)
    return a == b


def run(impl, chunks, max_frame_size=None):
    """Feed chunks to a decoder, then close it: a comparable record of everything it did."""
    dec = impl.FrameDecoder() if max_frame_size is None else impl.FrameDecoder(max_frame_size)
    out = []
    for chunk in chunks:
        try:
            out.extend(dec.feed(chunk))
        except FrameError as exc:
            return ("error", type(exc), out + exc.messages, dec.buffered)
    try:
        dec.close()
    except FrameError as exc:
        return ("close-error", type(exc), out, dec.buffered)
    return ("ok", None, out, dec.buffered)


def same_run(a, b) -> bool:
    return a[0] == b[0] and a[1] is b[1] and a[3] == b[3] and same(a[2], b[2])


def split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[i:j] for i, j in zip(edges, edges[1:], strict=False)]


# --- strategies -------------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers(min_value=-40, max_value=300)  # around the fixint / int8 / uint8 edges
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.text(alphabet="kto", max_size=3)  # short strings that repeat: exercises the string cache
    | st.binary(max_size=40)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20))
    | st.builds(
        msgpack.Timestamp,
        st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(0, 2**34),
        st.integers(0, 999_999_999) | st.just(0),
    )
)
keys = st.text(max_size=12) | st.text(alphabet="abk", max_size=2) | st.binary(max_size=8)
values = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=6) | st.tuples(kids, kids) | st.dictionaries(keys, kids, max_size=6),
    max_leaves=30,
)
messages = st.lists(values, min_size=1, max_size=8)


# --- equivalence: compiled == pure == msgpack -------------------------------------------------


@SETTINGS
@given(msgs=messages, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_roundtrip_matches_pure_and_msgpack(fast, pure, msgs, cuts):
    data = fast.encode_frames(msgs)
    assert data == pure.encode_frames(msgs)
    assert data == b"".join(fast.encode_frame(m) for m in msgs)
    assert data == b"".join(frame(msgpack.packb(m, use_bin_type=True)) for m in msgs)
    expected = [unpackb(msgpack.packb(m, use_bin_type=True)) for m in msgs]
    chunks = split(data, cuts)
    got_fast, got_pure = run(fast, chunks), run(pure, chunks)
    assert got_fast[0] == "ok"
    assert same_run(got_fast, got_pure)
    assert same(got_fast[2], expected)


def test_one_byte_at_a_time(fast, pure):
    msgs = [
        {"k": "tell", "to": "actor-17", "id": 12345, "body": [1, 2.5, "hello"]},
        [],
        {},
        "é" * 40,
        b"\x00" * 300,
        [2**64 - 1, -(2**63), float("nan"), -0.0, msgpack.ExtType(3, b"xyz"), msgpack.Timestamp(1, 2)],
        {"nested": {"deeper": [{"x": None}] * 3}},
    ]
    data = fast.encode_frames(msgs)
    chunks = [data[i : i + 1] for i in range(len(data))]
    got_fast, got_pure = run(fast, chunks), run(pure, chunks)
    assert got_fast[0] == "ok"
    assert same_run(got_fast, got_pure)
    assert same(got_fast[2], [unpackb(msgpack.packb(m)) for m in msgs])


@SETTINGS
@given(bodies=st.lists(st.binary(max_size=24), min_size=1, max_size=6), cuts=st.lists(st.integers(0), max_size=6))
def test_random_bodies_same_verdict(fast, pure, bodies, cuts):
    """Well-framed garbage: the same messages, then the same exception class, from both."""
    data = b"".join(frame(b) for b in bodies)
    chunks = split(data, cuts)
    assert same_run(run(fast, chunks), run(pure, chunks))


@SETTINGS
@given(
    data=st.binary(max_size=64), cuts=st.lists(st.integers(0), max_size=6), limit=st.sampled_from([None, 1, 16, 300])
)
def test_random_streams_same_verdict(fast, pure, data, cuts, limit):
    chunks = split(data, cuts)
    assert same_run(run(fast, chunks, limit), run(pure, chunks, limit))


@SETTINGS
@given(body=st.builds(lambda m, tail: msgpack.packb(m) + tail, values, st.binary(max_size=3)))
def test_body_decodes_as_unpackb(fast, pure, body):
    """A valid value, possibly with trailing bytes: accepted exactly when unpackb accepts it."""
    try:
        expected = ("ok", unpackb(body))
    except (ValueError, TypeError):
        expected = ("error", None)
    for impl in (fast, pure):
        try:
            got = ("ok", impl.FrameDecoder().feed(frame(body))[0])
        except FrameError:
            got = ("error", None)
        assert got[0] == expected[0]
        assert same(got[1], expected[1])


@pytest.mark.parametrize("depth", [1022, 1023, 1024, 1025])
@pytest.mark.parametrize(
    "open_,leaf",
    [(b"\x91", b"\x01"), (b"\x91", b"\x90"), (b"\x91", b"\x80"), (b"\x81\xa1k", b"\x01"), (b"\x81\xa1k", b"\x90")],
)
def test_nesting_limit_matches_msgpack(fast, pure, depth, open_, leaf):
    body = open_ * depth + leaf
    try:
        unpackb(body)
        ok = True
    except ValueError:  # msgpack's StackError
        ok = False
    for impl in (fast, pure):
        if ok:
            (msg,) = impl.FrameDecoder().feed(frame(body))
            assert msgpack.packb(msg) == body  # (== on 1024 levels would hit Python's recursion limit)
        else:
            with pytest.raises(FrameError):
                impl.FrameDecoder().feed(frame(body))
    # msgpack's own limit: 1024 open containers
    assert ok == (depth < 1024 or (depth == 1024 and leaf == b"\x01"))


_INT_EDGES = [0, 2**7, 2**8, 2**16, 2**32, 2**63, 2**64 - 1, -32, -(2**7), -(2**15), -(2**31), -(2**63)]
_LEN_EDGES = [0, 15, 16, 31, 32, 255, 256, 65535, 65536]


def test_encoding_edges_match_msgpack(fast, pure):
    """Every switch between two encodings of an int or a length, on both sides of it."""
    ints = sorted({v + d for v in _INT_EDGES for d in (-1, 0, 1) if -(2**63) <= v + d < 2**64})
    objs = [*ints, *(float(v) for v in ints)]
    for n in _LEN_EDGES:
        objs += ["s" * n, "é" * n, b"b" * n, [0] * n, {f"{i:05}": 0 for i in range(n)}]
        objs.append(msgpack.ExtType(1, b"e" * n))
    objs += [msgpack.ExtType(2, b"e" * n) for n in (1, 2, 4, 8, 16, 3, 17)]
    objs += [msgpack.Timestamp(s, ns) for s in (0, 2**32 - 1, 2**32, 2**34 - 1, 2**34, -1) for ns in (0, 1)]
    for obj in objs:
        expected = frame(msgpack.packb(obj, use_bin_type=True))
        assert fast.encode_frame(obj) == expected, obj
        assert same(fast.FrameDecoder().feed(expected)[0], unpackb(expected[4:]))
    assert fast.encode_frames(objs) == pure.encode_frames(objs)


@pytest.mark.parametrize(
    "obj",
    [
        object(),
        {1, 2},
        1j,
        datetime.datetime(2024, 1, 1),
        [1, {"x": object()}],
        2**64,
        -(2**63) - 1,
        "\ud800",
        memoryview(b"abcd")[::2],
        [[[[[]]]]] * 2,
    ],
)
def test_encode_errors_and_odd_types_match_msgpack(fast, pure, obj):
    try:
        expected = msgpack.packb(obj, use_bin_type=True)
    except Exception as exc:  # noqa: BLE001 - the very class is what we compare
        for impl in (fast, pure):
            with pytest.raises(type(exc)) as info:
                impl.encode_frame(obj)
            assert str(info.value) == str(exc)
            with pytest.raises(type(exc)):
                impl.encode_frames([1, obj])
    else:
        assert fast.encode_frame(obj) == pure.encode_frame(obj) == frame(expected)


def test_encode_subclasses_and_buffers_as_msgpack(fast, pure):
    import enum
    from collections import OrderedDict, UserDict

    class Level(enum.IntEnum):
        HIGH = 7

    class Name(str):
        pass

    class Ratio(float):
        pass

    class Items(list):
        pass

    class Pair(tuple):
        pass

    class Doc(dict):
        pass

    nested = 1
    for _ in range(1024):
        nested = [nested]
    odd = [
        Level.HIGH,
        Name("né"),
        Ratio(0.25),
        Items([1, 2]),
        Pair((3, 4)),
        Doc(a=1),
        OrderedDict(b=2),
        bytearray(b"xy"),
        memoryview(b"mv"),
        msgpack.Timestamp(2**34, 1),
        msgpack.Timestamp(-1, 999_999_999),
        msgpack.Timestamp(2**32 - 1, 0),
        msgpack.ExtType(127, b"a" * 300),
        nested,  # 1024 deep: msgpack's deepest
        "x" * 70000,
        b"y" * 70000,
        list(range(70000)),
        {str(i): i for i in range(70000)},
    ]
    for obj in odd:
        expected = frame(msgpack.packb(obj, use_bin_type=True))
        assert fast.encode_frame(obj) == pure.encode_frame(obj) == expected
    assert fast.encode_frames(odd) == pure.encode_frames(odd)
    with pytest.raises(TypeError):  # UserDict is no dict: msgpack refuses it, so do both
        fast.encode_frame(UserDict(a=1))
    too_deep = [nested]
    for impl in (fast, pure):
        with pytest.raises(ValueError, match="recursion limit"):
            impl.encode_frame(too_deep)


@SETTINGS
@given(msgs=messages, limit=st.integers(min_value=1, max_value=300))
def test_encode_frames_max_size_matches_pure(fast, pure, msgs, limit):
    bodies = [msgpack.packb(m, use_bin_type=True) for m in msgs]
    over = [i for i, b in enumerate(bodies) if len(b) > limit]
    outcomes = []
    for impl in (fast, pure):
        try:
            outcomes.append(impl.encode_frames(msgs, max_size=limit))
        except FrameTooLarge as exc:
            outcomes.append(str(exc))
    if over:  # the first message over the limit is named, with its size
        assert (
            outcomes[0]
            == outcomes[1]
            == (f"message {over[0]} encodes to {len(bodies[over[0]])} bytes, over the frame limit of {limit}")
        )
    else:
        assert outcomes[0] == outcomes[1] == b"".join(frame(b) for b in bodies)


def test_encode_frames_max_size_bounds(core):
    assert core.encode_frames(["abc"], max_size=4) == frame(b"\xa3abc")
    with pytest.raises(FrameTooLarge, match="message 1 encodes to 5 bytes, over the frame limit of 4"):
        core.encode_frames(["abc", "abcd"], max_size=4)
    for bad in (0, -1, 2**32):
        with pytest.raises(ValueError, match="max_size must be between 1 and"):
            core.encode_frames([], max_size=bad)


def test_encode_frames_takes_any_iterable(core):
    assert core.encode_frames(iter([1, "a"])) == frame(b"\x01") + frame(b"\xa1a")
    assert core.encode_frames([]) == b""
    assert core.encode_frames(x for x in ()) == b""


# --- hand-written vectors ---------------------------------------------------------------------

VECTORS = [
    ("00000001 c0", None),
    ("00000001 c3", True),
    ("00000001 c2", False),
    ("00000001 7f", 127),
    ("00000001 e0", -32),
    ("00000002 d0 80", -128),
    ("00000003 cd 0100", 256),
    ("00000009 cf ffffffffffffffff", 2**64 - 1),
    ("00000009 d3 8000000000000000", -(2**63)),
    ("00000005 ca 3fc00000", 1.5),  # float32, widened
    ("00000009 cb 400921fb54442d18", math.pi),
    ("00000003 a2 c3a9", "é"),
    ("00000005 c4 03 010203", b"\x01\x02\x03"),
    ("00000004 dc 0001 c0", [None]),
    ("00000008 81 a16b a474656c6c", {"k": "tell"}),
    ("00000007 82 a161 01 a161 02", {"a": 2}),  # a repeated key: the last one wins
    ("00000005 81 c401 61 01", {b"a": 1}),
    ("00000003 d4 05 2a", msgpack.ExtType(5, b"*")),
    ("00000006 d6 ff 00000001", msgpack.Timestamp(1, 0)),
    (
        "0000001a 84 a16b a474656c6c a2746f a161 a26964 cd3039 a4626f6479 91 01",
        {"k": "tell", "to": "a", "id": 12345, "body": [1]},
    ),
]


@pytest.mark.parametrize("hexdata,expected", VECTORS)
def test_vectors(core, hexdata, expected):
    data = bytes.fromhex(hexdata)
    (msg,) = core.FrameDecoder().feed(data)
    assert same(msg, expected)
    if hexdata not in ("00000005 ca 3fc00000", "00000007 82 a161 01 a161 02", "00000004 dc 0001 c0"):
        assert core.encode_frame(expected) == data  # the canonical encoding of the same value


def test_vector_stream(core):
    data = b"".join(bytes.fromhex(h) for h, _ in VECTORS)
    dec = core.FrameDecoder()
    msgs = dec.feed(data[:50]) + dec.feed(data[50:])
    assert all(same(m, e) for m, (_, e) in zip(msgs, VECTORS, strict=True))
    assert dec.buffered == 0
    dec.close()


# --- bad input --------------------------------------------------------------------------------

BAD_BODIES = {
    "empty body": b"",
    "trailing bytes": b"\x01\x02",
    "never-used 0xc1": b"\xc1",
    "truncated str": b"\xa5ab",
    "truncated array": b"\x92\x01",
    "array count over body": b"\xdd\xff\xff\xff\xff\x01",
    "map count over body": b"\xdf\xff\xff\xff\xff\x01",
    "str length over body": b"\xdb\xff\xff\xff\xff",
    "invalid utf-8": b"\xa2\xff\xfe",
    "utf-8 surrogate": b"\xa3\xed\xa0\x80",
    "int map key": b"\x81\x01\x02",
    "nil map key": b"\x81\xc0\x02",
    "array map key": b"\x81\x91\x01\x02",
    "negative ext code": b"\xd4\xfb\x00",
    "timestamp of 1 byte": b"\xd4\xff\x00",
    "timestamp nanoseconds over 1e9": b"\xd7\xff" + b"\xff" * 4 + b"\x00" * 4,
    "too deep": b"\x91" * 1024 + b"\x90",
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_bodies(core, name):
    body = BAD_BODIES[name]
    with pytest.raises(ValueError):  # msgpack agrees that it is bad
        unpackb(body)
    good = {"ok": 1}
    dec = core.FrameDecoder()
    with pytest.raises(FrameError) as info:
        dec.feed(core.encode_frame(good) + frame(body) + core.encode_frame(good))
    assert not isinstance(info.value, FrameTooLarge)
    assert info.value.messages == [good]  # what came before the bad frame is kept
    assert str(len(body)) in str(info.value)
    assert dec.buffered == 0
    with pytest.raises(FrameError, match="refuses"):
        dec.feed(core.encode_frame(good))
    dec.close()  # after an error, close is quiet


def test_oversized_length_from_header_alone(core):
    dec = core.FrameDecoder()
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\xff\xff\xff\xff")
    assert info.value.messages == []
    assert "4294967295" in str(info.value)
    with pytest.raises(FrameError):
        dec.feed(b"")


def test_oversized_length_split_header_keeps_earlier_messages(core):
    dec = core.FrameDecoder(max_frame_size=10)
    assert dec.feed(core.encode_frame("a") + b"\x00\x00") == ["a"]
    assert dec.buffered == 2
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\x00\x0b" + core.encode_frame("lost"))
    assert info.value.messages == []
    dec = core.FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(core.encode_frame("a") + core.encode_frame("b" * 20))
    assert info.value.messages == ["a"]


def test_limit_is_inclusive(core):
    body = msgpack.packb("x" * 9)
    assert len(body) == 10
    assert core.FrameDecoder(max_frame_size=10).feed(frame(body)) == ["x" * 9]
    with pytest.raises(FrameTooLarge):
        core.FrameDecoder(max_frame_size=9).feed(frame(body))


def test_nothing_allocated_for_claimed_sizes(core):
    """A length prefix or a container header is not a licence to allocate what it claims."""
    tracemalloc.start()
    try:
        dec = core.FrameDecoder(max_frame_size=2**32 - 1)
        dec.feed(b"\xf0\x00\x00\x00" + b"\x00" * 100)  # claims 4 GB; 100 bytes arrive
        assert dec.buffered == 104
        bad = core.FrameDecoder()
        with pytest.raises(FrameError):
            bad.feed(frame(b"\xdd\xff\xff\xff\xff" + b"\x01" * 64))  # "2**32 - 1 items"
        with pytest.raises(FrameError):
            core.FrameDecoder().feed(frame(b"\xdf\xff\xff\xff\xff" + b"\x01" * 64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_truncated_frame_at_close(core):
    data = core.encode_frame({"k": "tell"})
    for cut in (1, 4, len(data) - 1):
        dec = core.FrameDecoder()
        assert dec.feed(data[:cut]) == []
        assert dec.buffered == cut
        with pytest.raises(FrameError, match=f"{cut} bytes"):
            dec.close()
        assert dec.buffered == 0
        with pytest.raises(FrameError):
            dec.feed(data[cut:])
        dec.close()


def test_clean_close_then_refuses(core):
    dec = core.FrameDecoder()
    assert dec.feed(core.encode_frame(1)) == [1]
    dec.close()
    dec.close()
    with pytest.raises(FrameError):
        dec.feed(core.encode_frame(2))


@pytest.mark.parametrize("limit", [0, -1, 2**32])
def test_max_frame_size_validation(core, limit):
    with pytest.raises(ValueError):
        core.FrameDecoder(max_frame_size=limit)


def test_properties(core):
    assert core.FrameDecoder().max_frame_size == core.DEFAULT_MAX_FRAME_SIZE == 1 << 20
    dec = core.FrameDecoder(max_frame_size=2**32 - 1)
    assert dec.max_frame_size == 2**32 - 1
    assert dec.buffered == 0
    dec.feed(b"\x00\x00\x00\x05\x01")
    assert dec.buffered == 5


def test_feed_takes_buffers_and_copies_the_tail(core):
    data = bytearray(core.encode_frames([{"a": 1}, "bb", [3]]))
    dec = core.FrameDecoder()
    first = dec.feed(memoryview(data)[:9])
    held = dec.buffered
    data[9 - held : 9] = b"\xee" * held  # the caller reuses its buffer: the decoder kept a copy
    original = core.encode_frames([{"a": 1}, "bb", [3]])
    assert first + dec.feed(original[9:]) == [{"a": 1}, "bb", [3]]
    with pytest.raises(TypeError):
        dec.feed("not bytes")
    assert dec.feed(b"") == []  # a TypeError is no verdict on the stream


def test_string_cache_keeps_values_apart(core):
    """Short keys and values are cached by their bytes: many distinct ones must never mix up."""
    msgs = [{f"k{i % 300}": f"v{i % 257}", "k": i, "é": "é" * (i % 5)} for i in range(2000)]
    assert core.FrameDecoder().feed(core.encode_frames(msgs)) == msgs


def test_public_names(fast, pure):
    for name in ("encode_frame", "encode_frames", "FrameDecoder", "DEFAULT_MAX_FRAME_SIZE"):
        assert hasattr(fast, name) and hasattr(pure, name)
    assert fast.DEFAULT_MAX_FRAME_SIZE == pure.DEFAULT_MAX_FRAME_SIZE
    assert fast.FrameDecoder.__doc__ and fast.encode_frame.__doc__ and fast.FrameDecoder.feed.__doc__
