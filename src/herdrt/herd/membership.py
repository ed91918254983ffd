"""Who is alive, and how to reach them: failure detection and link-state routing.

* :class:`PhiAccrualDetector` turns heartbeat arrival times into a suspicion level ``phi``
  (Hayashibara et al., "The phi accrual failure detector", 2004), using the compiled
  :class:`~herdrt.core.OnlineStats` for the inter-arrival mean and deviation.
* :class:`LinkState` keeps each node's latest report of its live links (flooded along the
  neighbor graph, newest sequence number wins), derives the live graph — an edge counts only when
  both of its ends report it — and answers the next hop towards every reachable node.
* :func:`check_report` admits a MEMBERSHIP report only in the shape a real node sends, and
  :class:`ReportPacer` only at the rate it sends them (a newer report waits its turn, never lost).
* :class:`Membership` is one node's part in it all: its own reports and incarnation, refuting
  false reports about itself, the live set, and the failure detectors of its links.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..core import OnlineStats
from . import protocol as P
from .link import Link, LinkClosed, LinkOverflow

if TYPE_CHECKING:
    from .node import HerdNode

__all__ = ["PhiAccrualDetector", "LinkState", "next_hops", "ReportRefused", "check_report", "ReportPacer", "Membership"]

log = logging.getLogger("herdrt.herd")


class PhiAccrualDetector:
    """Suspicion of one peer, from the arrival times of its heartbeats.

    ``phi(now)`` is ``-log10`` of the probability that a heartbeat would still be on its way after
    the silence observed so far, given a normal distribution of inter-arrival times fitted to the
    heartbeats seen. ``phi = 8`` means odds of 1 in 10^8 that the peer is merely slow. The
    deviation has a floor (``min_std``), and ``acceptable_pause`` is added to the expected
    interval, so a regular heartbeat does not make the detector hair-triggered.

    With the defaults for a 0.5 s heartbeat (mean 0.5 s, ``min_std`` 0.125 s, pause 1.5 s), a
    silent peer crosses ``phi = 8`` after about 2.7 s — within the herd's 3 s bound, yet past the
    stalls of a busy machine (a killed process is noticed at once anyway: its TCP link drops).
    """

    __slots__ = ("threshold", "min_std", "acceptable_pause", "_stats", "_last")

    def __init__(
        self,
        interval: float,
        threshold: float = 8.0,
        min_std: float | None = None,
        acceptable_pause: float | None = None,
    ):
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, not {interval}")
        self.threshold = threshold
        self.min_std = interval / 4 if min_std is None else min_std
        self.acceptable_pause = max(interval, 1.5) if acceptable_pause is None else acceptable_pause
        self._stats = OnlineStats()
        # Seed with the configured interval, so phi is meaningful from the first heartbeat on.
        self._stats.update(interval)
        self._last: float | None = None

    def heartbeat(self, now: float) -> None:
        """Record a heartbeat (or any message) from the peer arriving at ``now`` (seconds)."""
        if self._last is not None and now > self._last:
            self._stats.update(now - self._last)
        self._last = now

    @property
    def last_heard(self) -> float | None:
        return self._last

    @property
    def intervals(self) -> OnlineStats:
        """Inter-arrival statistics (seconds)."""
        return self._stats

    def phi(self, now: float) -> float:
        """Suspicion level at ``now``: 0 just after a heartbeat, growing with silence."""
        if self._last is None:
            return 0.0
        elapsed = now - self._last
        mean = self._stats.mean + self.acceptable_pause
        std = max(self._stats.stddev, self.min_std)
        y = (elapsed - mean) / std
        # Logistic approximation of the normal tail (as Akka's detector): accurate to ~1e-4
        # and, unlike erfc, free of underflow for long silences.
        z = -y * (1.5976 + 0.070566 * y * y)
        if z > 700.0:  # far earlier than expected (short intervals, tiny deviation): exp would
            return 0.0  # overflow, and phi is 0 to double precision anyway
        e = math.exp(z)
        if elapsed > mean:
            return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
        return -math.log10(1.0 - 1.0 / (1.0 + e))

    def is_available(self, now: float) -> bool:
        """False once ``phi(now)`` reaches the threshold."""
        return self.phi(now) < self.threshold


def next_hops(graph: Mapping[str, Iterable[str]], source: str) -> dict[str, str]:
    """For each node reachable from ``source`` in ``graph`` (not ``source`` itself), the neighbor
    of ``source`` on a shortest path to it. Ties go to the neighbor whose name sorts first, so every
    run — and every node computing the same graph — picks the same route."""
    hops: dict[str, str] = {}
    seen = {source}
    queue: deque[tuple[str, str | None]] = deque([(source, None)])
    while queue:
        node, first = queue.popleft()
        for nbr in sorted(graph.get(node, ())):
            if nbr in seen:
                continue
            seen.add(nbr)
            hop = nbr if first is None else first
            hops[nbr] = hop
            queue.append((nbr, hop))
    return hops


class LinkState:
    """The herd's live graph as seen from one node, built from flooded link-state reports.

    Each node reports ``(seq, live_neighbors)``; a report is taken only if its ``seq`` is newer
    than the last one from that origin (which also stops the flood from looping). An edge is live
    when both ends report it; a node is live when it is reachable from ``me`` over live edges.
    """

    __slots__ = ("me", "_reports", "_hops", "_seq")

    def __init__(self, me: str):
        self.me = me
        # origin -> (version, live neighbors); a version is anything ordered (the membership's
        # are (incarnation, seq); this node's own, a plain count)
        self._reports: dict[str, tuple[Any, frozenset[str]]] = {}
        self._seq = 0
        self._hops: dict[str, str] = {}

    def local_report(self, live_neighbors: Iterable[str]) -> tuple[int, frozenset[str]]:
        """Record this node's own live links; returns the ``(seq, neighbors)`` report to flood."""
        self._seq += 1
        report = (self._seq, frozenset(live_neighbors))
        self._reports[self.me] = report
        self._recompute()
        return report

    def apply(self, origin: str, seq: Any, live_neighbors: Iterable[str]) -> bool:
        """Take a report from ``origin``; True if it was new (and so should be flooded onwards)."""
        if origin == self.me:
            return False  # our own report came back around the graph
        old = self._reports.get(origin)
        if old is not None and seq <= old[0]:
            return False
        self._reports[origin] = (seq, frozenset(live_neighbors))
        self._recompute()
        return True

    def is_newer(self, origin: str, seq) -> bool:
        """Whether a report ``seq`` from ``origin`` would be taken (it is newer than the one held)."""
        old = self._reports.get(origin)
        return origin != self.me and (old is None or seq > old[0])

    def forget(self, origin: str) -> None:
        """Drop what ``origin`` said (e.g. when it restarts and its sequence numbers start over)."""
        if self._reports.pop(origin, None) is not None:
            self._recompute()

    def graph(self) -> dict[str, set[str]]:
        """Live edges: those both ends report."""
        g: dict[str, set[str]] = {}
        for a, (_, nbrs) in self._reports.items():
            for b in nbrs:
                other = self._reports.get(b)
                if other is not None and a in other[1]:
                    g.setdefault(a, set()).add(b)
        return g

    def _recompute(self) -> None:
        self._hops = next_hops(self.graph(), self.me)

    def next_hop(self, node: str) -> str | None:
        """The neighbor to send through to reach ``node``, or None if it is unreachable."""
        return self._hops.get(node)

    def live(self) -> set[str]:
        """Nodes reachable from here, this node included."""
        return {self.me, *self._hops}

    def reports(self) -> list[tuple[str, Any, frozenset[str]]]:
        """Every report held, as ``(origin, seq, live_neighbors)`` (to bring a new neighbor up to date)."""
        return [(origin, seq, nbrs) for origin, (seq, nbrs) in self._reports.items()]

    def seq_of(self, origin: str) -> Any:
        report = self._reports.get(origin)
        return None if report is None else report[0]


