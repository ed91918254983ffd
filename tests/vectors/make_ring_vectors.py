"""Regenerate ``tests/vectors/ring.json`` from the reference twin ``herdrt.core._pure``.

    python tests/vectors/make_ring_vectors.py          # rewrites ring.json next to this file

The file is a contract (PROTOCOL.md, "Hash ring"): Python and Go tests both read it. Only
regenerate it on a deliberate, versioned change to the ring algorithm — never to make a test pass.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from herdrt.core import _pure

FORMAT = "herdrt-ring-vectors/1"
OUT = Path(__file__).with_name("ring.json")
HEAD = 16  # points listed in full at the start of each continuum


def key_obj(key: str | bytes) -> dict:
    return {"str": key} if isinstance(key, str) else {"hex": key.hex()}


def continuum_sha256(points) -> str:
    text = "".join(f"{point} {node}\n" for point, node in points)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_tie() -> tuple[str, str]:
    """Two names "tie-<j>" whose single digest ("tie-<j>-0") shares a 32-bit point (birthday search)."""
    seen: dict[int, int] = {}
    j = 0
    while True:
        digest = hashlib.md5(f"tie-{j}-0".encode()).digest()
        for k in range(0, 16, 4):
            point = int.from_bytes(digest[k : k + 4], "little")
            if seen.get(point, j) != j:
                return f"tie-{seen[point]}", f"tie-{j}"
            seen[point] = j
        j += 1


COMMON_KEYS: list[str | bytes] = [
    *(f"user:{i}" for i in range(12)),
    "",
    "a",
    "ключ-1",
    "キー/42",
    "🔑 key",
    "x" * 55,  # the longest key that fits one MD5 block
    "y" * 56,  # the shortest that needs two
    b"",
    b"\x00",
    bytes.fromhex("ff00ff00"),
    bytes(range(64)),
    "é".encode("latin-1"),  # not UTF-8: keys are bytes, any bytes
]


def ring_case(name: str, nodes: list[str], vnodes: int, weights: dict[str, int] | None, extra_keys=()) -> dict:
    ring = _pure.HashRing(nodes, vnodes=vnodes, weights=weights)
    points = ring.points()
    # Keys that hash exactly onto a point ("<node>-0" is hashed like the point itself): they pin
    # "first point >= hash" (not ">"). Plus one key past the last point, to pin the wrap to 0.
    total = sum(ring.weight(node) for node in nodes)
    exact = [f"{node}-0" for node in nodes if vnodes // 4 * len(nodes) * ring.weight(node) >= total]
    wrap = next(
        f"wrap-{i}"
        for i in range(10**6)
        if int.from_bytes(hashlib.md5(f"wrap-{i}".encode()).digest()[:4], "little") > points[-1][0]
    )
    keys = [*COMMON_KEYS, *exact, wrap, *extra_keys]
    return {
        "name": name,
        "nodes": nodes,
        "vnodes": vnodes,
        "weights": {node: ring.weight(node) for node in nodes},
        "point_count": len(points),
        "points_head": [{"point": point, "node": node} for point, node in points[:HEAD]],
        "points_sha256": continuum_sha256(points),
        "lookups": [
            {"key": key_obj(key), "owner": ring.lookup(key), "lookup_n3": ring.lookup_n(key, 3)} for key in keys
        ],
    }


def build() -> dict:
    loser_by_bytes, winner_by_bytes = sorted(find_tie(), key=lambda s: s.encode(), reverse=True)
    rng = random.Random(20240601)
    rings = [
        ring_case("five-equal", [f"10.0.0.{i}:11211" for i in range(1, 6)], 160, None),
        ring_case(
            "weighted-unicode",
            ["alpha", "βeta", "ガンマ", "delta-🦬"],
            160,
            {"alpha": 1, "βeta": 2, "ガンマ": 3, "delta-🦬": 1},
        ),
        ring_case("twenty-vnodes-40", [f"node-{i:02d}" for i in range(20)], 40, None),
        # A node whose weight share rounds down to zero digests: it owns nothing, and
        # lookup_n(key, 3) can return fewer names than asked.
        ring_case("zero-point-node", ["big", "small"], 4, {"big": 1000, "small": 1}),
        # Two nodes drawing the same point. The winner by UTF-8 order is listed FIRST (inserted
        # first), so "last insert wins" implementations (uhashring) disagree on it: the key
        # "<loser>-0" hashes exactly onto the shared point and must go to the winner.
        ring_case("tie", [winner_by_bytes, loser_by_bytes], 4, None),
    ]
    shard_keys: list[str | bytes] = ["", "user:1", "ключ", b"\x00\x01\x02", "z" * 100]
    shard_ns = [1, 2, 3, 7, 10, 1000, 65536, (1 << 32) + 15, (1 << 63) + 3, (1 << 64) - 1]
    md5_shard = [
        {"key": key_obj(key), "n": str(n), "shard": str(_pure.md5_shard(key, n))}
        for key in shard_keys
        for n in shard_ns
    ]
    jump_keys = [0, 1, 2, 255, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, *(rng.getrandbits(64) for _ in range(6))]
    jump_ns = [1, 2, 3, 10, 1000, 65536, (1 << 31) - 1, (1 << 32) - 1]
    jump_hash = [
        {"key": str(key), "n": str(n), "bucket": str(_pure.jump_hash(key, n))} for key in jump_keys for n in jump_ns
    ]
    return {
        "format": FORMAT,
        "about": (
            "Golden vectors of the herdrt hash ring (PROTOCOL.md, section 'Hash ring'). Generated by "
            "tests/vectors/make_ring_vectors.py from herdrt.core._pure; every implementation must reproduce them."
        ),
        "conventions": {
            "key": "an object with one field: 'str' (hash its UTF-8 bytes) or 'hex' (the raw bytes, hex-encoded)",
            "integers": (
                "md5_shard n/shard and jump_hash key/n/bucket are decimal strings; points are JSON numbers (u32)"
            ),
            "weights": "every node's integer weight, given explicitly (1 unless stated)",
            "points_head": f"the first {HEAD} entries of the sorted continuum (after the tie rule) as {{point, node}}",
            "points_sha256": "SHA-256 hex of the whole continuum as UTF-8 text, one line '<point> <node>\\n' per point",
            "lookup_n3": "lookup_n(key, 3): up to 3 distinct nodes in ring order, owner first",
        },
        "rings": rings,
        "md5_shard": md5_shard,
        "jump_hash": jump_hash,
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
