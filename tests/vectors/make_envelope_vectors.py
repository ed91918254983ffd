"""Generate ``tests/vectors/envelopes.json``: golden vectors of frames and link envelopes.

    python tests/vectors/make_envelope_vectors.py      # rewrites envelopes.json next to this file

Every byte comes from Python: envelopes are built with the constructors of ``herdrt.herd.protocol``
and framed with ``herdrt.core.encode_frame``; the link sessions (transcript, AUTH MACs, record
keys and sealed records) come from ``herdrt.herd.handshake``.
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

from herdrt.core import encode_frame  # noqa: E402
from herdrt.herd import protocol as P  # noqa: E402
from herdrt.herd.handshake import LinkSession, transcript  # noqa: E402

FORMAT = "herdrt-envelope-vectors/2"
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
    "extended_envelopes": (
        "envelopes with fields a later version may append: the named parser must accept value and "
        "read from it exactly what it reads from base (the same envelope without the extra fields)"
    ),
    "link_sessions": (
        "transcript = 'herdrt-link-v3' || u32be(version) || f(dialer) || f(dialer_nonce) || f(acceptor) "
        "|| f(acceptor_nonce), f(x) = u16be(len(x)) || x; prk = HMAC-SHA256(secret, transcript); "
        "dialer_mac = HMAC-SHA256(prk, 'dialer auth'), acceptor_mac = HMAC-SHA256(prk, 'acceptor auth'), "
        "dialer_key = HMAC-SHA256(prk, 'dialer to acceptor'), acceptor_key = HMAC-SHA256(prk, 'acceptor to dialer'); "
        "records: what the sender ('dialer' or 'acceptor') writes for plain_hex as its record number seq "
        "(u32be(len(ciphertext)) || AES-256-GCM(sender's key, nonce = 4 zero bytes || u64be(seq), plain, "
        "aad = the 4 length bytes)); a big record gives plain as bytes(i % 251 for i in range(plain_len)) "
        "and the SHA-256 of everything sealed (two records: 65536 bytes, then the rest)"
    ),
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
        return (
            {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v)
            if isinstance(v, str)
            else float(v)
        )
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

#: (secret, version, dialer, dialer_nonce, acceptor, acceptor_nonce) for the link-session vectors.
SESSION_CASES = [
    (SECRET, 3, "Clark", NONCE_A, "Bona", NONCE_B),
    (SECRET, 3, "Bona", NONCE_B, "Clark", NONCE_A),  # the same pair the other way round
    (b"", 3, "a", bytes(16), "b", b"\xff" * 16),
    (bytes(range(200)), 70000, "Zoë-节点", b"\x5a" * 16, "~cli-1", bytes(range(100, 116))),
]
#: Plaintexts sealed in each case: (sender, plaintext) in the order written.
RECORDS = [
    ("dialer", encode_frame([P.TELL, "Bona", "echo", "hi"])),
    ("dialer", encode_frame(P.heartbeat(1, 1700000000.25)) + encode_frame(P.bye("shutdown"))),
    ("acceptor", b""),
    ("acceptor", encode_frame([P.REPLY, "Clark", 7, True, [1, 2.5, b"\x00"]])),
]
BIG_RECORD = 70000


def _session_cases():
    import hashlib

    cases = []
    for secret, version, dialer, dnonce, acceptor, anonce in SESSION_CASES:
        script = transcript(version, dialer, dnonce, acceptor, anonce)
        d, a = LinkSession(secret, script, dialer=True), LinkSession(secret, script, dialer=False)
        assert d.own_mac == a.peer_mac and d.send_key == a.recv_key
        sealers = {"dialer": d.sealer(), "acceptor": a.sealer()}
        records = []
        for sender, plain in RECORDS:
            sealer = sealers[sender]
            seq = sealer.seq
            records.append(
                {"sender": sender, "seq": seq, "plain_hex": plain.hex(), "record_hex": sealer.seal(plain).hex()}
            )
        big = bytes(i % 251 for i in range(BIG_RECORD))
        sealer = sealers["dialer"]
        seq = sealer.seq
        cases.append(
            {
                "secret_hex": secret.hex(),
                "version": version,
                "dialer": dialer,
                "dialer_nonce_hex": dnonce.hex(),
                "acceptor": acceptor,
                "acceptor_nonce_hex": anonce.hex(),
                "transcript_hex": script.hex(),
                "dialer_mac_hex": d.own_mac.hex(),
                "acceptor_mac_hex": a.own_mac.hex(),
                "dialer_key_hex": d.send_key.hex(),
                "acceptor_key_hex": a.send_key.hex(),
                "records": records,
                "big_record": {
                    "sender": "dialer",
                    "seq": seq,
                    "plain_len": BIG_RECORD,
                    "sealed_sha256": hashlib.sha256(sealer.seal(big)).hexdigest(),
                },
            }
        )
    return cases


def _valid():
    mac = LinkSession(SECRET, transcript(3, "Clark", NONCE_A, "Bona", NONCE_B), dialer=True).own_mac
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
        ("node-tell", [P.TELL, "Bona", "echo", b"\x01\x02"]),
        ("node-tells", [P.TELLS, "Bona", "sink", [1, "two", None, [3.5, {"k": b"v"}]]]),
        ("node-tell-src", [P.TELL, "Bona", "echo", b"\x01\x02", "Clark"]),
        ("node-tells-src", [P.TELLS, "Bona", "sink", [1, "two"], "Clark"]),
        ("node-send-open", [P.SEND, "Bona", "sink", [], "Clark", 123456789, 0]),
        ("node-send", [P.SEND, "Bona", ["session", "user-42"], [1, "two", {"k": 3.5}], "Clark", 123456789, 4096]),
        ("node-credit", [P.CREDIT, "Clark", 123456789, 4099, 8192, None]),
        ("node-credit-closed", [P.CREDIT, "Clark", 123456789, 10, 10, ["ActorStopped", "actor sink@Bona stopped"]]),
        (
            "node-dead-letters",
            [
                P.DEAD_LETTERS,
                "Clark",
                "Bona",
                [["sink@Bona", "mailbox_full", 20], ["[session, k1]", "unknown_actor", 1]],
            ],
        ),
        ("node-ask", [P.ASK, "Bona", "svc", {"a": 1, "b": [1.5, True, False]}, "Clark", 17]),
        ("node-ask-keyed", [P.ASK, "Bona", ["counter", "k1"], "incr", "~cli-1", 0]),
        ("node-reply-error", [P.REPLY, "Clark", 17, False, ["ActorNotFound", "no actor svc on Bona"]]),
        (
            "node-unknown-kind-ints",
            [
                42,
                -1,
                -32,
                -33,
                -128,
                -129,
                -32769,
                -(2**31) - 1,
                -(2**63),
                127,
                128,
                255,
                256,
                65535,
                65536,
                2**32,
                2**64 - 1,
            ],
        ),
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
    """(name, envelope, parser): the parser of herdrt.herd.protocol that must refuse it."""
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
        ("auth-too-long", [P.AUTH, mac, None], "auth"),  # HELLO and AUTH are exact
        ("error-code-int", [P.ERROR, None, 3, "m"], "error"),
        ("error-three", [P.ERROR, None, "auth"], "error"),
        ("heartbeat-four", [P.HEARTBEAT, 1, 2.0, 3.0], "heartbeat"),
        ("heartbeat-seq-float", [P.HEARTBEAT, 1.0, 2.0], "heartbeat"),
        ("heartbeat-time-str", [P.HEARTBEAT, 1, "now"], "heartbeat"),
        ("heartbeat-hold-bool", [P.HEARTBEAT, 1, 2.0, 3.0, True], "heartbeat"),
        ("bye-reason-int", [P.BYE, 0], "bye"),
        ("bye-empty-array", [], "bye"),
    ]


def _extended():
    """(name, envelope, parser, base): the parser reads from envelope what it reads from base."""
    return [
        ("error-extra", [*P.error(P.E_AUTH, "no"), "later", 1], "error", P.error(P.E_AUTH, "no")),
        ("error-corr-extra", [*P.error(P.E_FRAME, "big", corr_id=7), None], "error", P.error(P.E_FRAME, "big", 7)),
        ("heartbeat-extra", [*P.heartbeat(8, 2.5, 1.5, 0.25), "later"], "heartbeat", P.heartbeat(8, 2.5, 1.5, 0.25)),
        # ints where floats are specified
        ("heartbeat-extra-ints", [P.HEARTBEAT, 8, 2, 1, 0, {"k": 1}, None], "heartbeat", P.heartbeat(8, 2.0, 1.0, 0.0)),
        ("bye-extra", [*P.bye("shutdown"), {"later": True}], "bye", P.bye("shutdown")),
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
    extended = [
        {"name": n, "parser": p, "value": tag(env), "body_hex": encode_frame(env)[4:].hex(), "base": tag(base)}
        for n, env, p, base in _extended()
    ]
    return {
        "format": FORMAT,
        "about": (
            "Golden vectors of herdrt frames and link envelopes (PROTOCOL.md (Framing), "
            "PROTOCOL.md (Links)). Generated by tests/vectors/make_envelope_vectors.py from "
            "herdrt.herd.protocol and herdrt.core.encode_frame; every implementation must reproduce them."
        ),
        "conventions": CONVENTIONS,
        "max_frame_size": 1 << 20,
        "valid": valid,
        "bad_frames": bad_frames,
        "bad_envelopes": bad_envelopes,
        "extended_envelopes": extended,
        "link_sessions": _session_cases(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main() -> None:
    text = render()
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
