"""The MD5 hash ring, md5_shard and jump_hash.

* the compiled core's own MD5 (RFC 1321, in C) against hashlib;
* compiled and pure twins identical (hypothesis) for every result and every error;
* both against the golden vectors ``tests/vectors/ring.json`` (the Go side reads them too);
* a cross-check against uhashring's ketama mode;
* behaviour (the ``core`` fixture, so ``HERDRT_PURE=1`` runs it on the twin): keys move only
  where consistent hashing says, weights scale shares, errors.
"""

from __future__ import annotations

import array
import hashlib
import json
import pickle
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herdrt.errors import EmptyRingError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ring.json").read_text(encoding="utf-8"))
U64 = (1 << 64) - 1

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Node names: any text that UTF-8 can encode (no lone surrogates), non-ASCII included.
_chars = st.characters(blacklist_categories=("Cs",))
names = st.text(_chars, min_size=1, max_size=12)
keys = st.one_of(st.text(_chars, max_size=40), st.binary(max_size=80))


def _key_hash(key) -> int:
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return int.from_bytes(hashlib.md5(data).digest()[:4], "little")


def _key(obj: dict):
    ((kind, value),) = obj.items()
    return value if kind == "str" else bytes.fromhex(value)


@pytest.fixture(params=["fast", "pure"])
def impl(request):
    """Each implementation in turn (for the golden vectors)."""
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------
# The C MD5
# ---------------------------------------------------------------------------------------------

RFC1321_SUITE = {  # RFC 1321, appendix A.5
    b"": "d41d8cd98f00b204e9800998ecf8427e",
    b"a": "0cc175b9c0f1b6a831c399e269772661",
    b"abc": "900150983cd24fb0d6963f7d28e17f72",
    b"message digest": "f96b697d7cb7938d525a2f31aaf161d0",
    b"abcdefghijklmnopqrstuvwxyz": "c3fcd3d76192e4007dfb496cca67e13b",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789": "d174ab98d277d9f5a5611c2c9f419d9f",
    b"1234567890" * 8: "57edf4a22be3c955ac49da2e2107b67a",
}


@pytest.mark.parametrize("message", list(RFC1321_SUITE))
def test_md5_rfc1321_suite(fast, message):
    assert fast._md5_digest(message).hex() == RFC1321_SUITE[message]


@pytest.mark.parametrize("length", [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000])
def test_md5_block_boundaries(fast, length):
    data = bytes((i * 7 + length) & 0xFF for i in range(length))
    assert fast._md5_digest(data) == hashlib.md5(data).digest()


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([55, 56, 63, 64, 119, 120]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    )
)
def test_md5_matches_hashlib(fast, data):
    assert fast._md5_digest(data) == hashlib.md5(data).digest()
    assert fast._md5_digest(bytearray(data)) == hashlib.md5(data).digest()
    assert fast.md5_shard(data, U64) == int.from_bytes(hashlib.md5(data).digest(), "big") % U64


def test_md5_of_str_is_md5_of_its_utf8(fast):
    for text in ["", "plain", "ключ", "日本語", "🦬" * 20]:
        assert fast._md5_digest(text) == hashlib.md5(text.encode("utf-8")).digest()


def test_md5_of_buffers_hashes_their_bytes(fast):
    buf = array.array("i", range(50))  # 200 bytes, itemsize 4
    view = memoryview(buf)
    assert fast._md5_digest(view) == hashlib.md5(buf.tobytes()).digest()
    strided = memoryview(bytes(range(100)))[::3]  # not contiguous: hashed as bytes(view)
    assert fast._md5_digest(strided) == hashlib.md5(bytes(strided)).digest()


# ---------------------------------------------------------------------------------------------
# Compiled == pure
# ---------------------------------------------------------------------------------------------


@st.composite
def ring_specs(draw):
    nodes = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    vnodes = draw(st.sampled_from([4, 8, 12, 40, 160]))
    weights = None
    if draw(st.booleans()):
        weights = {node: draw(st.integers(1, 6)) for node in nodes if draw(st.booleans())}
    return nodes, vnodes, weights


def _same_ring(a, b):
    assert a.points() == b.points()
    assert a.nodes == b.nodes
    assert len(a) == len(b)
    assert a.vnodes == b.vnodes
    assert repr(a) == repr(b)
    for node in a.nodes:
        assert a.weight(node) == b.weight(node)


@FAST
@given(ring_specs(), st.lists(keys, min_size=1, max_size=25))
def test_ring_equivalence(fast, pure, spec, key_list):
    nodes, vnodes, weights = spec
    a = fast.HashRing(nodes, vnodes=vnodes, weights=weights)
    b = pure.HashRing(nodes, vnodes=vnodes, weights=weights)
    _same_ring(a, b)
    for key in key_list:
        assert a.lookup(key) == b.lookup(key)
        for n in (0, 1, 2, 3, len(nodes), len(nodes) + 2):
            assert a.lookup_n(key, n) == b.lookup_n(key, n)


