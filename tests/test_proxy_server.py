"""The proxy server over real TCP: byte-exact replies, invalid input, ordering, flooding seams.

Every test runs on uvloop and on stdlib asyncio (the ``run`` fixture) and checks that no task is
left behind. The places provider is a local fake (or the real gazetteer where said), and ``flood``
is a local recorder: the herd is not involved.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from _herdtest import until
from herdrt.apps.proxy import AtRecord, GazetteerPlaces, ProxyApp, ProxyLimits, TrafficLog
from herdrt.config import loads_config

CLIENT_NS = 1621464827_959498503
KIWI = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"


class FakePlaces:
    """Answers ``n`` made-up places; optionally waits on a gate, or raises."""

    def __init__(self, n=5, fail=False):
        self.n = n
        self.fail = fail
        self.calls = []
        self.gates: dict[float, asyncio.Event] = {}

    async def nearby(self, lat, lon, radius_m):
        self.calls.append((lat, lon, radius_m))
        gate = self.gates.get(radius_m)
        if gate is not None:
            await gate.wait()
        if self.fail:
            raise RuntimeError("places provider bug")
        return {
            "html_attributions": [],
            "results": [
                {
                    "geometry": {"location": {"lat": lat, "lng": lon}},
                    "name": f"place {i}",
                    "place_id": f"id-{radius_m:g}-{i}",
                    "vicinity": "here",
                    "types": ["point_of_interest"],
                }
                for i in range(self.n)
            ],
            "status": "OK",
        }

    async def close(self):
        pass


class Clock:
    """A fixed server clock (POSIX ns)."""

    def __init__(self, ns):
        self.ns = ns

    def __call__(self):
        return self.ns


def make_app(tmp_path, name="Clark", places=None, clock=None, **kw):
    floods = []
    app = ProxyApp(
        name,
        port=0,
        log_dir=tmp_path,
        places=places or FakePlaces(),
        flood=floods.append,
        clock=clock or Clock(CLIENT_NS + 263_873_386),
        **kw,
    )
    return app, floods


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, close our side, and read every reply until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply


def split_whatsat(reply: bytes) -> tuple[str, dict]:
    text = reply.decode("utf-8")
    assert text.endswith("}\n\n")
    at_line, _, body = text.partition("\n")
    assert "\n\n" not in body[:-2]
    return at_line, json.loads(body)


# --- IAMAT ---------------------------------------------------------------------------------------


def test_iamat_reply_is_byte_exact_and_flooded(run, tmp_path):
    async def main():
        app, floods = make_app(tmp_path)
        async with app:
            reply = await exchange(app.port, KIWI + b"\n")
        return reply, floods, app

    reply, floods, app = run(main)
    assert reply == b"AT Clark +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"
    assert floods == [
        {
            "v": 1,
            "server": "Clark",
            "skew": "+0.263873386",
            "client": "kiwi.cs.ucla.edu",
            "location": "+34.068930-118.445127",
            "time": "1621464827.959498503",
        }
    ]
    assert app.records() == floods


def test_iamat_negative_skew_and_field_echo(run, tmp_path):
    async def main():
        app, floods = make_app(tmp_path, clock=Clock(CLIENT_NS - 1_500_000_000))
        async with app:
            return await exchange(
                app.port, b"  IAMAT\tkiwi.cs.ucla.edu \t+34.068930-118.445127   1621464827.959498503\t \r\n"
            )

    # Fields echoed byte for byte (trailing zeros, nanosecond digits), whatever the separators.
    assert run(main) == b"AT Clark -1.500000000 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"


def test_stale_iamat_is_answered_but_neither_stored_nor_flooded(run, tmp_path):
    async def main():
        app, floods = make_app(tmp_path, clock=Clock(2_000_000_000_000_000_000))
        async with app:
            reply = await exchange(
                app.port,
                b"IAMAT c +1+2 100.000000002\nIAMAT c +3+4 100.000000001\nIAMAT c +5+6 100.000000002\nWHATSAT c 1 1\n",
            )
        return reply, floods

    reply, floods = run(main)
    lines = reply.split(b"\n")
    assert lines[0] == b"AT Clark +1999999899.999999998 c +1+2 100.000000002"
    assert lines[1] == b"AT Clark +1999999899.999999999 c +3+4 100.000000001"  # replied, not stored
    assert lines[2] == b"AT Clark +1999999899.999999998 c +5+6 100.000000002"  # same time: not newer
    assert lines[3] == lines[0]  # WHATSAT shows the first, still the newest
    assert [f["location"] for f in floods] == ["+1+2"]


# --- WHATSAT -------------------------------------------------------------------------------------


def test_whatsat_returns_stored_line_and_places_cut_to_bound(run, tmp_path):
    places = FakePlaces(n=7)

    async def main():
        app, _ = make_app(tmp_path, places=places)
        async with app:
            await exchange(app.port, KIWI + b"\n")
            return await exchange(app.port, b"WHATSAT kiwi.cs.ucla.edu 10 3\n")

    at_line, body = split_whatsat(run(main))
    assert at_line == "AT Clark +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
    assert body["status"] == "OK" and body["html_attributions"] == []
    assert [r["name"] for r in body["results"]] == ["place 0", "place 1", "place 2"]
    assert places.calls == [(34.06893, -118.445127, 10_000.0)]


@pytest.fixture(scope="module")
def geonames():
    places = GazetteerPlaces()  # holds no loop state, so one loaded copy serves both loops
    places.load()
    return places


def test_whatsat_with_the_real_gazetteer(run, tmp_path, geonames):
    async def main():
        app, _ = make_app(tmp_path, places=geonames)
        async with app:
            return await exchange(app.port, KIWI + b"\nWHATSAT kiwi.cs.ucla.edu 10 2\n")

    reply = run(main)
    first, _, rest = reply.partition(b"\n")
    at_line, body = split_whatsat(rest)
    assert first.decode() == at_line
    assert body["status"] == "OK" and len(body["results"]) == 2
    for result in body["results"]:
        assert result["distance_m"] <= 10_000
        assert {"lat", "lng"} <= set(result["geometry"]["location"]) and result["place_id"].startswith("geonames:")


def test_whatsat_survives_a_failing_provider(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path, places=FakePlaces(fail=True))
        async with app:
            return await exchange(app.port, KIWI + b"\nWHATSAT kiwi.cs.ucla.edu 5 5\n" + KIWI + b"\n")

    reply = run(main)
    first, _, rest = reply.partition(b"\n")
    whatsat, _, last = rest.partition(b"}\n\n")
    _, body = split_whatsat(whatsat + b"}\n\n")
    assert body["status"] == "UNKNOWN_ERROR" and "places provider bug" in body["error_message"]
    assert last == first + b"\n"  # and the server went on


# --- invalid input -------------------------------------------------------------------------------

INVALID = [
    b"",
    b"   \t ",
    b"HELLO world",
    b"iamat kiwi +1+2 3",
    b"IAMAT kiwi +1+2",
    b"IAMAT kiwi +1+2 3 extra",
    b"IAMAT kiwi 34.068930-118.445127 1621464827.959498503",
    b"IAMAT kiwi +34.068930118.445127 1621464827.959498503",
    b"IAMAT kiwi +90.1+0 1",
    b"IAMAT kiwi +0-180.5 1",
    b"IAMAT kiwi +1+2 yesterday",
    b"IAMAT kiwi +1+2 1.5e9",
    b"IAMAT kiwi +1+2 1.0000000001",
    b"WHATSAT kiwi.cs.ucla.edu 10",
    b"WHATSAT kiwi.cs.ucla.edu 0 5",
    b"WHATSAT kiwi.cs.ucla.edu 50.5 5",
    b"WHATSAT kiwi.cs.ucla.edu 10 0",
    b"WHATSAT kiwi.cs.ucla.edu 10 21",
    b"WHATSAT kiwi.cs.ucla.edu 10 2.5",
    b"WHATSAT kiwi.cs.ucla.edu ten 5",
    b"WHATSAT nobody.example 10 5",  # unknown client
    b"IAMAT k\xff\xfe +1+2 3",  # not UTF-8: echoed as received
    b"IAMAT k\xc2\xa0x +1+2",  # a non-ASCII space is not a separator
]


def test_every_invalid_line_is_echoed_with_a_question_mark_in_order(run, tmp_path):
    async def main():
        app, floods = make_app(tmp_path)
        async with app:
            await exchange(app.port, KIWI + b"\n")
            reply = await exchange(app.port, b"\n".join(INVALID) + b"\n")
        return reply, floods

    reply, floods = run(main)
    assert reply == b"".join(b"? " + line + b"\n" for line in INVALID)
    assert len(floods) == 1  # only the valid IAMAT


def test_last_line_without_newline_is_answered(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path)
        async with app:
            a = await exchange(app.port, b"IAMAT a +1+2 3\nIAMAT b +1-2 4")
            b = await exchange(app.port, b"bogus")
        return a, b

    a, b = run(main)
    # The server clock is 1621464828.223371889, so the skews are exact differences from it.
    assert a == b"AT Clark +1621464825.223371889 a +1+2 3\nAT Clark +1621464824.223371889 b +1-2 4\n"
    assert b == b"? bogus\n"


def test_crlf_lines(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path)
        async with app:
            return await exchange(app.port, KIWI + b"\r\nnope\r\n")

    assert run(main) == (b"AT Clark +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n? nope\n")


def test_an_overlong_line_is_answered_cut_short_and_the_connection_goes_on(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path, limits=ProxyLimits(max_line=1000))
        async with app:
            # even an over-long line that starts as a valid IAMAT is invalid, not stored
            long = b"IAMAT long.example +1+1 1" + b" " * 5000 + b"x"
            reply = await exchange(app.port, KIWI + b"\n" + long + b"\nnope\n" + b"y" * 3000)
            return reply, dict(app.counters), app.store.get("long.example")

    reply, counters, stored = run(main)
    lines = reply.split(b"\n")
    assert lines[0].startswith(b"AT Clark") and lines[1] == b"? " + (b"IAMAT long.example +1+1 1" + b" " * 5000)[:1000]
    assert lines[2] == b"? nope" and lines[3] == b"? " + b"y" * 1000 and lines[4:] == [b""]
    assert counters["long_lines"] == 2 and counters["invalid"] == 3 and stored is None


def test_numbers_too_long_for_int_and_far_future_times_get_a_question_mark(run, tmp_path):
    now = CLIENT_NS + 263_873_386  # the server's clock (make_app)

    async def main():
        app, floods = make_app(tmp_path)
        async with app:
            spoof = b"IAMAT kiwi.cs.ucla.edu -1-1 99999999999.999999999"
            soon = f"IAMAT kiwi.cs.ucla.edu +1+1 {(now + 4 * 10**9) // 10**9}.000000001".encode()  # 4 s ahead: fine
            reply = await exchange(
                app.port,
                b"\n".join(
                    [
                        spoof,
                        b"IAMAT kiwi.cs.ucla.edu -1-1 " + b"9" * 4000,
                        b"WHATSAT kiwi.cs.ucla.edu 10 " + b"1" * 4400,
                        b"WHATSAT kiwi.cs.ucla.edu " + b"1" * 4400 + b" 5",
                        KIWI,  # the real client is stored, not pinned out by the spoof
                        soon,
                    ]
                )
                + b"\n",
            )
            return reply, dict(app.counters), app.store.get("kiwi.cs.ucla.edu"), floods

    reply, counters, stored, floods = run(main)
    lines = reply.decode().split("\n")
    assert lines[0] == "? IAMAT kiwi.cs.ucla.edu -1-1 99999999999.999999999"
    assert all(line.startswith("? ") for line in lines[1:4])
    assert lines[4].startswith("AT Clark +0.263873386 kiwi.cs.ucla.edu") and lines[5].startswith("AT Clark -3.")
    assert counters["future_refused"] == 1 and counters["invalid"] == 4 and counters["iamats"] == 2
    assert stored.location == "+1+1" and len(floods) == 2


def test_silent_and_slow_clients_are_disconnected_and_the_connection_cap_holds(run, tmp_path):
    limits = ProxyLimits(idle_timeout=0.3, line_timeout=0.5, max_connections=3)

    async def main():
        app, _ = make_app(tmp_path, limits=limits)
        async with app:
            loop = asyncio.get_running_loop()
            idle = await asyncio.open_connection("127.0.0.1", app.port)
            slow = await asyncio.open_connection("127.0.0.1", app.port)
            t0 = loop.time()

            async def trickle():  # slowloris: a byte now and then, never a whole line
                while True:
                    slow[1].write(b"I")
                    await asyncio.sleep(0.1)

            trickling = asyncio.ensure_future(trickle())
            try:
                assert await slow[0].read() == b""  # closed for the unfinished line
            except ConnectionError:  # ... or the close met a byte on its way
                pass
            slow_closed = loop.time() - t0
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            assert await idle[0].read() == b""  # closed for silence
            for _, w in (idle, slow):
                w.close()
            # three open connections; a fourth is closed at once, the three still answer
            held = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(3)]
            await until(lambda: app.counters["connections"] == 5)  # the server holds all three
            extra = await asyncio.open_connection("127.0.0.1", app.port)
            assert await asyncio.wait_for(extra[0].read(), 1.0) == b""
            extra[1].close()
            for r, w in held:
                w.write(KIWI + b"\n")
                assert (await r.readline()).startswith(b"AT Clark")
                w.close()
            return slow_closed, dict(app.counters)

    slow_closed, counters = run(main)
    assert 0.5 <= slow_closed < 0.75  # the line timeout, though bytes kept coming
    assert counters["timeouts"] == 2 and counters["connections_refused"] == 1 and counters["connections"] == 5


# --- ordering ------------------------------------------------------------------------------------


def test_replies_keep_order_while_effects_happen_at_once(run, tmp_path):
    places = FakePlaces(n=1)

    async def main():
        app, floods = make_app(tmp_path, places=places)
        async with app:
            await exchange(app.port, KIWI + b"\n")
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            places.gates[20_000.0] = asyncio.Event()
            writer.write(b"WHATSAT kiwi.cs.ucla.edu 20 1\nIAMAT later +1+2 5\nWHATSAT kiwi.cs.ucla.edu 10 1\n")
            await writer.drain()
            # The IAMAT behind the waiting WHATSAT is stored and flooded before the lookup returns...
            await until(lambda: "later" in app.store, timeout=1.0)
            assert floods[-1]["client"] == "later"
            assert places.calls[-1][2] == 10_000.0  # ...and the second lookup has already started
            places.gates[20_000.0].set()
            writer.write_eof()
            reply = await reader.read()
            writer.close()
            await writer.wait_closed()
        return reply

    reply = run(main)
    first, rest = reply.split(b"}\n\n", 1)
    assert b'"id-20000-0"' in first
    iamat, last = rest.split(b"\n", 1)
    assert iamat.startswith(b"AT Clark ") and iamat.endswith(b" later +1+2 5")
    assert b'"id-10000-0"' in last and last.endswith(b"}\n\n")


def test_many_pipelined_commands_in_one_write(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path, places=FakePlaces(n=1))
        async with app:
            script = b"".join(b"IAMAT c%d +1+2 %d\nWHATSAT c%d 1 1\n" % (i, i, i) for i in range(200))
            return await exchange(app.port, script)

    reply = run(main)
    parts = reply.split(b"}\n\n")
    assert parts[-1] == b"" and len(parts) == 201
    for i, part in enumerate(parts[:-1]):
        at_line, stored_line, _ = part.split(b"\n", 2)
        assert at_line == stored_line and at_line.endswith(b" c%d +1+2 %d" % (i, i))


def test_client_disconnecting_mid_lookup_and_shutdown_with_idle_clients(run, tmp_path):
    places = FakePlaces(n=1)

    async def main():
        app, _ = make_app(tmp_path, places=places)
        async with app:
            await exchange(app.port, KIWI + b"\n")
            places.gates[5_000.0] = asyncio.Event()
            r1, w1 = await asyncio.open_connection("127.0.0.1", app.port)
            w1.write(b"WHATSAT kiwi.cs.ucla.edu 5 1\n")
            await w1.drain()
            w1.close()  # gone before the answer
            await w1.wait_closed()
            r2, w2 = await asyncio.open_connection("127.0.0.1", app.port)  # idle, never sends
            r3, w3 = await asyncio.open_connection("127.0.0.1", app.port)
            w3.write(b"WHATSAT kiwi.cs.ucla.edu 5 1\n")  # waits on the gate at shutdown
            await w3.drain()
            await until(lambda: len(places.calls) == 2)  # both lookups wait on the gate
        # Leaving the block closed everything without waiting for the lookups.
        rest2, rest3 = await r2.read(), await r3.read()
        for w in (w2, w3):
            w.close()
            await w.wait_closed()
        return rest2, rest3

    assert run(main) == (b"", b"")


# --- flooding seams ------------------------------------------------------------------------------


def test_flood_failures_do_not_reach_the_client(run, tmp_path):
    async def main():
        calls = []

        def broken(record):
            calls.append(record)
            raise ConnectionError("herd down")

        async def broken_async(record):
            calls.append(record)
            raise ConnectionError("herd down too")

        app, _ = make_app(tmp_path)
        async with app:
            app.flood = broken
            a = await exchange(app.port, b"IAMAT a +1+2 3\n")
            app.flood = broken_async
            b = await exchange(app.port, b"IAMAT b +1+2 3\n")
            await until(lambda: app.counters["flood_errors"] == 2)  # the async flood's task failed too
        return a, b, calls

    a, b, calls = run(main)
    assert a.startswith(b"AT Clark ") and b.startswith(b"AT Clark ")
    assert [c["client"] for c in calls] == ["a", "b"]
    log = (tmp_path / "Clark.log").read_text()
    assert "FLOOD-ERROR ConnectionError: herd down for 'a'" in log
    assert "FLOOD-ERROR ConnectionError: herd down too for 'b'" in log


def test_receive_update_refuses_malformed_records(run, tmp_path):
    async def main():
        app, floods = make_app(tmp_path)
        async with app:
            results = [
                app.receive_update(bad)
                for bad in (
                    None,
                    [1, 2],
                    {"v": 1},
                    {"v": 9, "server": "X", "skew": "+0.1", "client": "c", "location": "+1+2", "time": "3"},
                    {"v": 1, "server": "X", "skew": "+0.1", "client": "c", "location": "north", "time": "3"},
                )
            ]
        return results, floods, app

    results, floods, app = run(main)
    assert results == [False] * 5 and floods == [] and len(app.store) == 0
    assert (tmp_path / "Clark.log").read_text().count(" REFUSED ") == 5


def test_two_servers_propagate_and_stop_stale_updates(run, tmp_path):
    async def main():
        a, a_floods = make_app(tmp_path, "Alpha")
        b, b_floods = make_app(tmp_path, "Beta", clock=Clock(CLIENT_NS))
        # Wire them to each other, both ways: a cycle the newer-timestamp rule must break.
        a.flood = lambda record: (a_floods.append(record), b.receive_update(record))
        b.flood = lambda record: (b_floods.append(record), a.receive_update(record))
        async with a, b:
            at = await exchange(a.port, KIWI + b"\n")
            via_b = await exchange(b.port, b"WHATSAT kiwi.cs.ucla.edu 10 1\n")
            stale = await exchange(b.port, b"IAMAT kiwi.cs.ucla.edu +0+0 1621464827.959498502\n")
            still = await exchange(a.port, b"WHATSAT kiwi.cs.ucla.edu 10 1\n")
            newer = await exchange(b.port, b"IAMAT kiwi.cs.ucla.edu +1+1 1621464827.959498504\n")
            via_a = await exchange(a.port, b"WHATSAT kiwi.cs.ucla.edu 10 1\n")
        return at, via_b, stale, still, newer, via_a, a_floods, b_floods

    at, via_b, stale, still, newer, via_a, a_floods, b_floods = run(main)
    assert split_whatsat(via_b)[0].encode() + b"\n" == at  # B answers with A's line, skew and all
    assert stale == b"AT Beta +0.000000001 kiwi.cs.ucla.edu +0+0 1621464827.959498502\n"
    assert split_whatsat(still)[0].encode() + b"\n" == at  # the stale update changed nothing
    assert newer == b"AT Beta -0.000000001 kiwi.cs.ucla.edu +1+1 1621464827.959498504\n"
    assert split_whatsat(via_a)[0].encode() + b"\n" == newer
    # Each record crossed each direction once: stored, re-flooded once, stopped on return.
    assert [f["server"] for f in a_floods] == ["Alpha", "Beta"]
    assert [f["server"] for f in b_floods] == ["Alpha", "Beta"]
    log = (tmp_path / "Alpha.log").read_text()
    assert "IGNORED from peer (not newer): AT Alpha +0.263873386 kiwi.cs.ucla.edu" in log
    assert "STORED from peer: AT Beta -0.000000001" in log


def test_bundled_five_server_herd_floods_to_everyone(run, tmp_path):
    config = loads_config(
        "[herd]\nsecret = 'a secret long enough'\n"
        "links = [['Clark','Jaquez'],['Clark','Bona'],['Campbell','Bailey'],['Campbell','Bona'],"
        "['Campbell','Jaquez'],['Bona','Bailey']]\n"
        + "".join(
            f"[[nodes]]\nname = '{n}'\nport = {11000 + i}\n"
            for i, n in enumerate(["Bailey", "Bona", "Campbell", "Clark", "Jaquez"])
        )
    )

    async def main():
        apps = {name: make_app(tmp_path, name)[0] for name in config.nodes}
        sent = []

        def flooder(name):
            def flood(record):
                for neighbor in config.neighbors(name):
                    sent.append((name, neighbor))
                    # Delivered later, as a real link would, not re-entrantly.
                    asyncio.get_running_loop().call_soon(apps[neighbor].receive_update, record)

            return flood

        for name, app in apps.items():
            app.flood = flooder(name)
            await app.start()
        try:
            await exchange(apps["Bailey"].port, KIWI + b"\n")
            await until(lambda: all("kiwi.cs.ucla.edu" in app.store for app in apps.values()))
            replies = {n: await exchange(app.port, b"WHATSAT kiwi.cs.ucla.edu 1 1\n") for n, app in apps.items()}
        finally:
            for app in apps.values():
                await app.close()
        return replies, sent

    replies, sent = run(main)
    lines = {split_whatsat(r)[0] for r in replies.values()}
    assert lines == {"AT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"}
    # Every server stored it once and flooded it once to each neighbor: 2 x 6 links = 12 sends.
    assert len(sent) == 12 and len(set(sent)) == 12


def test_traffic_log_records_in_out_and_updates(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path, log_path=tmp_path / "custom" / "clark-traffic.log")
        async with app:
            await exchange(app.port, KIWI + b"\nWHATSAT kiwi.cs.ucla.edu 10 1\nbad\tline\n")
            app.receive_update(AtRecord.create("Bona", "+0.1", "kiwi.cs.ucla.edu", "+1+1", "1").to_wire())

    run(main)
    log = (tmp_path / "custom" / "clark-traffic.log").read_text().splitlines()
    kinds = [entry.split(" ")[2] for entry in log]
    # A reply is logged when it is made: the instant "?" before the WHATSAT that waited on places.
    assert kinds == ["START", "LISTEN", "IN", "STORED", "OUT", "IN", "IN", "OUT", "OUT", "IGNORED", "STOP"]
    assert all(e.split(" ")[1] == "Clark" for e in log)
    assert log[6].endswith(" bad\\tline") and log[7].endswith(" ? bad\\tline\\n")  # control chars escaped
    assert "IGNORED from peer (not newer): AT Bona +0.1 kiwi.cs.ucla.edu +1+1 1" in log[9]
    whatsat_out = log[8]
    assert '"status": "OK"' in whatsat_out and whatsat_out.endswith("}\\n\\n")  # one entry per reply


def test_traffic_log_is_private_size_capped_and_cuts_invalid_input(run, tmp_path):
    async def main():
        app, _ = make_app(tmp_path)
        async with app:
            await exchange(app.port, KIWI + b"\n" + b"z" * 3000 + b"\n")
            size = app.log_path.stat().st_size
            garbage = b"?\n" * 100_000  # 200 KB of invalid lines
            replies = await exchange(app.port, garbage)
            assert replies == b"? ?\n" * 100_000 and app.counters["invalid"] == 100_001
            grown = app.log_path.stat().st_size - size
        return app.log_path, grown

    path, grown = run(main)
    assert grown < 5000  # 200 KB of garbage in: ten lines logged and one entry counting the rest
    assert path.read_text().splitlines()[-2].endswith(" 99990 more invalid lines, not logged")
    assert path.stat().st_mode & 0o777 == 0o600  # it holds client locations
    log = path.read_text().splitlines()
    bad_in, bad_out = [e for e in log if "zzz" in e]
    assert bad_in.endswith("z" * 200 + "... (3000 bytes)") and bad_out.endswith("... (3003 bytes)")
    assert max(len(e) for e in log) < 400  # 3 KB of garbage in, a few hundred bytes logged

    traffic = TrafficLog("Clark", tmp_path / "small" / "Clark.log", max_bytes=2000, backups=2)
    for i in range(500):
        traffic.write("IN", f"line {i}")
    traffic.close()
    files = sorted((tmp_path / "small").iterdir())
    assert [f.name for f in files] == ["Clark.log", "Clark.log.1", "Clark.log.2"]
    assert all(f.stat().st_size <= 2000 and f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert files[0].read_text().splitlines()[-1].endswith("IN line 499")
