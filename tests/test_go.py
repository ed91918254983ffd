"""The Go module ``go-interop/`` from pytest: ``go vet``, ``gofmt`` and ``go test`` must pass.

The Go tests read the same golden vectors as the Python tests (``tests/vectors/*.json``), so a
change on either side that breaks the other fails here. Skipped only when the ``go`` binary is
not installed; any other problem (a compile error, a failing test, a module that cannot be
fetched) is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_DIR = Path(__file__).resolve().parents[1] / "go-interop"
GO = shutil.which("go")

pytestmark = pytest.mark.skipif(GO is None, reason="the `go` binary is not installed (needed for go-interop/)")


def _go(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return subprocess.run(
        [GO, *args], cwd=GO_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def test_go_module_present():
    assert (GO_DIR / "go.mod").is_file()
    assert "module github.com/herdrt/herdrt/go-interop" in (GO_DIR / "go.mod").read_text()


def test_go_vet():
    proc = _go("vet", "./...")
    assert proc.returncode == 0, _explain(proc)


def test_gofmt_clean():
    gofmt = Path(_go("env", "GOROOT").stdout.strip()) / "bin" / "gofmt"
    if not gofmt.exists():
        pytest.skip(f"gofmt not found at {gofmt}")
    proc = subprocess.run([str(gofmt), "-l", "."], cwd=GO_DIR, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "", f"files need gofmt: {proc.stdout}{proc.stderr}"


def test_go_test():
    # -race: the client shares one DEALER between goroutines under a mutex and an FD watcher.
    proc = _go("test", "-race", "-count=1", "./...")
    assert proc.returncode == 0, _explain(proc)
    assert "FAIL" not in proc.stdout
