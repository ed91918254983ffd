"""Prints the paired comparisons (``_harness.record_paired``) after pytest-benchmark's tables."""

import statistics

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
