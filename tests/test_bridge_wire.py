"""The bridge's input rules (herdrt.bridge.wire), checked without a socket."""

from __future__ import annotations

import msgpack
import pytest

from herdrt.bridge import wire
from herdrt.herd import protocol as P

SECRET = b"wire test secret"


@pytest.mark.parametrize(
    ("dest", "target", "expected"),
    [
        (None, "echo", ("echo", "echo@A")),  # nil dest: this node
        ("A", "echo", ("echo", "echo@A")),
        ("B", "echo", (None, "echo@B")),  # another node: performed through the herd
        (None, "echo@A", ("echo", "echo@A")),  # a full path wins over dest
        ("A", "echo@B", (None, "echo@B")),
        (None, "@A", (None, "@A")),  # no name: not local, the herd answers with its error
        (None, ["counter", "k1"], (None, ["counter", "k1"])),  # keyed: placed by the ring
    ],
)
def test_parse_target_routes(dest, target, expected):
    assert wire.parse_target("A", dest, target) == expected


@pytest.mark.parametrize(("dest", "target"), [("", "echo"), (3, "echo"), (None, ""), (None, 7), (None, ["k"])])
def test_parse_target_refuses_with_the_asks_corr(dest, target):
    with pytest.raises(wire.Refused) as info:
        wire.parse_target("A", dest, target, 42)
    assert info.value.code == P.E_PROTOCOL and info.value.corr == 42


def hello(service="svc", names=("calc",), credential=b"", version=P.PROTOCOL_VERSION):
    if credential == b"":
        credential = wire.service_credential(SECRET, service)
    return [wire.SERVICE_HELLO, version, service, list(names), credential]


def test_parse_hello_accepts_the_herd_credential():
    assert wire.parse_hello(hello(), secret=SECRET, curve=False) == ("svc", ["calc"])
    assert wire.parse_hello(hello(credential=None), secret=SECRET, curve=True) == ("svc", ["calc"])


@pytest.mark.parametrize(
    ("env", "curve", "code"),
    [
        (hello(credential=None), False, P.E_AUTH),  # no CURVE: the credential is required
        (hello(credential=bytes(32)), True, P.E_AUTH),  # a credential given is checked even under CURVE
        (hello(credential=wire.service_credential(b"other", "svc")), False, P.E_AUTH),
        (hello(version=P.PROTOCOL_VERSION + 1), False, P.E_VERSION),
        (hello(names=["a@b"]), False, P.E_PROTOCOL),
        (hello(names=["x" * (wire.MAX_NAME + 1)]), False, P.E_PROTOCOL),
        (hello(service=""), False, P.E_PROTOCOL),
        (hello(credential=b"short"), False, P.E_PROTOCOL),
        (hello()[:4], False, P.E_PROTOCOL),
    ],
)
def test_parse_hello_refusals(env, curve, code):
    with pytest.raises(wire.Refused) as info:
        wire.parse_hello(env, secret=SECRET, curve=curve)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"id"], P.E_FRAME),
        ([b"id", b"\x91\x02", b"more"], P.E_FRAME),
        ([b"id", b"\xc1"], P.E_FRAME),  # never-used msgpack byte
        ([b"id", msgpack.packb(msgpack.ExtType(5, b"x"))], P.E_PROTOCOL),  # no ext types
        ([b"id", msgpack.packb({"kind": 2})], P.E_PROTOCOL),  # not an array envelope
        ([b"id", msgpack.packb([])], P.E_PROTOCOL),
        ([b"id", msgpack.packb([0] * 200)], P.E_FRAME),  # over the frame limit given
    ],
)
def test_decode_refusals(frames, code):
    with pytest.raises(wire.Refused) as info:
        wire.decode(frames, 100)
    assert info.value.code == code


def test_decode_and_names():
    assert wire.decode([b"id", msgpack.packb([P.TELL, None, "echo", {"a": 1}])], 100) == [
        P.TELL,
        None,
        "echo",
        {"a": 1},
    ]
    assert wire.kind_name(wire.REGISTER) == "REGISTER" and wire.kind_name(P.TELL) == P.kind_name(P.TELL)
    assert wire.assigned_id(b"\x00\x80\x00\x00\x01") and not wire.assigned_id(b"svc-1")


def test_a_body_refused_whole_still_answers_its_ask_or_reply():
    big = "x" * 200
    # over the limit: an ASK's ERROR carries its corr; a REPLY gives the corr of the ask it answers
    with pytest.raises(wire.Refused) as info:
        wire.decode([b"id", msgpack.packb([P.ASK, None, "echo", big, "svc", 42])], 100)
    assert (info.value.code, info.value.corr, info.value.reply_corr) == (P.E_FRAME, 42, None)
    with pytest.raises(wire.Refused) as info:
        wire.decode([b"id", msgpack.packb([P.REPLY, "A", 7, True, big])], 100)
    assert (info.value.code, info.value.corr, info.value.reply_corr) == (P.E_FRAME, None, 7)
    # an ext type inside: the same
    ext = msgpack.ExtType(5, b"")
    with pytest.raises(wire.Refused) as info:
        wire.decode([b"id", msgpack.packb([P.ASK, None, "echo", ext, "svc", 9])], 1000)
    assert (info.value.code, info.value.corr) == (P.E_PROTOCOL, 9)
    # no corr to read: nil
    with pytest.raises(wire.Refused) as info:
        wire.decode([b"id", msgpack.packb([P.TELL, None, "echo", big])], 100)
    assert (info.value.corr, info.value.reply_corr) == (None, None)
    assert wire.peek(msgpack.packb([P.ASK, None, "echo", big, "svc", "x"])) == (P.ASK, None)
    assert wire.peek(msgpack.packb({"k": 1})) == (None, None)
    assert wire.peek(b"\xc1") == (None, None)


def test_extra_trailing_fields_are_ignored_but_heartbeat_needs_3_or_5_or_more():
    assert wire.parse_hello(hello() + ["later"], secret=SECRET, curve=False) == ("svc", ["calc"])
    assert wire.parse_heartbeat([P.HEARTBEAT, 1, 1700000000]) == (1, 1700000000.0, None, 0.0)  # int for a float
    assert wire.parse_heartbeat([P.HEARTBEAT, 2, 1.5, 1, 0, "later"]) == (2, 1.5, 1.0, 0.0)
    assert wire.parse_bye([P.BYE, "shutdown", {"later": 1}]) == "shutdown"
    for env in ([P.HEARTBEAT, 1, 2.0, 3.0], [P.HEARTBEAT, 1], [P.HEARTBEAT, 1, True], [P.HEARTBEAT, 1.0, 2.0]):
        with pytest.raises(wire.Refused):
            wire.parse_heartbeat(env)
    with pytest.raises(wire.Refused):
        wire.parse_bye([P.BYE])