class ReportRefused(ValueError):
    """A MEMBERSHIP report no real node would send; the message says what is wrong with it."""


_MAX_SEQ = (1 << 63) - 1


def check_report(
    env, neighbors: Mapping[str, frozenset[str]], max_skew: float, now_ns: Callable[[], int] = time.time_ns
) -> tuple[str, int, int, list[str]]:
    """``(origin, incarnation, seq, live_neighbors)`` of a MEMBERSHIP envelope, if a real node
    could have sent it: ``origin`` is a node of the herd (``neighbors`` maps each node to its
    configured neighbors); ``incarnation`` (its start time in ns) is positive and not more than
    ``max_skew`` seconds ahead of this clock; ``seq`` is a positive int64; the live neighbors are
    distinct configured neighbors of ``origin``, sorted. Raises :class:`ReportRefused` otherwise."""
    if env.__class__ is not list or len(env) < 5:
        raise ReportRefused("MEMBERSHIP is [7, origin, incarnation, seq, live_neighbors]")
    origin, incarnation, seq, live = env[1:5]
    allowed = neighbors.get(origin) if origin.__class__ is str else None
    if allowed is None:
        raise ReportRefused(f"origin {origin!r:.80} is not a node of this herd")
    for name, value in (("incarnation", incarnation), ("seq", seq)):
        if value.__class__ is not int or not 0 < value <= _MAX_SEQ:
            raise ReportRefused(f"{name} must be a positive int64, not {value!r:.40}")
    ahead = (incarnation - now_ns()) / 1e9
    if ahead > max_skew:
        raise ReportRefused(
            f"incarnation of {origin} is {ahead:.1f} s ahead of this clock "
            f"(max_clock_skew {max_skew:g} s): forged, or the clocks are not in sync"
        )
    if live.__class__ is not list or len(live) > len(allowed):
        raise ReportRefused(f"live_neighbors must be a list of at most {len(allowed)} names")
    for i, name in enumerate(live):
        if name not in allowed:
            raise ReportRefused(f"{name!r:.80} is not a neighbor of {origin} (herd.links)")
        if i and not live[i - 1] < name:
            raise ReportRefused("live_neighbors must be sorted and distinct")
    return origin, incarnation, seq, live


