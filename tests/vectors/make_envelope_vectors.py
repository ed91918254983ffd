"""Generate ``tests/vectors/envelopes.json``: golden vectors of frames and link envelopes.

    python tests/vectors/make_envelope_vectors.py      # rewrites envelopes.json next to this file

Every byte comes from Python: envelopes are built with the constructors of ``herdrt.protocol``
and framed with ``herdrt.core.encode_frame``; the AUTH MACs come from ``herdrt.protocol.auth_mac``.
The Python tests (``tests/test_vectors_envelopes.py``) and the Go tests (``go-interop/``) both read
the file, so neither side can drift. Output is deterministic; ``build()`` is imported by the
Python test to check that the file on disk is what the code produces today.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from herdrt import protocol as P  # noqa: E402
from herdrt.core import encode_frame  # noqa: E402

FORMAT = "herdrt-envelope-vectors/1"
OUT = HERE / "envelopes.json"

CONVENTIONS = {
    "value": (
        "a decoded msgpack value as a tagged object with exactly one field: "
        "{'nil': null}, {'bool': b}, {'int': '<decimal>'}, {'float': x} (or the strings 'NaN', "
        "'Infinity', '-Infinity'), {'str': s}, {'bin': '<hex>'}, {'array': [values]}, "
        "{'map': [[key, value], ...]} (keys tagged too, in encoding order)"
    ),
    "body_hex": "the msgpack body (lowercase hex), what a ZeroMQ message carries",
    "frame_hex": "the TCP frame: 4-byte big-endian body length, then the body",
    "kind": "the envelope kind (first array element) or null when the value is not an envelope",
    "valid": "decode body_hex to value, and encode value to exactly body_hex / frame_hex",
    "bad_frames": "frames every decoder must refuse (error 'too_large': from the header alone)",
    "bad_envelopes": "well-formed bodies whose envelope the named parser must refuse",
    "auth_macs": "HMAC-SHA256(secret, 'herdrt-link-v1' || peer_nonce || own_name || 0x00 || peer_name)",
}


def tag(v):
    """The tagged JSON form of a decoded msgpack value."""
    if v is None:
        return {"nil": None}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        if math.isnan(v):
            return {"float": "NaN"}
        if math.isinf(v):
            return {"float": "Infinity" if v > 0 else "-Infinity"}
        return {"float": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bin": v.hex()}
    if isinstance(v, (list, tuple)):
        return {"array": [tag(x) for x in v]}
    if isinstance(v, dict):
        return {"map": [[tag(k), tag(x)] for k, x in v.items()]}
    raise TypeError(f"no tagged form for {type(v).__name__}")


def untag(t):
    """The Python value of a tagged JSON form (inverse of :func:`tag`)."""
    ((name, v),) = t.items()
    if name == "nil":
        return None
    if name == "bool":
        return v
    if name == "int":
        return int(v)
    if name == "float":
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) if isinstance(v, str) else float(v)
    if name == "str":
        return v
    if name == "bin":
        return bytes.fromhex(v)
    if name == "array":
        return [untag(x) for x in v]
    if name == "map":
        return {untag(k): untag(x) for k, x in v}
    raise ValueError(f"unknown tag {name!r}")


NONCE_A = bytes(range(16))
NONCE_B = bytes(range(16, 32))
SECRET = b"correct horse battery"

#: (secret, peer_nonce, own_name, peer_name) for the AUTH MAC vectors.
MAC_CASES = [
    (SECRET, NONCE_B, "Clark", "Bona"),
    (SECRET, NONCE_A, "Bona", "Clark"),
    (b"", bytes(16), "a", "b"),
    (bytes(range(200)), b"\xff" * 16, "Zoë-节点", "node-2"),
]


def _valid():
    mac = P.auth_mac(SECRET, NONCE_B, "Clark", "Bona")
    return [
        ("hello-clark", P.hello("Clark", NONCE_A)),
        ("hello-unicode-name", P.hello("Zoë-节点", NONCE_B)),
        ("hello-version-300", P.hello("n", b"\xff" * 16, version=300)),
        ("auth-clark-to-bona", P.auth(mac)),
        ("error-auth-link", P.error(P.E_AUTH, "authentication failed: the shared secret differs")),
        ("error-corr-int", P.error(P.E_OVERFLOW, "mailbox full", corr_id=42)),
        ("error-corr-str-unknown-code", P.error("teapot", "I am a teapot; " * 3, corr_id="req-7")),
        ("error-corr-negative", P.error(P.E_PROTOCOL, "", corr_id=-200)),
        ("error-corr-u64", P.error(P.E_TIMEOUT, "late", corr_id=2**64 - 1)),
        ("error-corr-bin", P.error(P.E_FRAME, "bad", corr_id=b"\x00\x01")),
        ("heartbeat-7", P.heartbeat(7, 1700000000.25)),
        ("heartbeat-8-echo", P.heartbeat(8, 1700000000.75, echo_time=1700000000.5, hold=0.001)),
        ("heartbeat-big-seq", P.heartbeat(70000, 0.0)),
        ("heartbeat-u64-seq", P.heartbeat(2**40, -1.5, echo_time=-0.0, hold=1e-300)),
        ("bye-shutdown", P.bye("shutdown")),
        ("bye-empty", P.bye("")),
        ("bye-long", P.bye("replaced by a newer link " * 12)),
        ("node-tell", [P.TELL, "echo@Bona", b"\x01\x02", None]),
        ("node-tells", [P.TELLS, "Bona", "sink", [1, "two", None, [3.5, {"k": b"v"}]]]),
        ("node-ask", [P.ASK, 17, "svc", {"a": 1, "b": [1.5, True, False]}, 2.5]),
        ("node-unknown-kind-ints", [42, -1, -32, -33, -128, -129, -32769, -(2**31) - 1, -(2**63), 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1]),
        ("node-kind-uint8", [200, "x" * 31, "y" * 32, b"", b"z" * 256, [], {}]),
        ("map-not-envelope", {"k": "tell", "n": 1}),
        ("nested", [7, [[[[]]]], {"m": {"bin-key": b"v"}}, "é" * 40]),
    ]


def _bad_frames():
    """(name, frame, error): error is 'too_large' for a header over the 1 MiB default, else 'frame'."""

    def framed(body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + body

    return [
        ("trailing-bytes", framed(b"\x01\x02"), "frame"),
        ("empty-body", framed(b""), "frame"),
        ("invalid-utf8-str", framed(b"\xa2\xff\xfe"), "frame"),
        ("int-map-key", framed(b"\x81\x01\x02"), "frame"),
        ("array-short", framed(b"\x94\x00\x01"), "frame"),
        ("str8-overclaims", framed(b"\xd9\xff\x61"), "frame"),
        ("reserved-code-c1", framed(b"\xc1"), "frame"),
        ("over-1mib", (1 << 20 | 1).to_bytes(4, "big") + b"\x90", "too_large"),
    ]


def _bad_envelopes():
    """(name, envelope, parser): the parser of herdrt.protocol that must refuse it."""
    mac = bytes(32)
    return [
        ("hello-nonce-str", [P.HELLO, 1, "a", "0123456789abcdef"], "hello"),
        ("hello-nonce-15", [P.HELLO, 1, "a", bytes(15)], "hello"),
        ("hello-name-empty", [P.HELLO, 1, "", bytes(16)], "hello"),
        ("hello-name-65", [P.HELLO, 1, "n" * 65, bytes(16)], "hello"),
        ("hello-name-bin", [P.HELLO, 1, b"a", bytes(16)], "hello"),
        ("hello-version-float", [P.HELLO, 1.0, "a", bytes(16)], "hello"),
        ("hello-too-long", [P.HELLO, 1, "a", bytes(16), None], "hello"),
        ("auth-mac-31", [P.AUTH, bytes(31)], "auth"),
        ("auth-kind-bool", [True, mac], "auth"),
        ("auth-mac-str", [P.AUTH, "x" * 32], "auth"),
        ("error-code-int", [P.ERROR, None, 3, "m"], "error"),
        ("error-three", [P.ERROR, None, "auth"], "error"),
        ("heartbeat-four", [P.HEARTBEAT, 1, 2.0, 3.0], "heartbeat"),
        ("heartbeat-seq-float", [P.HEARTBEAT, 1.0, 2.0], "heartbeat"),
        ("heartbeat-time-str", [P.HEARTBEAT, 1, "now"], "heartbeat"),
        ("heartbeat-hold-bool", [P.HEARTBEAT, 1, 2.0, 3.0, True], "heartbeat"),
        ("bye-reason-int", [P.BYE, 0], "bye"),
        ("bye-empty-array", [], "bye"),
    ]


def build() -> dict:
    valid = []
    for name, env in _valid():
        frame = encode_frame(env)
        kind = env[0] if isinstance(env, list) and env and type(env[0]) is int else None
        valid.append(
            {"name": name, "kind": kind, "value": tag(env), "body_hex": frame[4:].hex(), "frame_hex": frame.hex()}
        )
    bad_frames = [{"name": n, "frame_hex": f.hex(), "error": e} for n, f, e in _bad_frames()]
    bad_envelopes = [
        {"name": n, "parser": p, "value": tag(env), "body_hex": encode_frame(env)[4:].hex()}
        for n, env, p in _bad_envelopes()
    ]
    macs = [
        {
            "secret_hex": s.hex(),
            "peer_nonce_hex": nonce.hex(),
            "own_name": own,
            "peer_name": peer,
            "mac_hex": P.auth_mac(s, nonce, own, peer).hex(),
        }
        for s, nonce, own, peer in MAC_CASES
    ]
    return {
        "format": FORMAT,
        "about": (
            "Golden vectors of herdrt frames and link envelopes (PROTOCOL.md (Framing), "
            "PROTOCOL.md (Links)). Generated by tests/vectors/make_envelope_vectors.py from "
            "herdrt.protocol and herdrt.core.encode_frame; every implementation must reproduce them."
        ),
        "conventions": CONVENTIONS,
        "max_frame_size": 1 << 20,
        "valid": valid,
        "bad_frames": bad_frames,
        "bad_envelopes": bad_envelopes,
        "auth_macs": macs,
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main() -> None:
    text = render()
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
