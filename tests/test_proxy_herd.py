"""The location proxy herd end to end: five real server processes (`herdrt serve --node`) on 127.0.0.1.

The herd file is the bundled one (same five servers, same links, same app) with free ports and a
test secret. Clients talk plain TCP to the servers' app ports, as a real client would; the servers
talk to each other over herd links. One herd serves the whole module (each test uses its own client
ids, so tests do not see each other's records); the last test SIGKILLs and restarts a server.

The in-process behaviour of one server (every parse rule, ordering under slow lookups, flood seams)
is tested in ``test_proxy_server.py``; here the point is the real processes and the herd between them.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from _proxyherd import NAMES, UCLA, ProxyHerd, client_id, iamat, known_at, posix, talk, wait_known


@pytest.fixture(scope="module")
def herd(tmp_path_factory):
    with ProxyHerd.running(tmp_path_factory.mktemp("proxy-herd")) as h:
        yield h


def split_whatsat(reply: bytes) -> tuple[str, dict]:
    text = reply.decode("utf-8")
    assert text.endswith("}\n\n") and not text.endswith("\n\n\n"), text[-40:]
    at_line, _, body = text.partition("\n")
    assert "\n\n" not in body[:-2]
    return at_line, json.loads(body)


# --- replies -----------------------------------------------------------------------------------------


def test_iamat_reply_is_byte_exact_with_a_measured_skew(herd):
    cases = [
        # (location, client time) as sent; both must come back unchanged.
        (UCLA, None),  # now, 9 digits
        ("-33.8688+151.2093", "1621464827.959498503"),  # the past: a big positive skew
        ("+90-180", "+1621464827.000000001"),  # explicit sign, edge coordinates
        ("+0.000000000-0.0", "0001621464827.5"),  # leading zeros, one decimal
        ("+34.068930-118.445127", None),  # 3 s ahead (below): a negative skew
    ]
    for i, (location, when) in enumerate(cases):
        client = client_id("skew")
        if when is None:
            client_ns = time.time_ns() + (3 * 10**9 if i == 4 else 0)
            when = posix(client_ns)
        else:
            whole, _, frac = when.lstrip("+").partition(".")
            client_ns = int(whole) * 10**9 + int(frac.ljust(9, "0"))
        before = time.time_ns()
        reply = talk(herd.port("Clark"), f"IAMAT  {client}\t{location} {when} \r\n".encode())
        after = time.time_ns()
        m = re.fullmatch(rb"AT Clark ([+-])([0-9]+)\.([0-9]{9}) (\S+) (\S+) (\S+)\n", reply)
        assert m, reply
        assert m.group(4, 5, 6) == (client.encode(), location.encode(), when.encode())
        skew = int(m.group(2)) * 10**9 + int(m.group(3))
        skew = -skew if m.group(1) == b"-" else skew
        # The server stamped the line between our send and its reply (same machine, same clock).
        assert before - client_ns <= skew <= after - client_ns, (reply, before, after)
        assert (skew < 0) == (i == 4)  # only the client from the future is ahead of the server
    # An hour ahead is past max_future_skew (5 s): refused, so no one can pin a client's location.
    line = f"IAMAT {client_id('skew')} {UCLA} {posix(time.time_ns() + 3_600 * 10**9)}"
    assert talk(herd.port("Clark"), f"{line}\n".encode()) == f"? {line}\n".encode()


def test_update_at_clark_reaches_every_server_one_and_two_hops_away(herd):
    client = client_id("flood")
    at_line = iamat(herd, "Clark", client)
    # Jaquez and Bona are Clark's neighbors; Campbell and Bailey are two hops away.
    for server in ["Jaquez", "Bona", "Campbell", "Bailey"]:
        wait_known(herd, server, client, at_line)
    assert known_at(herd, "Clark", client) == at_line


def test_whatsat_reply_shape_on_every_server(herd):
    client = client_id("places")
    at_line = iamat(herd, "Campbell", client, UCLA)
    bodies = {}
    for server in NAMES:
        wait_known(herd, server, client, at_line)
        at, cut = split_whatsat(talk(herd.port(server), f"WHATSAT {client} 50 3\n".encode()))
        assert at == at_line
        at, full = split_whatsat(talk(herd.port(server), f"WHATSAT {client} 50 20\n".encode()))
        assert at == at_line
        assert cut["status"] == full["status"] == "OK"
        # Cut to the bound: the first three of the (longer) full answer, nearest first.
        assert len(full["results"]) > 3 and cut["results"] == full["results"][:3]
        assert all(r["distance_m"] <= 50_000 for r in full["results"])
        distances = [r["distance_m"] for r in full["results"]]
        assert distances == sorted(distances)
        bodies[server] = full
    # Every server answers from the same gazetteer.
    assert all(body == bodies["Clark"] for body in bodies.values())


def test_stale_updates_are_ignored_and_newer_ones_win_everywhere(herd):
    client = client_id("stale")
    t0 = time.time_ns()
    first = iamat(herd, "Clark", client, UCLA, posix(t0))
    for server in NAMES:
        wait_known(herd, server, client, first)

    # Older at Bailey, the same time at Jaquez: answered, but neither stored nor flooded.
    older = iamat(herd, "Bailey", client, "+1+1", posix(t0 - 1))
    same = iamat(herd, "Jaquez", client, "+2+2", posix(t0))
    assert older.startswith("AT Bailey ") and same.startswith("AT Jaquez ")
    # A marker sent after them from the same servers: once it is everywhere, anything they had
    # flooded before it would have arrived too (herd links deliver in order).
    marks = {server: iamat(herd, server, client_id("mark")) for server in ("Bailey", "Jaquez")}
    for server in NAMES:
        for mark in marks.values():
            wait_known(herd, server, mark.split()[3], mark)
        assert known_at(herd, server, client) == first
    assert "IGNORED from client 127.0.0.1:" in herd.traffic("Bailey")
    assert f"(not newer): {older}" in herd.traffic("Bailey")
    assert f"(not newer): {same}" in herd.traffic("Jaquez")

    # Newer, at a server two hops from Clark: it replaces the record on every server.
    newer = iamat(herd, "Bailey", client, "-1-1", posix(t0 + 1))
    for server in NAMES:
        wait_known(herd, server, client, newer)


INVALID = [
    b"",
    b" \t ",
    b"HELLO there",
    b"iamat lower.case +1+1 1",
    b"  IAMAT  spaced.out  +1+1",  # too few fields (spacing kept in the echo)
    b"IAMAT too.many +1+1 1 2",
    b"IAMAT nosign 34.068930-118.445127 1",
    b"IAMAT glued +34.068930118.445127 1",
    b"IAMAT lat.range +90.0000000000000001+0 1",
    b"IAMAT lon.range +0-180.5 1",
    b"IAMAT bad.time +1+1 yesterday",
    b"IAMAT exp.time +1+1 1.6e9",
    b"IAMAT fine.time +1+1 1.0000000001",
    b"IAMAT inf.time +1+1 inf",
    b"WHATSAT too.few 10",
    b"WHATSAT zero.radius 0 5",
    b"WHATSAT far.radius 50.001 5",
    b"WHATSAT word.radius ten 5",
    b"WHATSAT zero.bound 10 0",
    b"WHATSAT big.bound 10 21",
    b"WHATSAT frac.bound 10 2.5",
    b"WHATSAT nobody.example 10 5",  # a client no server knows
    b"IAMAT bad\xff\xfeutf8 +1+1 1",  # not UTF-8: echoed as received
    b"IAMAT nbsp.client\xc2\xa0+1+1 1",  # U+00A0 is not a separator
    b"IAMAT \xd9\xa1client +1+1 \xd9\xa1",  # Arabic-Indic digits are not digits
]


def test_every_class_of_invalid_input_is_echoed_and_stores_nothing(herd):
    reply = talk(herd.port("Bona"), b"\n".join(INVALID) + b"\n")
    assert reply == b"".join(b"? " + line + b"\n" for line in INVALID)
    # A valid WHATSAT for a client only named in invalid lines is unknown too: nothing was stored.
    for client in ("spaced.out", "too.many", "glued", "fine.time", "nbsp.client"):
        assert talk(herd.port("Bona"), f"WHATSAT {client} 10 1\n".encode()) == f"? WHATSAT {client} 10 1\n".encode()
    # The process is fine and still answers.
    iamat(herd, "Bona", client_id("after-invalid"))


def test_pipelined_commands_are_answered_in_order_and_a_last_line_needs_no_newline(herd):
    a, b = client_id("pipe"), client_id("pipe")
    now = time.time_ns()
    lines = [
        f"IAMAT {a} {UCLA} {posix(now)}",
        f"WHATSAT {a} 20 2",
        "nonsense",
        f"IAMAT {b} -33.8688+151.2093 {posix(now + 1)}",
        f"WHATSAT {b} 10 1",
        f"WHATSAT {a} 5 1",  # the last line, sent without a newline
    ]
    reply = talk(herd.port("Jaquez"), "\n".join(lines).encode()).decode()
    at_a, rest = reply.split("\n", 1)
    assert re.fullmatch(rf"AT Jaquez \+[0-9]+\.[0-9]{{9}} {a} {re.escape(UCLA)} {posix(now)}", at_a)
    whatsat_a, rest = rest.split("\n\n", 1)
    at, body = split_whatsat((whatsat_a + "\n\n").encode())
    assert at == at_a and len(body["results"]) == 2
    assert rest.startswith("? nonsense\n")
    rest = rest[len("? nonsense\n") :]
    at_b, rest = rest.split("\n", 1)
    assert at_b.startswith("AT Jaquez ") and at_b.endswith(f" {b} -33.8688+151.2093 {posix(now + 1)}")
    whatsat_b, last = rest.split("\n\n", 1)
    at, body = split_whatsat((whatsat_b + "\n\n").encode())
    assert at == at_b and len(body["results"]) == 1
    at, body = split_whatsat(last.encode())
    assert at == at_a and len(body["results"]) == 1

    # A connection that sends only a line without a newline gets its answer too.
    c = client_id("nonl")
    reply = talk(herd.port("Jaquez"), f"IAMAT {c} +1+1 1".encode()).decode()
    assert re.fullmatch(rf"AT Jaquez \+[0-9]+\.[0-9]{{9}} {re.escape(c)} \+1\+1 1\n", reply), reply
    assert talk(herd.port("Jaquez"), b"also nonsense") == b"? also nonsense\n"


def test_each_server_logs_its_traffic_to_its_own_file(herd):
    client = client_id("logged")
    at_line = iamat(herd, "Clark", client)
    for server in NAMES:
        wait_known(herd, server, client, at_line)
    talk(herd.port("Clark"), b"bad\tline\n")
    for server in NAMES:
        entries = herd.traffic(server).splitlines()
        assert entries[0].split(" ")[1:3] == [server, "START"]
        assert any(e.split(" ")[2] == "LISTEN" and e.endswith(f":{herd.port(server)}") for e in entries)
        assert all(e.split(" ")[1] == server for e in entries)
        if server == "Clark":
            assert any(re.search(rf" Clark IN 127\.0\.0\.1:[0-9]+ IAMAT {re.escape(client)} ", e) for e in entries)
            assert any(
                re.search(rf" Clark STORED from client 127\.0\.0\.1:[0-9]+: {re.escape(at_line)}$", e) for e in entries
            )
            assert any(re.search(rf" Clark OUT 127\.0\.0\.1:[0-9]+ {re.escape(at_line)}\\n$", e) for e in entries)
            assert any(re.search(r" Clark IN 127\.0\.0\.1:[0-9]+ bad\\tline$", e) for e in entries)
            assert any(e.endswith(" ? bad\\tline\\n") for e in entries)
        else:
            assert any(e.endswith(f"STORED from peer: {at_line}") for e in entries), server
            # WHATSAT answers (our polling) are logged with the stored AT line.
            assert any(" OUT " in e and f" {at_line}\\n" in e for e in entries)
        assert f"node {server} up" in herd.out(server)


def test_a_killed_server_is_routed_around_then_catches_up_when_restarted(herd):
    before = client_id("before")
    at_before = iamat(herd, "Campbell", before)
    for server in NAMES:
        wait_known(herd, server, before, at_before)
    herd.kill("Bona")
    try:
        herd.wait_ready(names=["Clark", "Bailey", "Campbell", "Jaquez"], live=["Clark", "Bailey", "Campbell", "Jaquez"])
        # Without Bona, Clark reaches Bailey only by Clark-Jaquez-Campbell-Bailey: three hops.
        from_clark = client_id("around")
        at_clark = iamat(herd, "Clark", from_clark)
        for server in ["Jaquez", "Campbell", "Bailey"]:
            wait_known(herd, server, from_clark, at_clark)
        # And back the other way.
        from_bailey = client_id("around")
        at_bailey = iamat(herd, "Bailey", from_bailey)
        for server in ["Campbell", "Jaquez", "Clark"]:
            wait_known(herd, server, from_bailey, at_bailey)
        with pytest.raises(OSError):
            talk(herd.port("Bona"), b"WHATSAT x 1 1\n")
    finally:
        herd.start("Bona")
    herd.wait_ready()
    herd.warm_up(["Bona"])

    # Bona learns what happened while it was down from its neighbors ...
    wait_known(herd, "Bona", from_clark, at_clark)
    wait_known(herd, "Bona", from_bailey, at_bailey)
    # ... including records from before it died (its store started empty).
    wait_known(herd, "Bona", before, at_before)
    assert f"STORED from peer: {at_before}" in herd.traffic("Bona").rpartition(" Bona START ")[2]
    # ... and is talked to normally: its own clients' updates flood out, a newer update floods in.
    from_bona = client_id("back")
    at_bona = iamat(herd, "Bona", from_bona)
    for server in NAMES:
        wait_known(herd, server, from_bona, at_bona)
    newer = iamat(herd, "Jaquez", from_clark)
    for server in NAMES:
        wait_known(herd, server, from_clark, newer)
    assert herd.traffic("Bona").count(" Bona START ") == 2  # the traffic log was appended to
    assert "node Bona down" in herd.out("Clark") and "node Bona up" in herd.out("Clark")


def test_metrics_count_the_proxy_traffic_exactly(herd):
    """Bailey's /metrics: IAMATs and WHATSATs move by exactly what a client sent, the places cache
    answers the repeated question, and the flood of the new location is counted."""

    def events(samples):
        return {
            dict(labels)["event"]: v for (name, labels), v in samples.items() if name == "herdrt_proxy_events_total"
        }

    before = events(herd.metrics("Bailey"))
    client = client_id("metrics")
    iamat(herd, "Bailey", client)
    for _ in range(2):
        assert talk(herd.port("Bailey"), f"WHATSAT {client} 10 5\n".encode()).startswith(b"AT Bailey ")
    after = events(herd.metrics("Bailey"))
    moved = {event: after[event] - before.get(event, 0) for event in after}
    assert (moved["iamats"], moved["whatsats"], moved["invalid"]) == (1, 2, 0)
    assert moved["cache_hits"] >= 1 and moved["floods"] >= 1
    samples = herd.metrics("Bailey")
    assert samples[("herdrt_nodes_live", ())] == len(NAMES)
    assert samples[("herdrt_link_up", (("peer", "Bona"),))] == 1
