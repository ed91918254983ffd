"""The process supervisor behind `herdrt serve`, on real child processes."""

import asyncio
import os
import signal
import sys
import time

from herdrt.processes import ProcessSupervisor

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(0.2); raise SystemExit(3)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_children_start_output_is_prefixed_and_stop_cleanly():
    lines = []

    async def main():
        sup = ProcessSupervisor({"a": SLEEPER, "b": SLEEPER}, output=lambda n, text: lines.append((n, text)))
        await sup.start()
        await _until(lambda: {("a", "up"), ("b", "up")} <= set(lines))
        pids = [s["pid"] for s in sup.status().values()]
        assert all(pids) and all(map(_alive, pids))
        await sup.stop()
        assert not any(map(_alive, pids))
        assert {s["last_exit"] for s in sup.status().values()} == {-signal.SIGTERM}

    asyncio.run(main())


def test_crashed_child_is_restarted_with_backoff():
    async def main():
        sup = ProcessSupervisor({"c": CRASHER}, min_backoff=0.05, max_backoff=0.4, output=lambda n, text: None)
        await sup.start()
        await _until(lambda: sup.status()["c"]["restarts"] >= 3)
        state = sup.children["c"]
        assert state.last_exit == 3
        assert 0.05 <= state.backoff <= 0.4
        await sup.stop()
        assert sup.status()["c"]["pid"] is None

    asyncio.run(main())


def test_killed_child_comes_back_and_sigkill_after_grace():
    async def main():
        lines = []
        sup = ProcessSupervisor(
            {"k": SLEEPER, "s": STUBBORN}, min_backoff=0.05, grace=0.5, output=lambda n, text: lines.append((n, text))
        )
        await sup.start()
        first = sup.status()["k"]["pid"]
        os.kill(first, signal.SIGKILL)
        await _until(lambda: sup.status()["k"]["pid"] not in (None, first))
        assert sup.children["k"].last_exit == -signal.SIGKILL
        await _until(lambda: ("s", "up") in lines)  # it prints "up" once its handler is installed
        stubborn = sup.status()["s"]["pid"]
        started = time.monotonic()
        await sup.stop()
        assert time.monotonic() - started < 5
        assert not _alive(stubborn)
        assert sup.children["s"].last_exit == -signal.SIGKILL

    asyncio.run(main())