@FAST
@given(
    st.lists(names, min_size=1, max_size=6, unique=True),
    st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(1, 4)), max_size=8),
    st.lists(keys, min_size=1, max_size=10),
)
def test_ring_equivalence_through_adds_and_removes(fast, pure, nodes, ops, key_list):
    a, b = fast.HashRing(vnodes=40), pure.HashRing(vnodes=40)
    for add, i, weight in ops:
        node = nodes[i % len(nodes)]
        if add and node not in b:
            a.add(node, weight)
            b.add(node, weight)
        elif not add and node in b:
            a.remove(node)
            b.remove(node)
        _same_ring(a, b)
        for key in key_list:
            if len(b):
                assert a.lookup(key) == b.lookup(key)
            assert a.lookup_n(key, 2) == b.lookup_n(key, 2)


@FAST
@given(keys, st.one_of(st.integers(1, 1000), st.integers(1, U64), st.integers(1, 1 << 80)))
def test_md5_shard_equivalence(fast, pure, key, n):
    assert fast.md5_shard(key, n) == pure.md5_shard(key, n)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, U64), st.one_of(st.integers(1, 100), st.integers(1, (1 << 32) - 1), st.integers(1, 1 << 40)))
def test_jump_hash_equivalence(fast, pure, key, n):
    assert fast.jump_hash(key, n) == pure.jump_hash(key, n)


def test_jump_hash_edges_equivalence(fast, pure):
    for key in (0, 1, (1 << 63) - 1, 1 << 63, U64, True):
        for n in (1, 2, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63, 1 << 70):
            assert fast.jump_hash(key, n) == pure.jump_hash(key, n), (key, n)


def _raises_alike(call_a, call_b):
    with pytest.raises(Exception) as ea:
        call_a()
    with pytest.raises(Exception) as eb:
        call_b()
    assert type(ea.value) is type(eb.value)
    assert str(ea.value) == str(eb.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.HashRing(["a"], vnodes=0),
        lambda m: m.HashRing(["a"], vnodes=6),
        lambda m: m.HashRing(["a", "a"]),
        lambda m: m.HashRing(["a", 3]),
        lambda m: m.HashRing(["a"], weights={"a": 0}),
        lambda m: m.HashRing(["a"], weights={"a": 1.5}),
        lambda m: m.HashRing(["a"], weights={"b": 2}),
        lambda m: m.HashRing().lookup("k"),
        lambda m: m.HashRing().lookup(42),
        lambda m: m.HashRing(["a"]).lookup(42),
        lambda m: m.HashRing(["a"]).lookup(None),
        lambda m: m.HashRing(["a"]).lookup_n("k", -1),
        lambda m: m.HashRing(["a"]).lookup_n(1.5, 1),
        lambda m: m.HashRing(["a"]).add("a"),
        lambda m: m.HashRing(["a"]).add("b", 0),
        lambda m: m.HashRing(["a"]).add(b"b"),
        lambda m: m.HashRing(["a"]).remove("b"),
        lambda m: m.HashRing(["a"]).weight("b"),
        lambda m: m.HashRing(["a"]).lookup("\ud800"),
        lambda m: m.md5_shard("k", 0),
        lambda m: m.md5_shard(3, 5),
        lambda m: m.jump_hash(1, 0),
        lambda m: m.jump_hash(-1, 5),
        lambda m: m.jump_hash(1 << 64, 5),
    ],
)
def test_same_errors(fast, pure, make):
    _raises_alike(lambda: make(fast), lambda: make(pure))


def test_empty_ring_lookup_n_zero_needs_no_node(fast, pure):
    # The twin answers [] before it hashes (or even type-checks) the key; so must the compiled one.
    for m in (fast, pure):
        assert m.HashRing().lookup_n("k", 3) == []
        assert m.HashRing(["a"]).lookup_n(object(), 0) == []


def test_failed_add_leaves_compiled_ring_unchanged(fast):
    ring = fast.HashRing(["a", "b"])
    before = ring.points()
    with pytest.raises(UnicodeEncodeError):
        ring.add("bad\ud800")
    assert ring.nodes == ["a", "b"]
    assert ring.points() == before


# ---------------------------------------------------------------------------------------------
# Golden vectors
# ---------------------------------------------------------------------------------------------


def test_vectors_format():
    assert VECTORS["format"] == "herdrt-ring-vectors/1"
    assert {ring["name"] for ring in VECTORS["rings"]} >= {"five-equal", "weighted-unicode", "tie", "zero-point-node"}


