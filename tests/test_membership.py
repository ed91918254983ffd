"""Failure detection and link-state routing (pure logic; the process-level tests live with the herd)."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _herdtest import BUNDLED_LINKS
from herdrt.herd.membership import LinkState, PhiAccrualDetector, ReportPacer, ReportRefused, check_report, next_hops
from herdrt.ratelog import RateLog

BUNDLED = BUNDLED_LINKS  # the bundled herd's neighbor graph


def _graph(edges):
    g = {}
    for a, b in edges:
        g.setdefault(a, set()).add(b)
        g.setdefault(b, set()).add(a)
    return g


def test_phi_stays_low_while_heartbeats_are_regular():
    det = PhiAccrualDetector(interval=0.5)
    rng = random.Random(1)
    t = 0.0
    for _ in range(200):
        t += 0.5 + rng.uniform(-0.05, 0.05)
        det.heartbeat(t)
        assert det.phi(t) < 1e-3
        assert det.is_available(t + 1.5)  # a late heartbeat, even a 1.5 s stall, is no failure
    assert abs(det.intervals.mean - 0.5) < 0.01


def test_silent_peer_is_suspected_within_the_bound():
    det = PhiAccrualDetector(interval=0.5, threshold=8.0)
    t = 0.0
    for _ in range(50):
        t += 0.5
        det.heartbeat(t)
    phis = [det.phi(t + s / 10) for s in range(0, 40)]
    assert phis == sorted(phis)  # suspicion only grows with silence
    declared = next(s / 10 for s in range(0, 40) if not det.is_available(t + s / 10))
    assert 2.0 <= declared <= 3.0  # tolerates a stall of a busy machine, yet inside the 3 s bound
    assert det.phi(t + 3600) == float("inf") or det.phi(t + 3600) > 100


@pytest.mark.parametrize("interval", [0.05, 0.1, 0.2])
def test_short_heartbeat_intervals_keep_phi_finite_and_still_detect(interval):
    # A tiny deviation over short intervals puts a fresh heartbeat hundreds of deviations early:
    # phi must be 0 there (an OverflowError here once broke the detector for intervals < 0.4 s).
    det = PhiAccrualDetector(interval=interval)
    t = 0.0
    for _ in range(100):
        t += interval
        det.heartbeat(t)
        assert det.phi(t) == 0.0 and det.is_available(t + interval / 2)
    declared = next(s / 100 for s in range(400) if not det.is_available(t + s / 100))
    assert 1.5 < declared <= 3.0  # the tolerated pause, then suspicion within the 3 s bound


def test_phi_before_any_heartbeat_and_bad_interval():
    det = PhiAccrualDetector(interval=1.0)
    assert det.phi(123.0) == 0.0 and det.last_heard is None
    with pytest.raises(ValueError):
        PhiAccrualDetector(interval=0)


def test_next_hops_on_the_bundled_herd():
    g = _graph(BUNDLED)
    hops = next_hops(g, "Clark")
    assert hops == {"Bona": "Bona", "Jaquez": "Jaquez", "Bailey": "Bona", "Campbell": "Bona"}
    g2 = _graph([e for e in BUNDLED if "Bona" not in e])  # Bona down: go round by Jaquez
    assert next_hops(g2, "Clark") == {"Jaquez": "Jaquez", "Campbell": "Jaquez", "Bailey": "Jaquez"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=20), st.integers(0, 7))
def test_next_hops_are_first_steps_of_shortest_paths(edges, src):
    edges = [(f"n{a}", f"n{b}") for a, b in edges if a != b]
    g = _graph(edges)
    source = f"n{src}"
    hops = next_hops(g, source)
    # BFS distances, independently
    dist = {source: 0}
    frontier = [source]
    while frontier:
        nxt = []
        for u in frontier:
            for v in g.get(u, ()):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    nxt.append(v)
        frontier = nxt
    assert set(hops) == set(dist) - {source}
    for dest, hop in hops.items():
        assert hop in g[source]
        # going through hop is a shortest path: dist(hop -> dest) == dist(source -> dest) - 1
        d2 = {hop: 0}
        frontier = [hop]
        while frontier:
            nxt = []
            for u in frontier:
                for v in g.get(u, ()):
                    if v not in d2:
                        d2[v] = d2[u] + 1
                        nxt.append(v)
            frontier = nxt
        assert d2[dest] == dist[dest] - 1


def test_link_state_needs_both_ends_and_newer_reports():
    ls = LinkState("Clark")
    ls.local_report(["Bona", "Jaquez"])
    assert ls.live() == {"Clark"}  # nobody confirmed the links yet
    assert ls.apply("Bona", 1, ["Clark", "Bailey", "Campbell"])
    assert ls.live() == {"Clark", "Bona"} and ls.next_hop("Bona") == "Bona"
    assert ls.apply("Bailey", 1, ["Bona", "Campbell"])
    assert ls.next_hop("Bailey") == "Bona"
    assert not ls.apply("Bona", 1, ["Clark"])  # same seq: a flood echo, ignored
    assert not ls.apply("Clark", 99, [])  # our own report coming back
    assert ls.apply("Bona", 2, ["Clark"])  # Bona lost its link to Bailey
    assert ls.next_hop("Bailey") is None and "Bailey" not in ls.live()
    ls.forget("Bona")
    assert ls.live() == {"Clark"} and ls.seq_of("Bona") is None


def test_whole_herd_converges_to_the_same_live_view():
    names = sorted({n for e in BUNDLED for n in e})
    g = _graph(BUNDLED)
    states = {n: LinkState(n) for n in names}
    reports = {n: states[n].local_report(g[n]) for n in names}
    for n in names:
        for origin in names:
            seq, nbrs = reports[origin]
            states[n].apply(origin, seq, nbrs)
    for n in names:
        assert states[n].live() == set(names)
        assert set(states[n].graph()) == set(names)


# --- reports only in the shape and at the rate a real node sends them -------------------------

NEIGHBORS = {n: frozenset(b for a, b in BUNDLED + [(y, x) for x, y in BUNDLED] if a == n) for n in _graph(BUNDLED)}
NOW = 1_700_000_000 * 10**9


def _check(env, skew=60.0):
    return check_report(env, NEIGHBORS, skew, now_ns=lambda: NOW)


def test_a_real_report_is_admitted():
    assert _check([7, "Clark", NOW - 5, 3, ["Bona", "Jaquez"]]) == ("Clark", NOW - 5, 3, ["Bona", "Jaquez"])
    assert _check([7, "Clark", NOW + 59 * 10**9, 1, []])[1] == NOW + 59 * 10**9  # within the skew


@pytest.mark.parametrize(
    "env, problem",
    [
        ([7, "Mallory", NOW, 1, []], "not a node of this herd"),
        ([7, ["Clark"], NOW, 1, []], "not a node of this herd"),
        ([7, "Clark", NOW + 61 * 10**9, 1, []], "61.0 s ahead"),
        ([7, "Clark", 2**63, 1, []], "positive int64"),
        ([7, "Clark", 0, 1, []], "positive int64"),
        ([7, "Clark", NOW, 0, []], "positive int64"),
        ([7, "Clark", NOW, True, []], "positive int64"),
        ([7, "Clark", NOW, 1.0, []], "positive int64"),
        ([7, "Clark", NOW, 1, ["Bailey"]], "not a neighbor of Clark"),
        ([7, "Clark", NOW, 1, ["Jaquez", "Bona"]], "sorted and distinct"),
        ([7, "Clark", NOW, 1, ["Bona", "Bona"]], "sorted and distinct"),
        ([7, "Clark", NOW, 1, ["Bona", "Jaquez", "Jaquez"]], "at most 2"),
        ([7, "Clark", NOW, 1, "Bona"], "must be a list"),
        ([7, "Clark", NOW, 1], "[7, origin, incarnation, seq, live_neighbors]"),
    ],
)
def test_reports_no_real_node_sends_are_refused(env, problem):
    with pytest.raises(ReportRefused) as info:
        _check(env)
    assert problem in str(info.value)


class _Timers:
    """call_later for the pacer, run by hand."""

    def __init__(self):
        self.due = []

    def call_later(self, delay, fn, *args):
        handle = [delay, fn, args, False]
        self.due.append(handle)

        class H:
            @staticmethod
            def cancel():
                handle[3] = True

        return H()

    def run(self):
        due, self.due = self.due, []
        for _, fn, args, cancelled in due:
            if not cancelled:
                fn(*args)


def test_the_pacer_admits_a_burst_then_keeps_only_the_newest_until_its_turn():
    clock = [0.0]
    timers = _Timers()
    applied = []
    pacer = ReportPacer(
        10.0, 3, timers.call_later, lambda origin: applied.append(pacer.take(origin)), clock=lambda: clock[0]
    )
    assert [pacer.admit("A", i) for i in range(3)] == [True, True, True]  # the burst
    assert not pacer.admit("A", 3) and not pacer.admit("A", 4)  # paced: 4 replaces 3
    assert pacer.admit("B", "b")  # another origin has its own budget
    assert pacer.paced == 2 and len(timers.due) == 1 and timers.due[0][0] == pytest.approx(0.1)
    clock[0] = 0.1
    timers.run()
    assert applied == [4]  # the last word is applied, never lost
    assert not pacer.admit("A", 5)  # the budget is spent: paced again
    clock[0] = 0.2
    timers.run()
    assert applied == [4, 5]
    clock[0] = 10.0
    assert [pacer.admit("A", i) for i in range(4)] == [True, True, True, False]  # refilled to the burst
    pacer.close()
    timers.run()
    assert applied == [4, 5]


def test_ratelog_logs_once_per_interval_per_key_and_counts_the_rest(caplog):
    import logging

    clock = [0.0]
    rl = RateLog(logging.getLogger("test.ratelog"), interval=5.0, max_keys=2, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO, "test.ratelog"):
        for i in range(1000):
            rl.info("k", "event %d", i)
        rl.info("other", "other event")
        assert [r.getMessage() for r in caplog.records] == ["event 0", "other event"]
        assert rl.held == 999
        clock[0] = 6.0
        rl.flush()
        assert caplog.records[-1].getMessage() == "999 more like this in the last 6 s; the last: event 999"
        rl.info("k", "event %d", 1000)  # the summary opened a new interval: held
        clock[0] = 12.0
        rl.info("k", "event %d", 1001)  # the next interval: logged at once, with the count
        assert caplog.records[-1].getMessage() == "event 1001 (1 more like it in the last 6 s)"
        for key in range(10):  # keys from the wire cannot grow memory
            rl.info(("peer", key), "x")
        assert len(rl._keys) == 2
