"""What the cross-process benchmarks share: free ports, child processes, recording a rate, and
paired comparisons.

A child is a Python script of ``bench/`` that prints ``READY <port>...`` once it listens and runs
until its stdin closes (``stopped()`` gives it that future); the parent spawns it for a fixture
and reaps it when the fixture ends.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
START_TIMEOUT = 30.0  # seconds for a child to print READY

#: Paired comparisons measured in this session, ``(test name, {baseline: ratios})``; bench/conftest.py
#: prints them after the benchmark tables.
PAIRED: list[tuple[str, dict[str, list[float]]]] = []


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env() -> dict[str, str]:
    """The environment of a Python child: this herdrt and the bench helpers importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), str(BENCH), env.get("PYTHONPATH")) if p)
    return env


def stop_child(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close the child's stdin (it exits on EOF), wait, kill it if it will not; close its pipes."""
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def spawn_ready(request, script: str, *args: str) -> list[int]:
    """Run ``python bench/<script> *args`` until the requesting fixture ends; the ports it printed
    on its READY line."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    request.addfinalizer(lambda: stop_child(proc))
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        raise RuntimeError(
            f"{script} {' '.join(args)}: no READY line within {START_TIMEOUT:g}s "
            f"(got {line!r}, exit code {proc.poll()})"
        )
    return [int(x) for x in line.split()[1:]]


def stopped() -> asyncio.Future:
    """In a child: a future that completes on SIGTERM or when stdin closes (the parent is gone
    or done)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    fd = sys.stdin.fileno()

    def finish(*_):
        if not stop.done():
            stop.set_result(None)
            loop.remove_reader(fd)

    def stdin_readable():
        if not os.read(fd, 4096):
            finish()

    loop.add_signal_handler(signal.SIGTERM, finish)
    loop.add_reader(fd, stdin_readable)
    return stop


def record_rate(benchmark, fn, messages: int, rounds: int, **info) -> None:
    """Time ``fn`` (one round of ``messages``) over ``rounds`` rounds after a warm-up; the best
    round's messages per second go to ``extra_info["msgs_per_s"]``."""
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(info, messages=messages)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["msgs_per_s"] = round(messages / stats.stats.min)


def record_paired(benchmark, name: str, contender, baselines: dict, rounds: int) -> None:
    """Alternate one round of ``contender`` with one round of each of ``baselines`` (name -> round),
    ``rounds`` times, after a warm-up of each; all do the same work per round.

    On a shared machine the speed of every process drifts by tens of percent within a minute, so
    contenders timed one after the other can differ by more than the effect measured. Rounds
    taken back to back see the same machine: the ratio of each pair (baseline round time /
    contender round time = contender rate / baseline rate) is far steadier. Their median and range
    go to ``extra_info`` and to the summary printed after the tables. The benchmark's own time is
    that of a whole alternation."""
    ratios: dict[str, list[float]] = {b: [] for b in baselines}

    def alternation():
        t = time.perf_counter()
        contender()
        own = time.perf_counter() - t
        for b, fn in baselines.items():
            t = time.perf_counter()
            fn()
            ratios[b].append((time.perf_counter() - t) / own)

    benchmark.pedantic(alternation, rounds=rounds, iterations=1, warmup_rounds=1)
    if getattr(benchmark, "disabled", False):
        return
    for b, r in ratios.items():
        r[:] = r[-rounds:]  # not the warm-up's
        benchmark.extra_info[f"ratio_vs_{b}"] = {
            "median": round(statistics.median(r), 3),
            "min": round(min(r), 3),
            "max": round(max(r), 3),
        }
    PAIRED.append((name, ratios))