@pytest.mark.parametrize("case", VECTORS["rings"], ids=lambda case: case["name"])
def test_ring_vectors(impl, case):
    ring = impl.HashRing(case["nodes"], vnodes=case["vnodes"], weights=case["weights"])
    points = ring.points()
    assert len(points) == case["point_count"]
    head = [(entry["point"], entry["node"]) for entry in case["points_head"]]
    assert points[: len(head)] == head
    text = "".join(f"{p} {n}\n" for p, n in points)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == case["points_sha256"]
    for entry in case["lookups"]:
        key = _key(entry["key"])
        assert ring.lookup(key) == entry["owner"], entry
        assert ring.lookup_n(key, 3) == entry["lookup_n3"], entry


def test_md5_shard_vectors(impl):
    for entry in VECTORS["md5_shard"]:
        assert impl.md5_shard(_key(entry["key"]), int(entry["n"])) == int(entry["shard"]), entry


def test_jump_hash_vectors(impl):
    for entry in VECTORS["jump_hash"]:
        assert impl.jump_hash(int(entry["key"]), int(entry["n"])) == int(entry["bucket"]), entry


def test_tie_vector_really_ties():
    # The tie case must hold a shared point, won by the first name in UTF-8 order though it was
    # inserted first; otherwise it would not pin the tie rule.
    case = next(c for c in VECTORS["rings"] if c["name"] == "tie")
    winner, loser = case["nodes"]
    assert winner.encode() < loser.encode()
    winner_digest = hashlib.md5(f"{winner}-0".encode()).digest()
    assert _key_hash(f"{loser}-0") in {int.from_bytes(winner_digest[k : k + 4], "little") for k in (0, 4, 8, 12)}
    entry = next(e for e in case["lookups"] if e["key"] == {"str": f"{loser}-0"})
    assert entry["owner"] == winner


# ---------------------------------------------------------------------------------------------
# Against uhashring's ketama mode
# ---------------------------------------------------------------------------------------------


def test_matches_uhashring_ketama(core):
    uhashring = pytest.importorskip("uhashring")
    nodes = [f"10.0.0.{i}:11211" for i in range(1, 9)]
    ours = core.HashRing(nodes)  # vnodes=160 = uhashring's default 40 digests x 4 points
    theirs = uhashring.HashRing(nodes, hash_fn="ketama")
    # Same continuum. uhashring keeps duplicate points in its list (insort) and gives a shared
    # point to the node inserted last; we keep one and give it to the first name in UTF-8 order.
    # Points shared by two nodes are excluded (none are expected for these names, but the rule
    # differs by design).
    their_points = Counter(p for p, _ in theirs.get_points())
    shared = {p for p, c in their_points.items() if c > 1}
    assert [pn for pn in ours.points() if pn[0] not in shared] == sorted(
        {(p, n) for p, n in theirs.get_points() if p not in shared}
    )
    # Same owners. uhashring looks up with bisect_right (a key hashing exactly onto a point goes
    # to the NEXT point); we use the first point >= hash, as libketama does. Such keys are excluded.
    point_set = set(their_points)
    checked = 0
    for i in range(3000):
        key = f"item-{i}"
        if _key_hash(key) in point_set:
            continue
        assert ours.lookup(key) == theirs.get_node(key), key
        checked += 1
    assert checked > 2990
    # And the excluded case is real: "<node>-0" hashes exactly onto one of that node's points.
    exact = f"{nodes[3]}-0"
    assert _key_hash(exact) in point_set
    assert ours.lookup(exact) == nodes[3]


def test_uhashring_differs_on_ties_by_design(core):
    uhashring = pytest.importorskip("uhashring")
    case = next(c for c in VECTORS["rings"] if c["name"] == "tie")
    winner, loser = case["nodes"]
    ours = core.HashRing([winner, loser], vnodes=4)
    theirs = uhashring.HashRing([winner, loser], hash_fn="ketama", vnodes=1)
    shared = _key_hash(f"{loser}-0")
    assert dict(ours.points())[shared] == winner
    assert dict(theirs.get_points())[shared] == loser  # last insert wins there


# ---------------------------------------------------------------------------------------------
# Behaviour (the active core)
# ---------------------------------------------------------------------------------------------

KEYS = [f"key-{i}" for i in range(6000)]


def _owners(ring):
    return {key: ring.lookup(key) for key in KEYS}


def test_adding_a_node_moves_about_one_share_and_only_to_it(core):
    nodes = [f"node-{i}" for i in range(7)]
    ring = core.HashRing(nodes)
    before = _owners(ring)
    ring.add("node-new")
    after = _owners(ring)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "node-new" for k in moved)
    share = len(moved) / len(KEYS)
    assert 0.5 / 8 < share < 1.6 / 8  # about 1/(n+1)


