"""Online statistics: OnlineStats (Welford / Chan) and QuantileSketch (DDSketch-style).

Behaviour tests take ``core`` (the active implementation; CI also runs them with HERDRT_PURE=1).
Equivalence tests hold the compiled core to its pure twin: identical sketches and quantiles,
moments within float rounding. Vector tests hold both to ``tests/vectors/stats.json``, which the
Go implementation reads too.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from array import array
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VECTORS = Path(__file__).parent / "vectors" / "stats.json"
NAN, INF = math.nan, math.inf
QS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)
MOMENTS = ("count", "skipped", "mean", "variance", "sample_variance", "stddev", "min", "max", "sum")

fast_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _wire(d: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False, strict_map_key=True)


def _exact_var(xs) -> float:
    fr = [Fraction(x) for x in xs]
    mean = sum(fr) / len(fr)
    return float(sum((x - mean) ** 2 for x in fr) / len(fr))


def _moments_close(got, want, scale: float):
    """count/skipped/min/max exact; mean within 1e-11 of the data scale, variances within 1e-9
    relative plus a scale term (rounding follows the magnitude of the data)."""
    assert got.count == want.count and got.skipped == want.skipped
    assert _same(got.min, want.min) and _same(got.max, want.max)
    for name, tol in (
        ("mean", 1e-11 * scale),
        ("sum", 1e-11 * scale * max(want.count, 1)),
        ("variance", 1e-9 * abs(want.variance) + 1e-12 * scale * scale),
        ("sample_variance", 1e-9 * abs(want.sample_variance) + 1e-12 * scale * scale),
        ("stddev", 1e-9 * abs(want.stddev) + 1e-6 * scale),
    ):
        g, w = getattr(got, name), getattr(want, name)
        assert _same(g, w) or abs(g - w) <= tol, (name, g, w)


def _feed(stats, samples, how: str):
    if how == "update":
        for x in samples:
            stats.update(x)
    elif how == "list":
        stats.update_many(list(samples))
    else:
        stats.update_many(array("d", samples))
    return stats


def _sketch(impl, samples, accuracy=0.01, max_bins=2048):
    sk = impl.QuantileSketch(accuracy, max_bins)
    for x in samples:
        sk.add(x)
    return sk


def _exact_quantile(sorted_xs, q):
    return sorted_xs[int(q * (len(sorted_xs) - 1))]


# ---------------------------------------------------------------------------------------------
# OnlineStats behaviour
# ---------------------------------------------------------------------------------------------

_rnd = random.Random(7)
DATASETS = {
    "one-to-ten": [float(i) for i in range(1, 11)],
    "uniform": [_rnd.uniform(-5.0, 5.0) for _ in range(1500)],
    "lognormal": [_rnd.lognormvariate(0.0, 2.0) for _ in range(1200)],
    "ints": [_rnd.randrange(-1000, 1000) for _ in range(1500)],
    "two": [3.0, -1.5],
}
HOWS = ("update", "list", "buffer")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_moments_match_statistics(core, name, how):
    xs = DATASETS[name]
    s = _feed(core.OnlineStats(), xs, how)
    scale = max(abs(x) for x in xs)
    assert s.count == len(xs) and s.skipped == 0
    assert s.mean == pytest.approx(statistics.fmean(xs), rel=1e-9, abs=1e-12 * scale)
    assert s.variance == pytest.approx(statistics.pvariance(xs), rel=1e-9)
    assert s.sample_variance == pytest.approx(statistics.variance(xs), rel=1e-9)
    assert s.stddev == pytest.approx(statistics.pstdev(xs), rel=1e-9)
    assert s.min == min(xs) and s.max == max(xs)
    assert s.sum == pytest.approx(math.fsum(xs), rel=1e-9, abs=1e-12 * scale * len(xs))


@pytest.fixture(scope="module")
def near_1e9():
    rnd = random.Random(1).random
    width = math.sqrt(12.0)  # uniform over this width: variance 1
    xs = array("d", [1e9 + (rnd() - 0.5) * width for _ in range(10**6)])
    return xs, statistics.pvariance(xs)


@pytest.mark.parametrize("how", ["update", "buffer"])
def test_numerically_stable_near_1e9(core, near_1e9, how):
    # 10^6 samples with mean 1e9 and variance ~1: a naive sum-of-squares would lose every digit.
    xs, want = near_1e9
    s = core.OnlineStats()
    if how == "update":
        update = s.update
        for x in xs:
            update(x)
    else:
        s.update_many(xs)
    assert s.count == len(xs)
    assert s.variance == pytest.approx(want, rel=1e-6)
    assert s.mean == pytest.approx(1e9, abs=0.01)


def test_chunked_buffer_is_stable_at_a_larger_offset(core):
    # 1e12 + small integers: exact answers, and chunk means that do not round to the true mean.
    xs = array("d", (1e12 + (i % 7) for i in range(5000)))
    s = core.OnlineStats()
    s.update_many(xs)
    assert s.variance == pytest.approx(_exact_var(xs), rel=1e-6)


def test_empty(core):
    s = core.OnlineStats()
    assert s.count == 0 and s.skipped == 0 and s.sum == 0.0
    for name in ("mean", "variance", "sample_variance", "stddev", "min", "max"):
        assert math.isnan(getattr(s, name)), name
    s.update_many(array("d"))
    s.update_many([])
    assert s.count == 0
    assert "count=0" in repr(s)


def test_single_sample(core):
    s = core.OnlineStats()
    s.update(-2.5)
    assert (s.count, s.mean, s.variance, s.stddev, s.min, s.max, s.sum) == (1, -2.5, 0.0, 0.0, -2.5, -2.5, -2.5)
    assert math.isnan(s.sample_variance)


def test_accepts_what_float_accepts(core):
    s = core.OnlineStats()
    s.update(3)
    s.update(Fraction(1, 2))
    s.update(True)
    assert (s.count, s.sum) == (3, 4.5)
    with pytest.raises(TypeError):
        s.update(None)


@pytest.mark.parametrize("how", HOWS)
def test_non_finite_samples_are_skipped_and_counted(core, how):
    xs = [1.0, NAN, 2.0, INF, 3.0, -INF]
    s = _feed(core.OnlineStats(), xs, how)
    assert (s.count, s.skipped, s.mean, s.variance, s.min, s.max, s.sum) == (3, 3, 2.0, 2.0 / 3.0, 1.0, 3.0, 6.0)


def test_non_finite_inside_long_buffers(core):
    # NaN/inf deep inside full chunks of a buffer: the chunk falls back to per-sample updates.
    rnd = random.Random(3)
    xs = [rnd.uniform(0.0, 10.0) for _ in range(5000)]
    bad = {17: NAN, 1500: INF, 1501: -INF, 4095: NAN, 4999: INF}
    for i, x in bad.items():
        xs[i] = x
    s = core.OnlineStats()
    s.update_many(array("d", xs))
    good = [x for x in xs if math.isfinite(x)]
    assert s.skipped == len(bad) and s.count == len(good)
    assert s.mean == pytest.approx(statistics.fmean(good), rel=1e-12)
    assert s.variance == pytest.approx(statistics.pvariance(good), rel=1e-9)
    assert (s.min, s.max) == (min(good), max(good))


def test_buffer_whose_sum_overflows(core):
    # Finite samples whose chunk sum overflows: still folded in, like one update per sample.
    xs = [9e307, 1e308, -5e307] * 700
    s, t = core.OnlineStats(), core.OnlineStats()
    s.update_many(array("d", xs))
    for x in xs:
        t.update(x)
    assert s.skipped == 0 and s.count == len(xs)
    assert s.mean == pytest.approx(t.mean, rel=1e-9)
    assert (s.min, s.max) == (-5e307, 1e308)


def test_strided_and_readonly_buffers(core):
    xs = array("d", (float(i) for i in range(3000)))
    s = core.OnlineStats()
    s.update_many(memoryview(xs)[::3])
    assert s.count == 1000 and s.sum == sum(xs[::3]) and s.max == 2997.0
    r = core.OnlineStats()
    r.update_many(memoryview(bytes(xs)).cast("d"))
    assert r.count == 3000 and r.mean == pytest.approx(1499.5)


def test_update_many_refuses_a_memoryview_of_other_items(core):
    with pytest.raises(TypeError, match="format 'd'"):
        core.OnlineStats().update_many(memoryview(array("f", [1.0, 2.0])))
    s = core.OnlineStats()
    s.update_many(array("f", [1.0, 2.0]))  # not a memoryview: iterated like any iterable
    s.update_many(x for x in (3.0, 4.0))
    assert (s.count, s.sum) == (4, 10.0)


def test_merge_returns_self_and_handles_empties(core):
    a, b = core.OnlineStats(), core.OnlineStats()
    assert a.merge(b) is a and a.count == 0
    b.update_many([1.0, 2.0, NAN])
    a.merge(b)
    assert a.to_dict() == b.to_dict()
    a.merge(core.OnlineStats())
    assert a.to_dict() == b.to_dict()
    a.merge(a)  # merging with itself doubles the stream
    assert (a.count, a.skipped, a.mean, a.variance) == (4, 2, 1.5, 0.25)


@st.composite
def _split_streams(draw, elements):
    xs = draw(st.lists(elements, max_size=80))
    k = draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, len(xs)), min_size=k - 1, max_size=k - 1)))
    parts = [xs[i:j] for i, j in zip([0, *cuts], [*cuts, len(xs)], strict=False)]
    seed = draw(st.integers(0, 2**32 - 1))
    return xs, parts, seed


def _merge_tree(objs, seed):
    """Merge the objects pairwise in a random tree order; return the root."""
    rnd = random.Random(seed)
    objs = list(objs)
    while len(objs) > 1:
        i = rnd.randrange(len(objs) - 1)
        a, b = objs[i], objs.pop(i + 1)
        if rnd.random() < 0.5:
            objs[i] = a.merge(b)
        else:
            objs[i] = b.merge(a)
    return objs[0]


_sample = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, NAN, INF, -INF, 1e-320]),
)


@fast_settings
@given(_split_streams(_sample))
def test_merge_of_parts_equals_one_stream(core, stream):
    xs, parts, seed = stream
    whole = _feed(core.OnlineStats(), xs, "update")
    merged = _merge_tree([_feed(core.OnlineStats(), p, "buffer") for p in parts], seed)
    _moments_close(merged, whole, max([abs(x) for x in xs if math.isfinite(x)], default=0.0) + 1.0)


def test_to_dict_round_trip_through_msgpack(core):
    s = _feed(core.OnlineStats(), [0.5, 8.0, NAN, -3.25], "update")
    back = core.OnlineStats.from_dict(_wire(s.to_dict()))
    assert back.to_dict() == s.to_dict()
    assert set(s.to_dict()) == {"count", "mean", "m2", "min", "max", "sum", "skipped"}
    for name in MOMENTS:
        assert _same(getattr(back, name), getattr(s, name))
    empty = core.OnlineStats.from_dict(_wire(core.OnlineStats().to_dict()))
    assert empty.count == 0 and math.isnan(empty.min)


_GOOD_STATE = {"count": 2, "mean": 1.0, "m2": 2.0, "min": 0.0, "max": 2.0, "sum": 2.0, "skipped": 1}


def _changed(state: dict, change: dict) -> dict:
    """A copy of ``state`` with ``change`` applied (a value of None deletes that key)."""
    state = dict(state)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    "change",
    [
        {"count": None},
        {"skipped": None},
        {"mean": None},
        {"count": -1},
        {"skipped": -2},
        {"count": 2.0},
        {"count": "2"},
        {"m2": "lots"},
        {"min": [0.0]},
    ],
)
def test_stats_from_dict_rejects_bad_states(core, change):
    with pytest.raises(ValueError):
        core.OnlineStats.from_dict(_changed(_GOOD_STATE, change))


def test_stats_from_dict_rejects_non_mappings(core):
    for state in (None, [], 5):
        with pytest.raises(ValueError):
            core.OnlineStats.from_dict(state)
    assert core.OnlineStats.from_dict(_GOOD_STATE).to_dict() == _GOOD_STATE


def test_reset_and_copy(core):
    s = _feed(core.OnlineStats(), [1.0, 2.0, INF], "update")
    c = s.copy()
    s.update(100.0)
    assert c.count == 2 and c.skipped == 1 and s.count == 3
    s.reset()
    assert s.to_dict() == core.OnlineStats().to_dict()
    assert c.to_dict()["sum"] == 3.0


# ---------------------------------------------------------------------------------------------
# QuantileSketch behaviour
# ---------------------------------------------------------------------------------------------

_qrnd = random.Random(11)
DISTRIBUTIONS = {
    "uniform": [_qrnd.uniform(1.0, 1000.0) for _ in range(2000)],
    "lognormal": [_qrnd.lognormvariate(0.0, 2.0) for _ in range(2000)],
    "signed": [_qrnd.gauss(0.0, 100.0) for _ in range(2000)],
    "with-zeros": [0.0] * 300
    + [_qrnd.expovariate(0.01) for _ in range(1500)]
    + [-_qrnd.expovariate(1.0) for _ in range(450)],
}


@pytest.mark.parametrize("how", ["add", "add_many-list", "add_many-buffer"])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_within_relative_accuracy(core, name, how):
    xs = DISTRIBUTIONS[name]
    sk = core.QuantileSketch(0.01)
    if how == "add":
        for x in xs:
            sk.add(x)
    else:
        sk.add_many(xs if how == "add_many-list" else array("d", xs))
    ordered = sorted(xs)
    for q in (0.5, 0.9, 0.99):
        want = _exact_quantile(ordered, q)
        got = sk.quantile(q)
        assert abs(got - want) <= 0.01 * abs(want) + 1e-300, (q, got, want)
    assert sk.quantile(0.0) == ordered[0] and sk.quantile(1.0) == ordered[-1]
    assert sk.count == len(xs) and sk.relative_accuracy == 0.01


def test_quantile_edges(core):
    sk = core.QuantileSketch()
    assert math.isnan(sk.quantile(0.5)) and sk.count == 0
    for bad in (-0.1, 1.5, NAN):
        with pytest.raises(ValueError):
            sk.quantile(bad)
    sk.add(7.0)
    assert sk.quantile(0.0) == sk.quantile(0.5) == sk.quantile(1.0) == 7.0  # clamped to min/max
    sk.add_many([NAN, INF, -INF])
    assert (sk.count, sk.skipped) == (1, 3)


def test_zero_bucket_and_subnormals(core):
    sk = core.QuantileSketch()
    sk.add_many([0.0, -0.0, 5e-324, -2e-310, 2.2250738585072014e-308])
    d = sk.to_dict()
    assert d["zero"] == 4 and len(d["pos"]) == 1 and d["neg"] == []
    assert sk.quantile(0.5) == 0.0


def test_bucket_index_rule(core):
    sk = core.QuantileSketch(0.01, max_bins=100_000)  # wide enough that nothing collapses
    gamma = 1.01 / 0.99
    xs = [1.0, 2.0, 1e-300, 123456.789, -0.5, -3e200]
    sk.add_many(xs)
    want_pos = sorted(math.ceil(math.log(x) / math.log(gamma)) for x in xs if x > 0)
    want_neg = sorted(math.ceil(math.log(-x) / math.log(gamma)) for x in xs if x < 0)
    d = sk.to_dict()
    assert [i for i, _ in d["pos"]] == want_pos and [i for i, _ in d["neg"]] == want_neg
    assert all(c == 1 for _, c in d["pos"] + d["neg"])


def test_collapsing_with_tiny_max_bins(core):
    rnd = random.Random(5)
    xs = [rnd.lognormvariate(0.0, 1.0) for _ in range(4000)] + [-rnd.lognormvariate(0.0, 1.0) for _ in range(1000)]
    sk = core.QuantileSketch(0.05, max_bins=60)
    sk.add_many(xs)
    d = sk.to_dict()
    assert 0 < len(d["pos"]) <= 60 and 0 < len(d["neg"]) <= 60
    top = d["pos"][-1][0]
    assert d["pos"][0][0] == top - 59  # the window ends at the highest bucket; lower ones folded
    assert sum(c for _, c in d["pos"]) == 4000 and sum(c for _, c in d["neg"]) == 1000
    gamma = 1.05 / 0.95
    floor_value = gamma ** (top - 60)  # lower edge of the lowest bucket kept
    ordered = sorted(xs)
    # quantiles above the floor keep their accuracy ...
    for q in (0.5, 0.9, 0.99):
        want = _exact_quantile(ordered, q)
        assert want > floor_value and sk.quantile(q) == pytest.approx(want, rel=0.05)
    # ... the smallest positive magnitudes were folded up into the lowest bucket
    want = _exact_quantile(ordered, 0.2002)
    assert 0 < want < floor_value < sk.quantile(0.2002) <= floor_value * gamma


def test_collapse_folds_into_the_new_floor(core):
    sk = core.QuantileSketch(0.01, max_bins=3)
    gamma = 1.01 / 0.99
    for k in (1, 2, 5, 6):  # one sample in (the middle of) buckets 1, 2, 5, 6
        sk.add(gamma ** (k - 0.5))
    assert sk.to_dict()["pos"] == [[4, 2], [5, 1], [6, 1]]
    sk.add(gamma**0.5)  # below the window: lands in its lowest bucket
    assert sk.to_dict()["pos"] == [[4, 3], [5, 1], [6, 1]]


@st.composite
def _sketch_streams(draw):
    xs, parts, seed = draw(_split_streams(_sketch_sample))
    accuracy = draw(st.sampled_from([0.01, 0.02, 0.1]))
    max_bins = draw(st.sampled_from([1, 2, 5, 64, 2048]))
    return xs, parts, seed, accuracy, max_bins


# Magnitudes stay below 1e300: the twin's math.pow raises OverflowError for buckets near the
# largest double (see the note in the report); everything else a double can be is fair game.
_sketch_sample = st.one_of(
    st.floats(-1e300, 1e300),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from([0.0, -0.0, 5e-324, -1e-310, INF, -INF, NAN]),
)


@fast_settings
@given(_sketch_streams())
def test_sketch_merge_equals_one_stream_exactly(core, stream):
    xs, parts, seed, accuracy, max_bins = stream
    whole = _sketch(core, xs, accuracy, max_bins)
    merged = _merge_tree([_sketch(core, p, accuracy, max_bins) for p in parts], seed)
    assert merged.to_dict() == whole.to_dict()
    for q in QS:
        assert _same(merged.quantile(q), whole.quantile(q))


def test_sketch_merge_needs_matching_parameters(core):
    a = core.QuantileSketch(0.01, 64)
    for other in (core.QuantileSketch(0.02, 64), core.QuantileSketch(0.01, 65)):
        with pytest.raises(ValueError):
            a.merge(other)
    a.add_many([1.0, -2.0, 0.0])
    assert a.merge(a) is a
    assert a.count == 6 and a.to_dict()["zero"] == 2


def test_sketch_round_trip_through_msgpack(core):
    sk = core.QuantileSketch(0.02, 16)
    sk.add_many([3.0, -1.0, 0.0, NAN, 1e-5, 1e5, 42.0])
    d = sk.to_dict()
    assert set(d) == {"relative_accuracy", "max_bins", "pos", "neg", "zero", "count", "min", "max", "skipped"}
    back = core.QuantileSketch.from_dict(_wire(d))
    assert back.to_dict() == d
    assert [back.quantile(q) for q in QS] == [sk.quantile(q) for q in QS]
    empty = core.QuantileSketch.from_dict(_wire(core.QuantileSketch().to_dict()))
    assert empty.count == 0 and math.isnan(empty.quantile(0.5))


_GOOD_SKETCH = {
    "relative_accuracy": 0.01,
    "max_bins": 8,
    "pos": [[3, 2], [5, 1]],
    "neg": [[0, 1]],
    "zero": 1,
    "count": 5,
    "min": -1.0,
    "max": 1.2,
    "skipped": 0,
}


@pytest.mark.parametrize(
    "change",
    [
        {"relative_accuracy": None},
        {"pos": None},
        {"count": None},
        {"relative_accuracy": 0.0},
        {"relative_accuracy": 1.5},
        {"max_bins": 0},
        {"pos": [[1, 2, 3]]},
        {"pos": [[1]]},
        {"neg": 7},
        {"zero": "many"},
        {"min": "low"},
    ],
)
def test_sketch_from_dict_rejects_bad_states(core, change):
    with pytest.raises(ValueError):
        core.QuantileSketch.from_dict(_changed(_GOOD_SKETCH, change))


def test_sketch_from_dict_applies_the_window(core):
    assert core.QuantileSketch.from_dict(_GOOD_SKETCH).to_dict() == _GOOD_SKETCH
    state = dict(_GOOD_SKETCH, max_bins=2, pos=[[1, 2], [9, 1], [-4, 3]])
    assert core.QuantileSketch.from_dict(state).to_dict()["pos"] == [[8, 5], [9, 1]]


def test_sketch_constructor_validation(core):
    for bad in (0.0, 1.0, -0.5, NAN):
        with pytest.raises(ValueError):
            core.QuantileSketch(bad)
    with pytest.raises(ValueError):
        core.QuantileSketch(0.01, 0)
    assert "count=0" in repr(core.QuantileSketch())


# ---------------------------------------------------------------------------------------------
# Equivalence: compiled vs pure
# ---------------------------------------------------------------------------------------------


@fast_settings
@given(_sketch_streams(), st.floats(0.0, 1.0))
def test_sketch_equivalence(fast, pure, stream, q):
    xs, parts, seed, accuracy, max_bins = stream
    f, p = _sketch(fast, xs, accuracy, max_bins), _sketch(pure, xs, accuracy, max_bins)
    assert f.to_dict() == p.to_dict()
    fb = fast.QuantileSketch(accuracy, max_bins)
    fb.add_many(array("d", xs))
    assert fb.to_dict() == p.to_dict()
    for qq in (*QS, q):
        assert _same(f.quantile(qq), p.quantile(qq)), qq
    fm = _merge_tree([_sketch(fast, part, accuracy, max_bins) for part in parts], seed)
    pm = _merge_tree([_sketch(pure, part, accuracy, max_bins) for part in parts], seed)
    assert fm.to_dict() == pm.to_dict()
    # each reads the other's state
    crossed = fast.QuantileSketch.from_dict(p.to_dict()), pure.QuantileSketch.from_dict(f.to_dict())
    assert crossed[0].to_dict() == crossed[1].to_dict()


@fast_settings
@given(_split_streams(_sample))
def test_stats_equivalence(fast, pure, stream):
    xs, parts, seed = stream
    scale = max([abs(x) for x in xs if math.isfinite(x)], default=0.0) + 1.0
    want = _feed(pure.OnlineStats(), xs, "update")
    _moments_close(_feed(fast.OnlineStats(), xs, "update"), want, scale)
    _moments_close(_feed(fast.OnlineStats(), xs, "buffer"), want, scale)
    fm = _merge_tree([_feed(fast.OnlineStats(), part, "update") for part in parts], seed)
    pm = _merge_tree([_feed(pure.OnlineStats(), part, "update") for part in parts], seed)
    _moments_close(fm, pm, scale)
    assert fast.OnlineStats.from_dict(pm.to_dict()).to_dict() == pure.OnlineStats.from_dict(pm.to_dict()).to_dict()


def test_stats_equivalence_on_long_buffers(fast, pure):
    # Several full chunks, a ragged tail and non-finite samples, against the twin's Welford.
    rnd = random.Random(9)
    xs = [rnd.gauss(50.0, 20.0) for _ in range(10_000)]
    for i in rnd.sample(range(len(xs)), 25):
        xs[i] = rnd.choice([NAN, INF, -INF])
    want = _feed(pure.OnlineStats(), xs, "update")
    _moments_close(_feed(fast.OnlineStats(), xs, "buffer"), want, 200.0)


# ---------------------------------------------------------------------------------------------
# Compiled core only: memory and the wire-side limits the twin does not (yet) have
# ---------------------------------------------------------------------------------------------


def test_compiled_online_stats_is_small(fast):
    import gc
    import sys

    s = fast.OnlineStats()
    assert sys.getsizeof(s) <= 80  # seven C numbers and the object header
    assert not gc.is_tracked(s)  # no references, so no GC header either
    with pytest.raises(TypeError):
        __import__("pickle").dumps(s)  # to_dict() is the wire form, never pickle


def test_compiled_sketch_store_grows_with_the_data(fast):
    import sys

    sk = fast.QuantileSketch(0.01, max_bins=256)
    empty = sys.getsizeof(sk)
    sk.add_many([1.0 + i / 1e4 for i in range(1000)])  # 1.0 .. 1.1: five buckets
    narrow = sys.getsizeof(sk)
    assert empty < narrow <= empty + 32 * 8
    sk.add_many(array("d", (1.1**i for i in range(2000))))  # far more buckets than max_bins
    assert sys.getsizeof(sk) <= empty + 256 * 8
    pos = sk.to_dict()["pos"]
    assert 250 <= pos[-1][0] - pos[0][0] < 256  # the window is full, and no wider


def test_compiled_sketch_limits(fast):
    with pytest.raises(ValueError):
        fast.QuantileSketch(0.01, max_bins=2**20 + 1)
    for change in (
        {"pos": [[3, 0]]},
        {"neg": [[3, -1]]},
        {"pos": [[2**62, 1]]},
        {"count": -1},
        {"zero": -2},
        {"skipped": 2**64},
        {"max_bins": 2**40},
    ):
        with pytest.raises(ValueError):
            fast.QuantileSketch.from_dict({**_GOOD_SKETCH, **change})
    with pytest.raises(ValueError):
        fast.OnlineStats.from_dict({**_GOOD_STATE, "count": 2**64})


# ---------------------------------------------------------------------------------------------
# Golden vectors (shared with the Go implementation)
# ---------------------------------------------------------------------------------------------


def _dec(v):
    return {"NaN": NAN, "Infinity": INF, "-Infinity": -INF}.get(v, v) if isinstance(v, str) else v


def _load_vectors():
    return json.loads(VECTORS.read_text())


_VECTORS = _load_vectors()
_CASES = {c["name"]: c for c in _VECTORS["cases"]}


def _check_expect(impl, expect, stats, sketch):
    got = stats.to_dict()
    want = {k: _dec(v) for k, v in expect["stats"].items()}
    for key in ("count", "skipped", "min", "max"):
        assert got[key] == want[key], key
    for key in ("mean", "m2", "sum"):
        assert abs(got[key] - want[key]) <= expect["tolerance"][key], (key, got[key], want[key])
    want_sketch = {k: _dec(v) for k, v in expect["sketch"].items()}
    assert sketch.to_dict() == want_sketch
    rel = _VECTORS["quantile_rel_tolerance"]
    for q, value in expect["quantiles"]:
        got_q, want_q = sketch.quantile(q), _dec(value)
        assert _same(got_q, want_q) or abs(got_q - want_q) <= rel * abs(want_q), (q, got_q, want_q)


def test_vectors_are_documented():
    assert _VECTORS["format"] and _VECTORS["cases"] and _VECTORS["merges"]
    assert {"empty", "non-finite", "near-1e9"} <= set(_CASES)


@pytest.mark.parametrize("impl_name", ["fast", "pure"])
@pytest.mark.parametrize("how", ["update", "buffer"])
@pytest.mark.parametrize("case", sorted(_CASES))
def test_vector_cases(request, impl_name, how, case):
    impl = request.getfixturevalue(impl_name)
    c = _CASES[case]
    samples = [_dec(x) for x in c["samples"]]
    stats = _feed(impl.OnlineStats(), samples, how)
    sk = impl.QuantileSketch(c["sketch"]["relative_accuracy"], c["sketch"]["max_bins"])
    if how == "update":
        for x in samples:
            sk.add(x)
    else:
        sk.add_many(array("d", samples))
    _check_expect(impl, c["expect"], stats, sk)


@pytest.mark.parametrize("impl_name", ["fast", "pure"])
@pytest.mark.parametrize("merge", _VECTORS["merges"], ids=lambda m: m["name"])
def test_vector_merges(request, impl_name, merge):
    impl = request.getfixturevalue(impl_name)
    p = merge["sketch"]
    halves = []
    for side in ("a", "b"):
        samples = [_dec(x) for x in _CASES[merge[side]]["samples"]]
        sk = impl.QuantileSketch(p["relative_accuracy"], p["max_bins"])
        sk.add_many(samples)
        halves.append((_feed(impl.OnlineStats(), samples, "buffer"), sk))
    (sa, ka), (sb, kb) = halves
    _check_expect(impl, merge["expect"], sa.merge(sb), ka.merge(kb))
