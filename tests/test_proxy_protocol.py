"""The location proxy's line protocol, AT records and the newer-timestamp store (pure, no I/O)."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herdrt.apps.proxy.protocol import (
    CommandError,
    IAmAt,
    WhatsAt,
    format_skew,
    invalid_reply,
    parse_command,
    parse_location,
    parse_time,
    split_fields,
    whatsat_reply,
)
from herdrt.apps.proxy.store import AtRecord, LocationStore

KIWI = "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"


# --- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ns",
    [
        ("1621464827.959498503", 1621464827959498503),
        ("1621464827.9", 1621464827900000000),
        ("1621464827", 1621464827000000000),
        ("0.000000001", 1),
        ("+5.5", 5500000000),
        ("-1.25", -1250000000),
        ("007.010", 7010000000),
        ("0" * 5000 + "1.5", 1500000000),  # leading zeros are not digits that count
    ],
)
def test_parse_time_is_exact_integer_nanoseconds(text, ns):
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.",
        ".5",
        "1e9",
        "1.5e3",
        "nan",
        "inf",
        "+-1",
        "1.0000000001",
        "1,5",
        " 1",
        "0x10",
        "١٦٢١",
        "1_000",
        "--1",
        "1" * 13,
        "1" * 4301,
        "1." + "0" * 4301,  # numbers have a length limit (4,300+ digits: int() raises)
    ],
)
def test_parse_time_refuses(text):
    with pytest.raises(CommandError):
        parse_time(text)


@settings(max_examples=300)
@given(st.integers(-(10**12) + 1, 10**12 - 1), st.integers(0, 10**9 - 1))
def test_time_text_roundtrip(seconds, nanos):
    ns = seconds * 10**9 + nanos
    assert parse_time(format_skew(ns)) == ns
    assert parse_time(f"{seconds}.{nanos:09d}") == (
        seconds * 10**9 + nanos if seconds >= 0 else seconds * 10**9 - nanos
    )


@pytest.mark.parametrize(
    "ns, text",
    [
        (263873386, "+0.263873386"),
        (0, "+0.000000000"),
        (-1, "-0.000000001"),
        (-3_000_000_001, "-3.000000001"),
        (86400 * 10**9, "+86400.000000000"),
    ],
)
def test_format_skew(ns, text):
    assert format_skew(ns) == text


# --- location -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("+34.068930-118.445127", (34.06893, -118.445127)),
        ("+90+180", (90.0, 180.0)),
        ("-90-180", (-90.0, -180.0)),
        ("-0.0+0.0", (0.0, 0.0)),
        ("+1+2", (1.0, 2.0)),
    ],
)
def test_parse_location(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "34.068930-118.445127",  # latitude sign missing
        "+34.068930118.445127",  # longitude sign missing
        "+34.068930",  # no longitude
        "+90.0000000000000001+0",  # rounds to 90.0 as a float, but is over 90
        "+91+0",
        "-90.5+0",
        "+0+180.000001",
        "+0-181",
        "+34.-118.4",
        "+.5+1",
        "++34-118",
        "+34-118-1",
        "+34,1-118",
        "+34.0-118.4x",
        "+1e1+2",
        "+nan+0",
        "+inf-inf",
        "",
        "+",
        "+-",
        "+1000+1",
        "+1." + "0" * 31 + "+1",
        "+" + "1" * 4301 + "+1",  # too many digits
    ],
)
def test_parse_location_refuses(text):
    with pytest.raises(CommandError):
        parse_location(text)


# --- commands -----------------------------------------------------------------------------------


def test_parse_iamat():
    cmd = parse_command(KIWI)
    assert cmd == IAmAt(
        "kiwi.cs.ucla.edu", "+34.068930-118.445127", "1621464827.959498503", 1621464827959498503, 34.06893, -118.445127
    )


def test_fields_split_on_any_ascii_whitespace_only():
    assert split_fields(" \tIAMAT  a\t\t+1+2 \x0b 3\x0c\r ") == ["IAMAT", "a", "+1+2", "3"]
    # Unicode spaces are not separators (they are part of a field).
    assert split_fields("IAMAT a\u00a0b +1+2 3") == ["IAMAT", "a\u00a0b", "+1+2", "3"]
    assert parse_command("\tWHATSAT   kiwi  10\t5  ") == WhatsAt("kiwi", 10.0, 5)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("WHATSAT c 50 20", WhatsAt("c", 50.0, 20)),
        ("WHATSAT c 0.001 1", WhatsAt("c", 0.001, 1)),
        ("WHATSAT c 50.000 007", WhatsAt("c", 50.0, 7)),
    ],
)
def test_parse_whatsat(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "\t",
        "IAMAT",
        "IAMAT a +1+2",
        "IAMAT a +1+2 3 4",
        "IAMAT a 1+2 3",
        "IAMAT a +1+2 x",
        "IAMAT a +91+2 3",
        "IAMAT a +1+181 3",
        "IAMAT a +1+2 1.5e9",
        "WHATSAT",
        "WHATSAT c 10",
        "WHATSAT c 10 5 x",
        "WHATSAT c 10 " + "1" * 4301,
        "WHATSAT c " + "1" * 4301 + " 5",
        "WHATSAT c 0 5",
        "WHATSAT c 0.0 5",
        "WHATSAT c 50.0001 5",
        "WHATSAT c 51 5",
        "WHATSAT c -1 5",
        "WHATSAT c +10 5",
        "WHATSAT c 1e1 5",
        "WHATSAT c nan 5",
        "WHATSAT c 10 0",
        "WHATSAT c 10 21",
        "WHATSAT c 10 1.5",
        "WHATSAT c 10 +5",
        "WHATSAT c 10 -5",
        "WHATSAT c 10 x",
        "iamat a +1+2 3",
        "AT a b c d e",
        "HELLO",
        "IAMATX a +1+2 3",
    ],
)
def test_parse_command_refuses(line):
    with pytest.raises(CommandError):
        parse_command(line)


def test_invalid_reply_echoes_bytes_exactly():
    assert invalid_reply(b"WHATSAT \xff\xfe 10 5") == b"? WHATSAT \xff\xfe 10 5\n"
    assert invalid_reply(b"") == b"? \n"


# --- WHATSAT replies ----------------------------------------------------------------------------


def _places(n: int, **extra) -> dict:
    return {
        "html_attributions": [],
        "status": "OK",
        **extra,
        "results": [{"name": f"place {i}\n\nwith blank line", "place_id": str(i)} for i in range(n)],
    }


def test_whatsat_reply_shape_and_bound():
    response = _places(7)
    reply = whatsat_reply("AT S +0.1 c +1+2 3", response, 3)
    assert reply.startswith("AT S +0.1 c +1+2 3\n{")
    assert reply.endswith("}\n\n")
    body = reply[len("AT S +0.1 c +1+2 3\n") : -2]
    assert "\n\n" not in body  # only the terminator is a blank line, even with newlines in names
    decoded = json.loads(body)
    assert [r["place_id"] for r in decoded["results"]] == ["0", "1", "2"]
    assert decoded["status"] == "OK"
    assert len(response["results"]) == 7  # the (possibly cached) response is not modified


def test_whatsat_reply_keeps_fewer_results_and_errors():
    assert json.loads(whatsat_reply("AT x", _places(2), 20)[5:])["results"] == _places(2)["results"]
    err = {"results": [], "status": "UNKNOWN_ERROR", "error_message": "boom", "html_attributions": []}
    assert json.loads(whatsat_reply("AT x", err, 5)[5:]) == err


# --- records and the store ----------------------------------------------------------------------


def _record(time: str, server: str = "Clark", client: str = "kiwi") -> AtRecord:
    return AtRecord.create(server, "+0.263873386", client, "+34.068930-118.445127", time)


def test_record_wire_roundtrip_through_msgpack():
    record = _record("1621464827.959498503")
    wire = record.to_wire()
    assert wire == {
        "v": 1,
        "server": "Clark",
        "skew": "+0.263873386",
        "client": "kiwi",
        "location": "+34.068930-118.445127",
        "time": "1621464827.959498503",
    }
    packed = msgpack.packb(wire, use_bin_type=True)
    back = AtRecord.from_wire(msgpack.unpackb(packed, raw=False, strict_map_key=True))
    assert back == record
    assert back.line == "AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503"
    assert back.time_ns == 1621464827959498503


def test_record_from_wire_ignores_unknown_keys():
    wire = {**_record("5").to_wire(), "hops": 3}
    assert AtRecord.from_wire(wire).time_ns == 5 * 10**9


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: ["not", "a", "dict"],
        lambda w: {**w, "v": 2},
        lambda w: {k: v for k, v in w.items() if k != "v"},
        lambda w: {k: v for k, v in w.items() if k != "time"},
        lambda w: {**w, "time": 12},
        lambda w: {**w, "time": "soon"},
        lambda w: {**w, "location": "+100+0"},
        lambda w: {**w, "client": "two words"},
        lambda w: {**w, "server": ""},
        lambda w: {**w, "skew": b"+0.1"},
    ],
)
def test_record_from_wire_refuses_malformed(mutate):
    with pytest.raises(ValueError):
        AtRecord.from_wire(mutate(_record("5").to_wire()))


def test_store_keeps_only_strictly_newer():
    store = LocationStore()
    assert store.offer(_record("100.5"))
    assert not store.offer(_record("100.5", server="Other"))  # same time: not newer
    assert not store.offer(_record("99.999999999"))
    assert store.get("kiwi").server == "Clark"
    assert store.offer(_record("100.500000001", server="Bona"))
    assert store.get("kiwi").server == "Bona"
    assert store.offer(_record("1", client="other"))  # clients are independent
    assert len(store) == 2 and "other" in store and store.get("nobody") is None


def test_store_compares_exactly_where_floats_tie():
    a, b = "1621464827.959498503", "1621464827.959498504"
    assert float(a) == float(b)  # a float comparison would drop the newer update
    store = LocationStore()
    assert store.offer(_record(a))
    assert store.offer(_record(b, server="Bona"))
    assert store.get("kiwi").time == b


@settings(max_examples=200)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_store_holds_the_maximum_whatever_the_order(times):
    store = LocationStore()
    stored = [store.offer(_record(f"{t}.000000001")) for t in times]
    assert store.get("kiwi").time_ns == max(times) * 10**9 + 1
    # Exactly the records that beat everything before them were stored.
    assert stored == [t > max(times[:i], default=-1) for i, t in enumerate(times)]