def test_removing_a_node_moves_only_its_keys(core):
    nodes = [f"node-{i}" for i in range(6)]
    ring = core.HashRing(nodes)
    before = _owners(ring)
    ring.remove("node-2")
    after = _owners(ring)
    for key in KEYS:
        if before[key] == "node-2":
            assert after[key] != "node-2"
        else:
            assert after[key] == before[key]
    assert "node-2" not in ring and len(ring) == 5


def test_weights_scale_shares(core):
    ring = core.HashRing(["a", "b", "c"], weights={"a": 1, "b": 2, "c": 4})
    counts = Counter(_owners(ring).values())
    points = Counter(node for _, node in ring.points())
    assert points["a"] < points["b"] < points["c"]
    assert counts["a"] < counts["b"] < counts["c"]
    assert 2.5 < counts["c"] / counts["a"] < 6.5
    assert ring.weight("c") == 4


def test_equal_weights_give_vnodes_points_each(core):
    ring = core.HashRing(["a", "b", "c"], vnodes=40)
    per_node = Counter(node for _, node in ring.points())
    assert all(38 <= c <= 40 for c in per_node.values())  # 40, less any point lost to a tie
    points = [p for p, _ in ring.points()]
    assert points == sorted(set(points))


def test_lookup_is_first_point_at_or_after_hash_wrapping(core):
    ring = core.HashRing(["a", "b", "c"], vnodes=8)
    points = ring.points()
    for key in KEYS[:500]:
        h = _key_hash(key)
        expected = next((n for p, n in points if p >= h), points[0][1])
        assert ring.lookup(key) == expected
        assert ring.lookup(key.encode()) == expected
        assert ring.lookup(bytearray(key.encode())) == expected
        assert ring.lookup(memoryview(key.encode())) == expected


def test_lookup_n(core):
    ring = core.HashRing(["a", "b", "c", "d"])
    for key in KEYS[:200]:
        three = ring.lookup_n(key, 3)
        assert len(three) == len(set(three)) == 3
        assert three[0] == ring.lookup(key)
        assert ring.lookup_n(key, 10) == ring.lookup_n(key, 4)
        assert sorted(ring.lookup_n(key, 4)) == ["a", "b", "c", "d"]
        assert ring.lookup_n(key, 3) == ring.lookup_n(key, 4)[:3]
        assert ring.lookup_n(key, 0) == []


def test_empty_ring(core):
    ring = core.HashRing()
    with pytest.raises(EmptyRingError):
        ring.lookup("k")
    with pytest.raises(LookupError):  # EmptyRingError is a LookupError
        ring.lookup(b"k")
    ring.add("a")
    ring.remove("a")
    with pytest.raises(EmptyRingError):
        ring.lookup("k")
    assert ring.points() == [] and len(ring) == 0 and ring.nodes == []


@pytest.mark.parametrize("bad", [42, 4.2, None, ["k"], ("k",), object()])
def test_bad_key_types(core, bad):
    ring = core.HashRing(["a"])
    with pytest.raises(TypeError, match="hash keys must be str or bytes"):
        ring.lookup(bad)
    with pytest.raises(TypeError):
        ring.lookup_n(bad, 1)
    with pytest.raises(TypeError):
        core.md5_shard(bad, 3)


def test_ring_bookkeeping(core):
    ring = core.HashRing(["x", "y"], vnodes=8, weights={"y": 3})
    ring.add("z", weight=2)
    assert ring.nodes == ["x", "y", "z"]
    assert [ring.weight(n) for n in ring.nodes] == [1, 3, 2]
    assert "y" in ring and "w" not in ring and len(ring) == 3
    assert ring.vnodes == 8
    assert repr(ring) == "HashRing(['x', 'y', 'z'], vnodes=8)"
    with pytest.raises(ValueError):
        ring.add("x")
    with pytest.raises(KeyError):
        ring.remove("w")
    clone = pickle.loads(pickle.dumps(ring))
    assert clone.points() == ring.points() and clone.nodes == ring.nodes


def test_md5_shard_and_jump_hash(core):
    assert core.md5_shard("abc", 1 << 128) == int("900150983cd24fb0d6963f7d28e17f72", 16)
    assert core.md5_shard(b"abc", 1000) == int("900150983cd24fb0d6963f7d28e17f72", 16) % 1000
    assert all(0 <= core.md5_shard(k, 7) < 7 for k in KEYS[:100])
    # Jump hash: buckets in range; growing n only moves keys into the new bucket.
    for key in range(0, 1 << 64, (1 << 64) // 997):
        a, b = core.jump_hash(key, 10), core.jump_hash(key, 11)
        assert 0 <= a < 10 and b in (a, 10)
    assert core.jump_hash(U64, 1) == 0
