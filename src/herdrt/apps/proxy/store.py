"""AT records and the per-server location store with the newer-timestamp rule.

An :class:`AtRecord` is what one server learned from one ``IAMAT``: the AT line's five fields.
Servers exchange it as a msgpack-able dict (:meth:`AtRecord.to_wire`)::

    {"v": 1, "server": "Clark", "skew": "+0.263873386",
     "client": "kiwi.cs.ucla.edu", "location": "+34.068930-118.445127",
     "time": "1621464827.959498503"}

Every value is a ``str`` exactly as it appears in the AT line, so any server can reproduce the
line byte for byte; the receiver re-parses and validates ``location`` and ``time`` (a malformed
record from a peer is refused, never stored). ``v`` is the record version: a receiver refuses
versions it does not know. Unknown extra keys are ignored, so a later version may add fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .protocol import format_at, parse_location, parse_time, split_fields

__all__ = ["RECORD_VERSION", "AtRecord", "LocationStore"]

RECORD_VERSION = 1
_FIELDS = ("server", "skew", "client", "location", "time")


@dataclass(frozen=True, slots=True)
class AtRecord:
    """One client's reported location as seen by the server that received it.

    ``time_ns`` (the client's time in integer nanoseconds) orders records of the same client.
    """

    server: str
    skew: str
    client: str
    location: str
    time: str
    time_ns: int
    lat: float
    lon: float

    @classmethod
    def create(cls, server: str, skew: str, client: str, location: str, time: str) -> AtRecord:
        """Build a record from its five text fields, validating them; ``ValueError`` if invalid."""
        for name, value in zip(_FIELDS, (server, skew, client, location, time), strict=False):
            # Each field must be one non-empty protocol field, or the AT line would not re-parse.
            if not isinstance(value, str) or split_fields(value) != [value]:
                raise ValueError(f"AT record field {name!r} is not a single field: {value!r}")
        lat, lon = parse_location(location)
        return cls(server, skew, client, location, time, parse_time(time), lat, lon)

    @classmethod
    def from_wire(cls, data: Any) -> AtRecord:
        """Decode and validate a record from another server; ``ValueError`` if it is malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"an AT record is a dict, not {type(data).__name__}")
        if data.get("v") != RECORD_VERSION:
            raise ValueError(f"unsupported AT record version {data.get('v')!r}")
        try:
            fields = [data[name] for name in _FIELDS]
        except KeyError as exc:
            raise ValueError(f"AT record lacks {exc.args[0]!r}") from None
        return cls.create(*fields)

    def to_wire(self) -> dict[str, Any]:
        """The record as a msgpack-able dict (see the module docstring for the shape)."""
        return {
            "v": RECORD_VERSION,
            "server": self.server,
            "skew": self.skew,
            "client": self.client,
            "location": self.location,
            "time": self.time,
        }

    @property
    def line(self) -> str:
        """The AT line (without newline)."""
        return format_at(self.server, self.skew, self.client, self.location, self.time)


class LocationStore:
    """The latest :class:`AtRecord` of each client.

    :meth:`offer` keeps a record only if its client time is strictly newer than the stored one,
    so a flooded record that comes back around a cycle, or a late stale one, changes nothing and is
    not flooded again. Used from one event loop; no locking.
    """

    def __init__(self) -> None:
        self._records: dict[str, AtRecord] = {}

    def offer(self, record: AtRecord) -> bool:
        """Store ``record`` if it is newer than what we have for its client; True if stored."""
        current = self._records.get(record.client)
        if current is not None and record.time_ns <= current.time_ns:
            return False
        self._records[record.client] = record
        return True

    def get(self, client: str) -> AtRecord | None:
        """The stored record of ``client``, or None."""
        return self._records.get(client)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, client: object) -> bool:
        return client in self._records

    def __iter__(self) -> Iterator[AtRecord]:
        return iter(list(self._records.values()))
