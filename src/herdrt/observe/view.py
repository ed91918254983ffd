"""The herd at a glance: every node's ``herd_status()`` folded into one view, with rates.

:class:`HerdWatch` takes successive rounds of statuses (one per node, or the error that stood in
for it) and returns a plain, JSON-ready dict: the nodes with their state and message rates, the
links of the neighbor graph with their state and RTT, the busiest actors, the dead letters. The
herd page (``GET /`` on any node) and ``herdrt top`` both draw it.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import HerdConfig

__all__ = ["HerdWatch", "herd_edges"]


def herd_edges(config: HerdConfig) -> list[tuple[str, str]]:
    """The neighbor graph of ``config``: each link once, as a sorted pair, in a stable order."""
    return sorted({tuple(sorted((a, b))) for a in config.nodes for b in config.neighbors(a)})  # type: ignore[misc]


class HerdWatch:
    """Turns rounds of node statuses into views; a rate is the change since the previous round."""

    def __init__(self, config: HerdConfig, *, busiest: int = 10):
        self.config = config
        self.edges = herd_edges(config)
        self.busiest = busiest
        self._prev: dict[tuple[str, str], float] = {}
        self._prev_at: float | None = None

    def update(self, statuses: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """The view of one round: ``statuses`` maps each node to its ``herd_status()`` dict, or to
        the exception (or text) that says why it did not answer."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._prev_at if self._prev_at is not None else None
        seen: dict[tuple[str, str], float] = {}

        def rate(key: tuple[str, str], value: float) -> float | None:
            seen[key] = value
            before = self._prev.get(key)
            if elapsed is None or elapsed <= 0 or before is None or value < before:
                return None
            return (value - before) / elapsed

        up = {name: s for name, s in statuses.items() if isinstance(s, dict)}
        shares: dict[str, float] = next((s["ring_share"] for s in up.values() if s.get("ring_share")), {})
        nodes = []
        letters: dict[str, int] = {}
        actors = []
        for name in self.config.nodes:
            s = statuses.get(name)
            if not isinstance(s, dict):
                nodes.append({"name": name, "up": False, "error": _why(s)})
                continue
            total = s["stats"]
            dead = s["dead_letters"]
            for reason, n in dead["by_reason"].items():
                letters[reason] = letters.get(reason, 0) + n
            bridge, proxy = s.get("bridge"), s.get("proxy")
            nodes.append(
                {
                    "name": name,
                    "up": True,
                    "error": None,
                    "pid": s["pid"],
                    "sees": len(s["live"]),
                    "actors": s["actors"],
                    "keyed_actors": s["keyed_actors"],
                    "clients": s["clients"],
                    "messages": total["messages"],
                    "rate": rate((name, "messages"), total["messages"]),
                    "mailbox_depth": total["mailbox_depth"],
                    "dead_letters": dead["total"],
                    "dead_rate": rate((name, "dead"), dead["total"]),
                    "ring_share": shares.get(name, 0.0),
                    "bridge": None
                    if bridge is None
                    else {
                        "endpoint": bridge["endpoint"],
                        "services": {
                            svc: {"live": v["live"], "names": v["names"], "messages_in": v["messages_in"]}
                            for svc, v in bridge["services"].items()
                        },
                        "tells": bridge["counters"].get("tells_from_services", 0),
                        "asks": bridge["counters"].get("asks_from_services", 0),
                        "evictions": bridge["counters"].get("evictions", 0),
                    },
                    "proxy": None
                    if proxy is None
                    else {k: proxy.get(k, 0) for k in ("iamats", "whatsats", "floods", "cache_hits")},
                }
            )
            for row in s.get("busiest", ()):
                actors.append({**row, "node": name, "rate": rate((name, "actor:" + row["actor"]), row["messages"])})
        actors.sort(key=lambda a: (-(a["rate"] or 0.0), -a["messages"]))
        links = []
        for a, b in self.edges:
            ends = [up[x]["links"].get(y) for x, y in ((a, b), (b, a)) if x in up]
            state = [e for e in ends if e is not None and e.get("state", "up") == "up"]
            rtts = [e["last_rtt"] for e in state if e.get("last_rtt") is not None]
            links.append({"a": a, "b": b, "up": bool(state), "rtt": min(rtts) if rtts else None})
        self._prev, self._prev_at = seen, now
        rates = [n["rate"] for n in nodes if n.get("rate") is not None]
        return {
            "herd": self.config.source,
            "time": time.time(),
            "nodes": nodes,
            "links": links,
            "busiest": actors[: self.busiest],
            "dead_letters": {"total": sum(letters.values()), "by_reason": letters},
            "summary": {
                "nodes_up": len(up),
                "nodes": len(self.config.nodes),
                "links_up": sum(link["up"] for link in links),
                "links": len(links),
                "rate": sum(rates) if rates else None,
                "messages": sum(n.get("messages", 0) for n in nodes),
            },
        }


def _why(error: Any) -> str:
    if error is None:
        return "no answer"
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return str(error)
