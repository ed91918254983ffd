"""Run a set of OS processes and keep them running: what ``herdrt serve`` does with a local herd.

Each child's output is copied line by line, prefixed with its name. A child that exits while the
supervisor is not stopping is restarted after a back-off that doubles on quick successive crashes
(up to ``max_backoff``) and resets once the child has stayed up for ``stable_after`` seconds.
A child that exits with ``fatal_exit`` (it cannot start, and starting it again would not help) is
not restarted: :attr:`ProcessSupervisor.failed` says which, and :meth:`wait_failed` returns it.
``stop()`` sends SIGTERM to every child, waits up to ``grace`` seconds, then SIGKILLs stragglers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ProcessSupervisor", "ChildState"]

log = logging.getLogger("herdrt.processes")


@dataclass
class ChildState:
    """What the supervisor knows of one child."""

    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    backoff: float = 0.0
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None


class ProcessSupervisor:
    """Start the commands in ``children`` (name -> argv) and restart any that dies."""

    def __init__(
        self,
        children: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        stable_after: float = 10.0,
        grace: float = 5.0,
        output: Callable[[str, str], None] | None = None,
        fatal_exit: int | None = None,
    ):
        self.children = {name: ChildState(name, list(argv)) for name, argv in children.items()}
        self.env = dict(os.environ if env is None else env)
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.grace = grace
        self._output = output or self._print
        self.fatal_exit = fatal_exit
        #: The first child that exited with ``fatal_exit``, and its code; None while none has.
        self.failed: ChildState | None = None
        self._failed = asyncio.Event()
        self._stopping = False

    @staticmethod
    def _print(name: str, line: str) -> None:
        try:
            print(f"[{name}] {line}", file=sys.stderr, flush=True)
        except (BrokenPipeError, ValueError):  # nobody reads our stderr any more: keep supervising
            pass

    async def wait_failed(self) -> ChildState:
        """Wait until a child exits with ``fatal_exit``; that child."""
        await self._failed.wait()
        assert self.failed is not None
        return self.failed

    async def start(self) -> None:
        """Start every child (returns once all are spawned)."""
        for child in self.children.values():
            process = await self._spawn(child)
            child.task = asyncio.create_task(self._watch(child, process), name=f"supervise-{child.name}")

    async def _spawn(self, child: ChildState) -> asyncio.subprocess.Process:
        process = child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, which stops children in order
        )
        child.starts += 1
        child.started_at = time.monotonic()
        return process

    async def _pump(self, child: ChildState, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        assert stream is not None  # spawned with stdout=PIPE
        while True:
            line = await stream.readline()
            if not line:
                return
            self._output(child.name, line.decode("utf-8", "replace").rstrip())

    async def _watch(self, child: ChildState, process: asyncio.subprocess.Process) -> None:
        """Copy the output of ``child`` (running as ``process``) and restart it whenever it exits."""
        while True:
            await self._pump(child, process)
            code = await process.wait()
            child.last_exit = code
            if self._stopping:
                return
            if code == self.fatal_exit and self.fatal_exit is not None:
                self._output(child.name, f"exited with {_describe(code)}: it cannot start; not restarting it")
                if self.failed is None:
                    self.failed = child
                    self._failed.set()
                return
            up = time.monotonic() - child.started_at
            if up >= self.stable_after:
                child.backoff = self.min_backoff
            else:
                child.backoff = min(self.max_backoff, max(self.min_backoff, child.backoff * 2))
            self._output(child.name, f"exited with {_describe(code)}; restarting in {child.backoff:.1f}s")
            await asyncio.sleep(child.backoff)
            if self._stopping:
                return
            process = await self._spawn(child)
            child.restarts += 1

    async def stop(self) -> None:
        """Stop every child: SIGTERM, then SIGKILL after ``grace`` seconds. Idempotent."""
        self._stopping = True
        running = [(c, p) for c in self.children.values() if (p := c.process) and p.returncode is None]
        for _, process in running:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child, process in running:
            try:
                await asyncio.wait_for(process.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%s did not stop within %.1fs; killing it", child.name, self.grace)
                _signal(process, signal.SIGKILL)
                await process.wait()
            child.last_exit = process.returncode
        tasks = [c.task for c in self.children.values() if c.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> dict[str, dict]:
        """Per child: pid (None when down), starts, restarts, last exit code."""
        return {
            c.name: {"pid": c.pid, "starts": c.starts, "restarts": c.restarts, "last_exit": c.last_exit}
            for c in self.children.values()
        }


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


def _describe(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