class ReportPacer:
    """At most ``rate`` new reports a second per origin (a burst of ``burst``), the newest kept.

    A real node reports once per link change; an origin that reports faster is paced, not
    dropped: :meth:`admit` says whether a report may be applied now; if not, it is kept as that
    origin's *pending* report (a newer one replaces it) and ``apply(origin)`` is called back when
    its turn comes, with :meth:`take` giving it. So the last word of every origin is always
    applied, and a flood of forged reports costs at most ``rate`` graph updates a second.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        call_later: Callable[..., asyncio.TimerHandle],
        apply: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.burst = burst
        self._call_later = call_later
        self._apply = apply
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # origin -> (tokens, at)
        self._pending: dict[str, Any] = {}  # origin -> the report held back
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.paced = 0

    def admit(self, origin: str, report) -> bool:
        now = self._clock()
        tokens, at = self._tokens.get(origin, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0 and origin not in self._pending:
            self._tokens[origin] = (tokens - 1.0, now)
            return True
        self._tokens[origin] = (tokens, now)
        self.paced += 1
        self._pending[origin] = report
        if origin not in self._timers:
            self._timers[origin] = self._call_later(max(0.0, (1.0 - tokens) / self.rate), self._due, origin)
        return False

    def _due(self, origin: str) -> None:
        del self._timers[origin]
        now = self._clock()
        tokens, at = self._tokens[origin]
        self._tokens[origin] = (min(float(self.burst), tokens + (now - at) * self.rate) - 1.0, now)
        self._apply(origin)

    def take(self, origin: str):
        """The pending report of ``origin`` (and forget it)."""
        return self._pending.pop(origin, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()


#: Membership reports a second each origin may have applied (a burst of REPORT_BURST); more wait.
REPORT_RATE = 10.0
REPORT_BURST = 32


def _call_later(delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback, *args)


class Membership:
    """One node's part in the herd's membership (PROTOCOL.md, *Membership and routing*): its
    incarnation and reports, the reports of the others (:class:`LinkState`), who is live, the next
    hop to each node, and the phi-accrual detectors of its links.

    ``epoch`` grows with every change to the links or the reports (cached routes expire with it);
    ``on_live(came, gone)`` is called when the set of live nodes changes."""

    def __init__(self, node: HerdNode, on_live: Callable[[set, set], None]):
        self.node = node
        self.name = node.name
        self.config = node.config
        self.incarnation = time.time_ns()
        self.state = LinkState(node.name)
        self.epoch = 0
        self._live: set[str] = {node.name}
        self._on_live = on_live
        self._neighbor_sets = {n: frozenset(node.config.neighbors(n)) for n in node.config.nodes}
        self._detectors: dict[str, PhiAccrualDetector] = {}
        # Neighbors whose link ended in order (they said BYE): their leaving is logged at INFO.
        self._departed: set[str] = set()
        self._pacer = ReportPacer(REPORT_RATE, REPORT_BURST, _call_later, self._paced)

    def start(self) -> None:
        """Report this node's links (the node is listening and dialling)."""
        self.report()

    def close(self) -> None:
        self._pacer.close()

    # -- queries -----------------------------------------------------------------------------------

    def live(self) -> set[str]:
        """The nodes reachable from here, this one included."""
        return set(self._live)

    def next_hop(self, node: str) -> str | None:
        return self.state.next_hop(node)

    # -- links -------------------------------------------------------------------------------------

    def link_up(self, link: Link) -> None:
        """A link to a neighbor is up: watch it, bring the neighbor up to date, report."""
        det = self._detectors[link.peer] = PhiAccrualDetector(
            self.config.heartbeat_interval, self.config.failure_threshold
        )
        self._departed.discard(link.peer)
        det.heartbeat(link.last_heard)
        try:
            for origin, seq, nbrs in self.state.reports():
                if origin != self.name:
                    link.send([P.MEMBERSHIP, origin, seq[0], seq[1], sorted(nbrs)])
        except (LinkClosed, LinkOverflow):
            pass  # gone again already (its link-down reports), or a peer that does not read
        self.report()

    def link_down(self, peer: str, orderly: bool = False) -> None:
        """The link to neighbor ``peer`` is down; ``orderly``: it ended on purpose (this node shuts
        down, or the peer said BYE), so the peer leaving the live set is no cause for a warning."""
        self._detectors.pop(peer, None)
        if orderly:
            self._departed.add(peer)
        if not self.node.closing:
            self.report()

    def check_failures(self, now: float) -> None:
        """Drop the links whose peers have been silent too long (phi accrual)."""
        node = self.node
        for peer, link in node.neighbor_links():
            det = self._detectors.get(peer)
            if det is None or link.reading_paused:
                continue  # a link we stopped reading (backpressure) is not a silent peer
            last = det.last_heard
            if last is None or link.last_heard > last:
                det.heartbeat(link.last_heard)
                last = link.last_heard
            if not det.is_available(now):
                node.counters["suspected"] += 1
                silent = now - last
                log.warning(
                    "%s: %s silent for %.2fs (phi %.1f): dropping the link", self.name, peer, silent, det.phi(now)
                )
                link.abort(f"failure detector: silent for {silent:.2f}s")

    # -- reports -----------------------------------------------------------------------------------

    def report(self) -> None:
        """Flood this node's live links (after any link change)."""
        live = [peer for peer, _ in self.node.neighbor_links()]
        seq, nbrs = self.state.local_report(live)
        self.node.flood([P.MEMBERSHIP, self.name, self.incarnation, seq, sorted(nbrs)])
        self._changed()

    def leave(self) -> None:
        """This node shuts down: flood a last report with no live links, ahead of the BYEs on the
        same links, so that every node, neighbor or not, takes it off the live graph at once and
        knows it left rather than failed."""
        seq, _ = self.state.local_report(())
        self.node.flood([P.MEMBERSHIP, self.name, self.incarnation, seq, []])

    def on_report(self, peer: str, env: list) -> None:
        """A MEMBERSHIP that came from neighbor ``peer``."""
        node = self.node
        try:
            origin, incarnation, seq, nbrs = check_report(env, self._neighbor_sets, self.config.max_clock_skew)
        except ReportRefused as exc:
            node.counters["reports_refused"] += 1
            node.ratelog.warning(("report", peer), "%s: MEMBERSHIP from %s refused: %s", self.name, peer, exc)
            return
        version = (incarnation, seq)
        if origin == self.name:
            # A report about this node newer than its own: forged, or left from a life whose clock
            # ran ahead. Refute it (SWIM/Lifeguard): outgrow it and flood the truth.
            if version > (self.incarnation, self.state.seq_of(self.name)):
                self._refute(peer, version)
            return
        if not self.state.is_newer(origin, version):
            return  # a copy that came round another way: the common case, and cheap
        if origin != peer:
            direct = node.links.link(origin)
            if direct is not None and direct.is_up:
                # This node hears `origin` itself, which sends every report of its own straight
                # here: a newer one from elsewhere is not its word. Pass it to the origin only,
                # which refutes it if it is false.
                node.counters["reports_redirected"] += 1
                try:
                    direct.send(env)
                except (LinkClosed, LinkOverflow):
                    pass
                return
        if self._pacer.admit(origin, (peer, env)):
            self._take(peer, env)
        else:
            node.counters["reports_paced"] += 1

    def _paced(self, origin: str) -> None:
        pending = self._pacer.take(origin)
        if pending is not None and not self.node.closing:
            peer, env = pending
            if self.state.is_newer(origin, (env[2], env[3])):
                self._take(peer, env)

    def _take(self, peer: str, env: list) -> None:
        _, origin, incarnation, seq, nbrs = env
        if self.state.apply(origin, (incarnation, seq), nbrs):
            if not nbrs:
                # A node sends a report with no live links only as it leaves (with none, it
                # could not send one): that is an orderly departure, not a failure.
                self._departed.add(origin)
            # Onwards to every neighbor but the sender: the origin's neighbors pass it to the
            # origin, which refutes it if it is forged.
            self.node.flood(env, (peer,))
            self._changed()

    def _refute(self, via: str, version: tuple[int, int]) -> None:
        self.node.counters["refutations"] += 1
        self.incarnation = max(time.time_ns(), version[0] + 1)
        self.node.ratelog.warning(
            ("refute",),
            "%s: a report about this node newer than its own (incarnation %d, "
            "seq %d) came via %s; refuted with incarnation %d",
            self.name,
            *version,
            via,
            self.incarnation,
        )
        self.report()

    def _changed(self) -> None:
        self.epoch += 1
        live = self.state.live()
        if live == self._live:
            return
        gone, came = self._live - live, live - self._live
        self._live = live
        departed = self._departed
        for node in sorted(came):
            departed.discard(node)
            log.info("%s: node %s up", self.name, node)
        for node in sorted(gone):
            if self.node.closing:
                log.info("%s: node %s down (%s is shutting down)", self.name, node, self.name)
            elif node in departed:
                departed.discard(node)
                log.info("%s: node %s down (it left the herd)", self.name, node)
            else:
                log.warning("%s: node %s down (no live route)", self.name, node)
        self._on_live(came, gone)
