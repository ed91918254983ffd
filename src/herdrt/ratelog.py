"""Rate-limited logging for events that can come once per message.

A peer or client that floods a node with bad or undeliverable messages must not make it write a
log line per message: that turns a flood into a disk-filling, loop-blocking denial of service
(1.57 M INFO lines in one test). :class:`RateLog` logs the first event of a kind, then at most one
line per ``interval`` seconds for that kind, each saying how many like it were held back. The
events are still counted exactly where they happen (node and link counters); the log is the
human-readable summary.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["RateLog"]


class RateLog:
    """Logs through ``logger`` at most once per ``interval`` seconds per *key* (the kind of event).

    ``log(level, key, msg, *args)`` logs at once when ``key`` has not logged within ``interval``;
    otherwise the event is held back and counted. The next line for that key (or :meth:`flush`,
    which a node calls from a timer) adds "(N more like it in the last T s)". At most ``max_keys``
    keys are remembered (oldest forgotten first), so keys taken from the wire cannot grow memory.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        # key -> [time of the last line, events held back since, level, msg, args of the last held]
        self._keys: OrderedDict[Hashable, list] = OrderedDict()
        self.held = 0  # events held back, in all

    def log(self, level: int, key: Hashable, msg: str, *args) -> None:
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            entry[2:] = level, msg, args
            self.held += 1
            return
        if entry is not None and entry[1]:
            self.logger.log(level, msg + " (%d more like it in the last %.0f s)", *args, entry[1], now - entry[0])
        else:
            self.logger.log(level, msg, *args)
        self._keys[key] = [now, 0, level, msg, args]
        self._keys.move_to_end(key)
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def info(self, key: Hashable, msg: str, *args) -> None:
        self.log(logging.INFO, key, msg, *args)

    def warning(self, key: Hashable, msg: str, *args) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def flush(self) -> None:
        """Log the held-back count of every key whose interval is over (call it now and then)."""
        now = self._clock()
        for entry in list(self._keys.values()):
            last, held, level, msg, args = entry
            if held and now - last >= self.interval:
                self.logger.log(
                    level, "%d more like this in the last %.0f s; the last: " + msg, held, now - last, *args
                )
                entry[0], entry[1] = now, 0
