"""Shows progress as the benchmarks run (a line per benchmark, with its time and how many are
left), and prints the paired comparisons (``_harness.record_paired``) after pytest-benchmark's
tables."""

import statistics
import time

from _harness import PAIRED


def pytest_terminal_summary(terminalreporter):
    if not PAIRED:
        return
    tr = terminalreporter
    tr.section("paired ratios: contender rate / baseline rate, rounds alternated back to back")
    for name, ratios in PAIRED:
        parts = [
            f"{b} {statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f}, {len(r)} pairs)"
            for b, r in ratios.items()
        ]
        tr.write_line(f"{name}: vs " + "; vs ".join(parts))


_progress: dict = {"total": 0, "done": 0, "started": 0.0, "config": None}


def pytest_collection_finish(session):
    _progress.update(total=len(session.items), done=0, started=time.monotonic(), config=session.config)


def pytest_runtest_logreport(report):
    """One line per benchmark once it ran (benchmarks take seconds to minutes each; pytest's dots
    say nothing of where a long run is)."""
    config = _progress["config"]
    if report.when != "call" or config is None or config.getoption("benchmark_disable", False):
        return
    _progress["done"] += 1
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    elapsed = time.monotonic() - _progress["started"]
    tr.write("\n")  # after the test's own dot (or name, with -v)
    tr.write_line(
        f"[{_progress['done']}/{_progress['total']} benchmarks, {elapsed:.0f} s] {report.nodeid}: "
        f"{report.outcome} in {report.duration:.1f} s"
    )
