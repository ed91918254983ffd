"""A node's metrics, the Prometheus way: a collector read at scrape time.

Nothing on a message path counts for Prometheus: the runtime and the herd already keep their
counters, and :class:`NodeCollector` turns one snapshot of them (``node.stats()`` and
``node.herd_status()``) into metric families when ``/metrics`` is scraped. Metrics cost nothing
between scrapes.

Cardinality is bounded whatever the node runs (:class:`ActorSeries`): keyed actors
(``"kind:key"``) are one series per kind (``actor="kind:*"``), and at most ``max_actor_series``
other actors get their own; the rest share ``actor="(other)"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from .. import __version__
from ..core import IMPLEMENTATION
from ..runtime.node import family_of

if TYPE_CHECKING:
    from ..herd.node import HerdNode

__all__ = ["ActorSeries", "NodeCollector", "node_registry", "OTHER", "DEFAULT_MAX_ACTOR_SERIES"]

#: The series of the actors past the cardinality guard.
OTHER = "(other)"
#: How many actors (besides keyed kinds) get their own series by default.
DEFAULT_MAX_ACTOR_SERIES = 100

_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
_ACTOR_LABELS = ("actor", "kind")


class ActorSeries:
    """Which actors get a series of their own: the first ``limit`` named actors seen, for as long
    as they live. An actor seen while the table is full stays in ``(other)`` for its whole life,
    so no count ever moves out of ``(other)`` and every counter only goes up."""

    def __init__(self, limit: int = DEFAULT_MAX_ACTOR_SERIES):
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.limit = limit
        self._own: set[str] = set()
        self._other: set[str] = set()

    def split(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """The named (not keyed) live actors among ``names``: (own series, folded into other)."""
        named = [n for n in names if family_of(n) is None]
        live = set(named)
        self._own &= live
        self._other &= live
        own, other = [], []
        for name in named:
            if name in self._own:
                own.append(name)
            elif name not in self._other and len(self._own) < self.limit:
                self._own.add(name)
                own.append(name)
            else:
                self._other.add(name)
                other.append(name)
        return own, other


class NodeCollector(Collector):
    """Reads one node's counters into Prometheus metric families at each scrape."""

    def __init__(self, node: HerdNode, max_actor_series: int = DEFAULT_MAX_ACTOR_SERIES):
        self.node = node
        self.series = ActorSeries(max_actor_series)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.stats()
        status = node.herd_status(stats)
        info = GaugeMetricFamily(
            "herdrt_node_info", "This node: its name, herdrt version and core.", labels=["node", "version", "core"]
        )
        info.add_metric([node.name, __version__, IMPLEMENTATION], 1)
        yield info
        yield from self._actors(stats)
        yield from self._dead_letters(status["dead_letters"])
        yield from self._links(status["links"])
        live = GaugeMetricFamily("herdrt_nodes_live", "Nodes this node sees live (itself included).")
        live.add_metric([], len(status["live"]))
        yield live
        configured = GaugeMetricFamily("herdrt_nodes", "Nodes in the herd file.")
        configured.add_metric([], len(status["nodes"]))
        yield configured
        share = GaugeMetricFamily(
            "herdrt_ring_share", "Fraction of the hash ring each live node owns.", labels=["node"]
        )
        for name, fraction in sorted(status["ring_share"].items()):
            share.add_metric([name], fraction)
        yield share
        keyed = GaugeMetricFamily("herdrt_keyed_actors", "Keyed actors running on this node.")
        keyed.add_metric([], status["keyed_actors"])
        yield keyed
        yield _events("herdrt_node_events", "Herd-layer events of this node, by counter.", status["counters"])
        bridge = status.get("bridge")
        if bridge is not None:
            services = GaugeMetricFamily("herdrt_bridge_services", "Services known to the bridge.", labels=["state"])
            svcs = bridge["services"].values()
            live_services = sum(1 for s in svcs if s["live"])
            services.add_metric(["live"], live_services)
            services.add_metric(["evicted"], len(svcs) - live_services)
            yield services
            yield _events(
                "herdrt_bridge_events",
                "Bridge events by counter: tells_from_services, asks_from_services, asks_to_services, evictions, ...",
                bridge["counters"],
            )
        proxy = status.get("proxy")
        if proxy is not None:
            yield _events(
                "herdrt_proxy_events",
                "Location proxy events by counter: iamats, whatsats, floods, cache_hits, cache_misses, ...",
                proxy,
            )

    def _actors(self, stats: dict[str, Any]) -> Iterator[Metric]:
        actors = stats["actors"]
        own, folded = self.series.split(actors)
        rows: list[tuple[str, str, dict[str, Any]]] = [(name, "", actors[name]) for name in own]
        rows += [(f"{kind}:*", kind, s) for kind, s in sorted(stats["families"].items())]
        # (other): the node's totals (stopped actors included) less every series above, so it
        # only grows, and all series add up to the node's totals.
        total = stats["total"]
        other = {key: total[key] for key in ("messages", "failures", "dropped", "rejected")}
        other["mailbox_depth"] = sum(actors[name]["mailbox_depth"] for name in folded)
        for _, _, s in rows:
            for key in ("messages", "failures", "dropped", "rejected"):
                other[key] -= s[key]
        messages = CounterMetricFamily(
            "herdrt_messages", "Messages handled, per actor (keyed actors: per kind).", labels=_ACTOR_LABELS
        )
        failures = CounterMetricFamily(
            "herdrt_actor_failures", "Messages whose handler raised, per actor.", labels=_ACTOR_LABELS
        )
        depth = GaugeMetricFamily(
            "herdrt_mailbox_depth", "Messages waiting in mailboxes, per actor.", labels=_ACTOR_LABELS
        )
        handler = SummaryMetricFamily(
            "herdrt_handler_seconds",
            "Handler time per message, per actor (quantiles of each run's mean per message).",
            labels=_ACTOR_LABELS,
        )
        for name, kind, s in rows:
            labels = [name, kind]
            messages.add_metric(labels, s["messages"])
            failures.add_metric(labels, s["failures"])
            depth.add_metric(labels, s["mailbox_depth"])
            handler.add_metric(labels, s["messages"], s["busy"])
            for q, key in _QUANTILES:
                value = s["handler_quantiles"][key]
                if value is not None:
                    handler.samples.append(
                        Sample("herdrt_handler_seconds", {"actor": name, "kind": kind, "quantile": q}, value)
                    )
        messages.add_metric([OTHER, ""], max(other["messages"], 0))
        failures.add_metric([OTHER, ""], max(other["failures"], 0))
        depth.add_metric([OTHER, ""], other["mailbox_depth"])
        yield from (messages, failures, depth, handler)
        live = GaugeMetricFamily("herdrt_actors", "Live actors on this node.")
        live.add_metric([], len(actors))
        yield live

    @staticmethod
    def _dead_letters(letters: dict[str, Any]) -> Iterator[Metric]:
        dead = CounterMetricFamily(
            "herdrt_dead_letters", "Messages this node took in and could not deliver, by reason.", labels=["reason"]
        )
        for reason, n in sorted(letters["by_reason"].items()):
            dead.add_metric([reason], n)
        yield dead
        reported = CounterMetricFamily(
            "herdrt_dead_letters_reported",
            "Messages this node sent that another node reported undeliverable, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(letters["reported"]["by_reason"].items()):
            reported.add_metric([reason], n)
        yield reported

    @staticmethod
    def _links(links: dict[str, Any]) -> Iterator[Metric]:
        up = GaugeMetricFamily("herdrt_link_up", "1 while the link to a neighbor is up.", labels=["peer"])
        rtt = GaugeMetricFamily(
            "herdrt_link_rtt_seconds", "Round-trip time of the latest heartbeat on each link.", labels=["peer"]
        )
        nbytes = CounterMetricFamily("herdrt_link_bytes", "Bytes over each link.", labels=["peer", "direction"])
        frames = CounterMetricFamily("herdrt_link_frames", "Frames over each link.", labels=["peer", "direction"])
        queued = GaugeMetricFamily("herdrt_link_queued", "Frames queued on each link.", labels=["peer"])
        for peer, s in sorted(links.items()):
            up.add_metric([peer], 1 if s["state"] == "up" else 0)
            if s["last_rtt"] is not None:
                rtt.add_metric([peer], s["last_rtt"])
            for direction in ("in", "out"):
                nbytes.add_metric([peer, direction], s[f"bytes_{direction}"])
                frames.add_metric([peer, direction], s[f"frames_{direction}"])
            queued.add_metric([peer], s["queued"])
        yield from (up, rtt, nbytes, frames, queued)


def _events(name: str, doc: str, counters: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["event"])
    for event, n in sorted(counters.items()):
        if isinstance(n, int):
            family.add_metric([event], n)
    return family


def node_registry(node: HerdNode, max_actor_series: int = DEFAULT_MAX_ACTOR_SERIES) -> CollectorRegistry:
    """A registry of its own for ``node`` (several nodes can share a process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, max_actor_series))
    return registry
