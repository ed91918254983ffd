"""Benchmarks of the online statistics: compiled core (herdrt.core._fast) vs its pure twin (herdrt.core._pure).

    pytest bench/bench_stats.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=min,mean,ops,rounds

Groups (each compares compiled and pure side by side, same data):

* ``stats-update``: ``OnlineStats.update`` once per sample over 100k floats. Target: compiled
  >= 5x pure.
* ``stats-update-many``: ``OnlineStats.update_many`` on 10^6 doubles in an ``array('d')``.
  Target: compiled >= 100 M samples/s.
* ``quantile-add``: ``QuantileSketch.add`` once per sample, and ``add_many`` on an ``array('d')``,
  20k samples each.

Each result carries ``samples_per_s`` in ``extra_info``; at the end a summary prints samples/s and
the compiled/pure ratios against the targets (the machine is shared: compare ratios, rerun when in
doubt). With ``--benchmark-disable`` every benchmark runs once, as a smoke test.
"""

from __future__ import annotations

import random
from array import array

import pytest

from herdrt.core import _fast, _pure

IMPLS = {"compiled": _fast, "pure": _pure}
N_UPDATE = 100_000
N_MANY = 1_000_000
N_SKETCH = 20_000

_rnd = random.Random(42)
# Latency-like samples (seconds): what the runtime feeds these structures.
SAMPLES = [_rnd.lognormvariate(-7.0, 1.0) for _ in range(N_MANY)]
BUFFER = array("d", SAMPLES)
SMALL = SAMPLES[:N_UPDATE]
SMALL_BUFFER = array("d", SMALL[:N_SKETCH])

_results: dict[tuple[str, str], float] = {}  # (case, impl) -> samples/s (best round)


def _run(benchmark, case, impl_name, fn, n):
    if impl_name == "pure":  # slow enough that a few rounds are plenty
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.min > 0:
        rate = n / stats.stats.min
        benchmark.extra_info["samples_per_s"] = round(rate)
        _results[(case, impl_name)] = rate


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:  # show the summary even though output is captured
        with capture.global_and_fixture_disabled():
            _print_summary()
    else:
        _print_summary()


def _print_summary():
    write = print
    write("\nonline statistics: samples/s (best round) and compiled/pure ratio")
    targets = {
        "stats-update": ("ratio", 5.0),
        "stats-update-many": ("rate", 100e6),
    }
    for case in ("stats-update", "stats-update-many", "quantile-add", "quantile-add-many"):
        fast, pure = _results.get((case, "compiled")), _results.get((case, "pure"))
        if fast is None:
            continue
        line = f"  {case:<20} compiled {fast / 1e6:9.2f} M/s"
        if pure:
            line += f"   pure {pure / 1e6:7.3f} M/s   ratio {fast / pure:7.1f}x"
        kind, want = targets.get(case, (None, None))
        if kind == "ratio" and pure:
            line += f"   target >= {want:g}x: {'met' if fast / pure >= want else 'NOT met'}"
        elif kind == "rate":
            line += f"   target >= {want / 1e6:g} M/s: {'met' if fast >= want else 'NOT met'}"
        write(line)


@pytest.mark.benchmark(group="stats-update")
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_stats_update(benchmark, impl_name):
    stats = IMPLS[impl_name].OnlineStats()
    update = stats.update
    data = SMALL

    def run():
        for x in data:
            update(x)

    _run(benchmark, "stats-update", impl_name, run, len(data))
    assert stats.count >= len(data)


@pytest.mark.benchmark(group="stats-update-many")
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_stats_update_many(benchmark, impl_name):
    stats = IMPLS[impl_name].OnlineStats()
    _run(benchmark, "stats-update-many", impl_name, lambda: stats.update_many(BUFFER), len(BUFFER))
    assert stats.count >= len(BUFFER) and stats.skipped == 0


@pytest.mark.benchmark(group="quantile-add")
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_quantile_add(benchmark, impl_name):
    sketch = IMPLS[impl_name].QuantileSketch()
    add = sketch.add
    data = SMALL[:N_SKETCH]

    def run():
        for x in data:
            add(x)

    _run(benchmark, "quantile-add", impl_name, run, len(data))
    assert sketch.count >= len(data)


@pytest.mark.benchmark(group="quantile-add")
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_quantile_add_many(benchmark, impl_name):
    sketch = IMPLS[impl_name].QuantileSketch()
    _run(benchmark, "quantile-add-many", impl_name, lambda: sketch.add_many(SMALL_BUFFER), len(SMALL_BUFFER))
    assert sketch.count >= len(SMALL_BUFFER)
