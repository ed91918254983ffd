"""The client protocol of the location proxy: parsing commands and formatting replies.

Lines are text, one command per line, fields separated by any run of ASCII whitespace::

    IAMAT <client-id> <lat><lon> <posix-time>   ->  AT <server> <skew> <client-id> <lat><lon> <posix-time>
    WHATSAT <client-id> <radius-km> <bound>     ->  the stored AT line, then Places JSON, then a blank line
    anything else                               ->  ? <the line as received>

Everything here is pure (no I/O, no clock) so it can be tested exhaustively.

Exactness: the client's time is kept as the text it sent (echoed byte for byte) and as integer
nanoseconds (compared and subtracted exactly, never as floats). Coordinates and radii are range-checked
with :class:`decimal.Decimal`, so ``+90.0000000000000001`` is out of range even though it rounds to
90.0 as a float.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_RADIUS_KM",
    "MAX_BOUND",
    "MAX_DIGITS",
    "CommandError",
    "IAmAt",
    "WhatsAt",
    "split_fields",
    "parse_time",
    "parse_location",
    "parse_command",
    "format_skew",
    "format_at",
    "format_places",
    "whatsat_reply",
    "invalid_reply",
]

MAX_RADIUS_KM = 50
MAX_BOUND = 20

_NS = 1_000_000_000
# ASCII whitespace only: str.split() would also split on U+00A0, U+2028, \x1c-\x1f and friends.
_WS = re.compile(r"[ \t\n\r\f\v]+")
# Every number has a length limit (leading zeros aside): int() of thousands of digits is slow,
# and past 4,300 digits it raises ValueError (Python's int-string limit); no valid value needs
# more significant digits than these.
MAX_DIGITS = 30
_TIME = re.compile(r"([+-]?)0*([0-9]{1,12})(?:\.([0-9]{1,9}))?")  # seconds: up to the year 33,658
_COORD = rf"[+-]0*[0-9]{{1,3}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?"
_LOCATION = re.compile(f"({_COORD})({_COORD})")
_RADIUS = re.compile(rf"0*[0-9]{{1,3}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?")
_BOUND = re.compile(r"0*[0-9]{1,3}")


class CommandError(ValueError):
    """A line that is not a valid command; the reply is ``? <line>``."""


@dataclass(frozen=True, slots=True)
class IAmAt:
    """A parsed ``IAMAT``: the three echoed fields as sent, plus their parsed values."""

    client: str
    location: str
    time: str
    time_ns: int
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class WhatsAt:
    """A parsed ``WHATSAT``: the client asked about, the radius in km and the result bound."""

    client: str
    radius_km: float
    bound: int


def split_fields(line: str) -> list[str]:
    """The fields of a line, split on runs of ASCII whitespace (leading/trailing ignored)."""
    return [f for f in _WS.split(line) if f]


def parse_time(text: str) -> int:
    """POSIX time ``[+-]seconds[.fraction]`` (up to 12 significant digits of seconds and 9 of
    fraction) as integer nanoseconds.

    Exact: ``"1621464827.959498503"`` is ``1621464827959498503``. More than nine fraction digits
    (finer than a nanosecond), more than twelve of seconds, exponents, ``inf``/``nan`` and
    non-ASCII digits are refused.
    """
    m = _TIME.fullmatch(text)
    if m is None:
        raise CommandError(f"bad time {text!r}")
    sign, whole, frac = m.groups()
    ns = int(whole) * _NS + (int(frac.ljust(9, "0")) if frac else 0)
    return -ns if sign == "-" else ns


def _in_range(text: str, limit: int) -> float:
    if abs(Decimal(text)) > limit:
        raise CommandError(f"{text} is outside [-{limit}, {limit}]")
    return float(text)


def parse_location(text: str) -> tuple[float, float]:
    """ISO 6709 ``<lat><lon>`` with both signs explicit (``+34.068930-118.445127``) as floats.

    Latitude must lie in [-90, 90] and longitude in [-180, 180].
    """
    m = _LOCATION.fullmatch(text)
    if m is None:
        raise CommandError(f"bad location {text!r}")
    return _in_range(m.group(1), 90), _in_range(m.group(2), 180)


def _parse_radius(text: str) -> float:
    if _RADIUS.fullmatch(text) is None:
        raise CommandError(f"bad radius {text!r}")
    value = Decimal(text)
    if not 0 < value <= MAX_RADIUS_KM:
        raise CommandError(f"radius {text} is outside (0, {MAX_RADIUS_KM}]")
    return float(value)


def _parse_bound(text: str) -> int:
    if _BOUND.fullmatch(text) is None:
        raise CommandError(f"bad bound {text!r}")
    value = int(text.lstrip("0") or "0")
    if not 1 <= value <= MAX_BOUND:
        raise CommandError(f"bound {text} is outside [1, {MAX_BOUND}]")
    return value


def parse_command(line: str) -> IAmAt | WhatsAt:
    """Parse one line (without its newline); :class:`CommandError` says why it is invalid."""
    fields = split_fields(line)
    if not fields:
        raise CommandError("empty line")
    command = fields[0]
    if command == "IAMAT":
        if len(fields) != 4:
            raise CommandError(f"IAMAT takes 3 fields, got {len(fields) - 1}")
        _, client, location, time = fields
        lat, lon = parse_location(location)
        return IAmAt(client, location, time, parse_time(time), lat, lon)
    if command == "WHATSAT":
        if len(fields) != 4:
            raise CommandError(f"WHATSAT takes 3 fields, got {len(fields) - 1}")
        _, client, radius, bound = fields
        return WhatsAt(client, _parse_radius(radius), _parse_bound(bound))
    raise CommandError(f"unknown command {command[:32]!r}")


def format_skew(ns: int) -> str:
    """A signed duration in nanoseconds as seconds with an explicit sign and 9 decimals."""
    sign = "-" if ns < 0 else "+"
    ns = abs(ns)
    return f"{sign}{ns // _NS}.{ns % _NS:09d}"


def format_at(server: str, skew: str, client: str, location: str, time: str) -> str:
    """The ``AT`` line (without newline)."""
    return f"AT {server} {skew} {client} {location} {time}"


def format_places(response: dict[str, Any]) -> str:
    """A Places response as JSON, pretty-printed with ``indent=3`` like the classic project.

    ``json.dumps`` escapes newlines inside strings, so the text never contains a blank line and the
    two newlines that end a WHATSAT reply are unambiguous. Non-ASCII names stay UTF-8.
    """
    return json.dumps(response, indent=3, ensure_ascii=False)


def whatsat_reply(at_line: str, response: dict[str, Any], bound: int) -> str:
    """The whole WHATSAT reply: the AT line, the Places JSON cut to ``bound`` results, ``\\n\\n``.

    ``response`` is not modified (it may be a cached object shared with other replies).
    """
    results = response.get("results")
    if isinstance(results, list) and len(results) > bound:
        response = {**response, "results": results[:bound]}
    return f"{at_line}\n{format_places(response)}\n\n"


def invalid_reply(raw_line: bytes) -> bytes:
    """``? <line>`` for a line as received (bytes, so even invalid UTF-8 is echoed exactly)."""
    return b"? " + raw_line + b"\n"
