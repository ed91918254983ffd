"""Wire messages for the framing benchmarks: protocol-2+ envelopes (msgpack arrays, PROTOCOL.md).

    TELL  [2, dest_node, target, body]            target: actor name, or [kind, key]
    TELLS [15, dest_node, target, [body, ...]]
    ASK   [3, dest_node, target, body, src_node, corr]
    REPLY [6, dest_node, corr, ok, value]

Bodies are application values, mostly small dicts and lists. ``small(i)`` cycles through a TELL,
an ASK, a REPLY and a TELL to a keyed actor, with small bodies (26-50 bytes of msgpack in all);
``large(i)`` alternates an ASK carrying a reading (987-990 bytes) and a TELLS of 16 small dict bodies
(664-667 bytes); ``batch(i)`` is a TELLS of 400 such bodies (about 17 KiB, what a busy link
coalesces into one frame).
"""

from __future__ import annotations

NODES = ("Bailey", "Bona", "Campbell", "Clark", "Jaquez")


def small(i: int) -> list:
    dest, src = NODES[i % 5], NODES[(i + 2) % 5]
    kind = i % 4
    if kind == 0:
        return [2, dest, "counter", {"op": "add", "n": i % 1000}]
    if kind == 1:
        return [3, dest, "sessions", {"user": f"u{i % 500}", "op": "get"}, src, 100_000 + i]
    if kind == 2:
        return [6, dest, 100_000 + i, True, [i % 100, 2.5, "ok"]]
    return [2, dest, ["session", f"user-{i % 500}"], ["touch", 1700000000 + i]]


def _reading(i: int) -> dict:
    return {
        "readings": [20.0 + (i + j) % 17 * 0.25 for j in range(52)],
        "counts": list(range(i % 7, i % 7 + 60)),
        "tags": {"site": "north", "rack": "r12", "unit": "celsius", "ok": True},
        "note": "calibrated against the reference probe; drift within tolerance " * 3,
        "blob": bytes(range(160)),
    }


def _place(k: int) -> dict:
    return {"client": f"c{k % 300}", "lat": 34.068930 + k % 64 * 1e-4, "lon": -118.445127, "t": k}


def large(i: int) -> list:
    dest, src = NODES[i % 5], NODES[(i + 2) % 5]
    if i % 2 == 0:
        return [3, dest, f"sensor-{i % 50}", _reading(i), src, 100_000 + i]
    return [15, dest, "places", [_place(i + j) for j in range(16)]]


def batch(i: int) -> list:
    return [15, NODES[i % 5], "places", [_place(i + j) for j in range(400)]]
