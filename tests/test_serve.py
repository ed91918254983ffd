"""`herdrt serve` as a user runs it: what stops it at once (a port in use, a herd already running,
a node that cannot start, a bad app), `--detach` with `herdrt stop`, `herdrt secret`, and a
supervisor whose reader went away. Real processes; HERDRT_HOME keeps their state in tmp_path."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest

from _herdtest import free_ports, node_env

HERDRT = shutil.which("herdrt")


@pytest.fixture
def herd_file(tmp_path):
    """A two-node herd file with its own secret file, and the environment to run it in."""
    ports = free_ports(2)
    secret = tmp_path / "herd.secret"
    out = subprocess.run(
        [sys.executable, "-m", "herdrt.cli", "secret", "--file", str(secret)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    path = tmp_path / "herd.toml"
    path.write_text(
        '[herd]\nsecret_file = "herd.secret"\nheartbeat_interval = 0.2\n'
        + "".join(f'[[nodes]]\nname = "{n}"\nport = {p}\n' for n, p in zip("AB", ports, strict=True))
    )
    return path, ports, node_env(HERDRT_HOME=str(tmp_path / "home"))


def herdrt(*args: str, env, cwd=None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "herdrt.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def processes_of(path) -> list[psutil.Process]:
    """The live processes whose command line names the herd file ``path``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if str(path) in " ".join(proc.info["cmdline"] or ()) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_a_port_in_use_stops_serve_at_once_with_one_clear_error(herd_file):
    path, ports, env = herd_file
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        started = time.monotonic()
        out = herdrt("serve", "--config", str(path), env=env, timeout=30)
    assert out.returncode == 78, out
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{ports[1]} (B's herd links): Address already in use" in out.stderr
    assert "is another herd running?" in out.stderr and "restarting" not in out.stdout + out.stderr
    assert processes_of(path) == []


def test_a_node_that_cannot_start_stops_the_whole_herd(herd_file, tmp_path):
    path, _, env = herd_file
    (tmp_path / "failing.py").write_text('def setup(node):\n    raise RuntimeError("no database")\n')
    out = herdrt("serve", "--config", str(path), "--app", "failing:setup", env=env, cwd=tmp_path, timeout=30)
    text = out.stdout + out.stderr
    assert out.returncode == 78, text
    assert "app failing:setup failed to start: RuntimeError: no database" in text
    assert "cannot start (its error is above); nothing was restarted" in text
    assert "restarting in" not in text
    assert processes_of(path) == []


@pytest.mark.parametrize("node", [[], ["--node", "A"]], ids=["herd", "one node"])
def test_a_bad_app_is_a_usage_error_in_both_modes(herd_file, node):
    path, _, env = herd_file
    for app, problem in (("json", "bad app 'json': use MODULE:FUNCTION"), ("nosuch:setup", "cannot import app module")):
        out = herdrt("serve", "--config", str(path), *node, "--app", app, env=env, timeout=30)
        assert out.returncode == 2, out
        assert problem in out.stderr and out.stderr.count("Usage:") == 1
    assert processes_of(path) == []


@pytest.mark.skipif(HERDRT is None, reason="the herdrt console script is not on PATH (pip install -e .)")
def test_node_mode_finds_an_app_module_in_the_current_directory(herd_file, tmp_path):
    """The `herdrt` script (not `python -m`, which puts the current directory on sys.path itself)."""
    path, _, env = herd_file
    (tmp_path / "myapp.py").write_text('def setup(node):\n    print("myapp set up on", node.name, flush=True)\n')
    proc = subprocess.Popen(
        [HERDRT, "serve", "--config", str(path), "--node", "A", "--app", "myapp:setup"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while not any("myapp set up on A" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_detach_then_stop(herd_file):
    path, _, env = herd_file
    out = herdrt("serve", "--config", str(path), "--detach", env=env)
    try:
        assert out.returncode == 0, out
        assert "herd ready: 2/2 nodes up, 1/1 links up" in out.stdout
        assert f"herdrt stop --config {path}" in out.stdout
        assert len(processes_of(path)) == 3  # the supervisor and its two nodes
        again = herdrt("serve", "--config", str(path), env=env)
        assert again.returncode == 78 and "is already running" in again.stderr and "herdrt stop" in again.stderr
        status = herdrt("status", "--config", str(path), env=env)
        assert status.returncode == 0, status
    finally:
        stopped = herdrt("stop", "--config", str(path), env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
    assert processes_of(path) == []
    twice = herdrt("stop", "--config", str(path), env=env)
    assert twice.returncode == 1 and "no herd from" in twice.stderr


def test_serve_whose_reader_went_away_still_stops_every_node_on_ctrl_c(herd_file):
    """`herdrt serve | head -3`, then Ctrl-C: the supervisor outlives its closed stdout and stops
    its nodes before it exits: none is left behind."""
    path, _, env = herd_file
    serve = subprocess.Popen(
        [sys.executable, "-m", "herdrt.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    for _ in range(3):
        serve.stdout.readline()
    serve.stdout.close()  # `head -3` is done
    deadline = time.monotonic() + 20
    while len(processes_of(path)) < 3:
        assert time.monotonic() < deadline and serve.poll() is None
        time.sleep(0.1)
    time.sleep(1.5)  # the "herd ready" line meets the closed pipe
    serve.send_signal(signal.SIGINT)
    assert serve.wait(20) == 0
    assert processes_of(path) == []


def test_secret_command_and_a_missing_secret_file(tmp_path):
    env = node_env(HERDRT_HOME=str(tmp_path / "home"))
    printed = herdrt("secret", env=env)
    assert printed.returncode == 0 and len(printed.stdout.strip()) == 43
    target = tmp_path / "s" / "herd.secret"
    made = herdrt("secret", "--file", str(target), env=env)
    assert made.returncode == 0 and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert len(target.read_text().strip()) == 43
    again = herdrt("secret", "--file", str(target), env=env)
    assert again.returncode == 1 and "cannot create" in again.stderr and "File exists" in again.stderr
    # a copy of the bundled herd file, whose secret file does not exist here
    text = herdrt("serve", "--print-config", env=env).stdout
    copy = tmp_path / "copy.toml"
    copy.write_text(text.replace('"~/.herdrt/bundled-secret"', '"missing.secret"'))
    out = herdrt("status", "--config", str(copy), env=env)
    assert out.returncode != 0
    assert f"no such file; make one with `herdrt secret --file {tmp_path / 'missing.secret'}`" in out.stderr
