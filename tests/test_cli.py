"""The command line, run as a user runs it: a real `herdrt` process."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from herdrt.cli import main


def _herdrt(*args, check=True):
    exe = shutil.which("herdrt")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "herdrt.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_help_lists_commands():
    out = _herdrt("--help").stdout
    assert "Usage: herdrt" in out
    assert "ring" in out


def _summaries(help_text: str) -> dict[str, str]:
    """The commands `herdrt --help` lists, with their summaries (a long one wraps onto more lines)."""
    summaries: dict[str, str] = {}
    for line in help_text.split("\nCommands:\n", 1)[1].splitlines():
        m = re.match(r"  (\S+)\s+(.*)", line)
        if m:
            summaries[m.group(1)] = m.group(2)
        elif line.strip() and summaries:
            last = list(summaries)[-1]
            summaries[last] += " " + line.strip()
    return summaries


@pytest.mark.parametrize("columns", ["80", "50"])
def test_help_summaries_are_whole_phrases(columns):
    cmd = [shutil.which("herdrt") or sys.executable, *([] if shutil.which("herdrt") else ["-m", "herdrt.cli"])]
    out = subprocess.run(
        [*cmd, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": columns}
    )
    assert out.returncode == 0, out.stderr
    summaries = _summaries(out.stdout)
    assert set(summaries) == set(main.commands)
    assert {"status", "tell", "ask", "actors", "owner", "top", "ring"} <= set(summaries)
    for command, summary in summaries.items():
        assert not summary.endswith("...") and summary.endswith("."), (command, summary)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command):
    out = CliRunner().invoke(main, [command, "--help"], prog_name="herdrt")
    assert out.exit_code == 0, out.output
    assert f"Usage: herdrt {command}" in out.output


def _table(out):
    """server rows of `herdrt ring` -> {server: [count, count, count]}"""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(server-\d+)\s+(.*)", line)
        if m:
            rows[m.group(1)] = [int(c.replace(",", "")) for c in re.findall(r"([\d,]+)\s+[\d.]+%", m.group(2))]
    return rows


def _moved(out):
    return {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(r"^\s+(md5 % n|ring|jump hash)\s+[\d,]+\s+([\d.]+)%", out, re.M)
    }


def test_ring_on_bundled_words_shows_hashing_evens_out_skew():
    out = _herdrt("ring").stdout
    rows = _table(out)
    assert len(rows) == 5
    total = int(re.search(r"([\d,]+) words", out).group(1).replace(",", ""))
    for column in range(3):
        assert sum(r[column] for r in rows.values()) == total
    letter = [r[0] for r in rows.values()]
    md5 = [r[1] for r in rows.values()]
    ring = [r[2] for r in rows.values()]
    mean = total / 5
    assert max(letter) > 1.4 * mean  # English initial letters are skewed
    assert max(md5) < 1.1 * mean and max(ring) < 1.2 * mean
    moved = _moved(out)
    assert moved["md5 % n"] > 70  # modulo reshuffles almost everything
    assert 10 < moved["ring"] < 25 and 10 < moved["jump hash"] < 25  # ~1/6


def test_ring_reads_a_words_file(tmp_path):
    words = tmp_path / "w.txt"
    words.write_text("\n".join(f"user{i}" for i in range(1000)))
    out = _herdrt("ring", str(words), "--servers", "3").stdout
    rows = _table(out)
    assert set(rows) == {"server-0", "server-1", "server-2"}
    assert sum(r[0] for r in rows.values()) == 1000
    assert "1/4" in out


def test_ring_rejects_bad_input_clearly(tmp_path):
    out = _herdrt("ring", "--vnodes", "6", check=False)
    assert out.returncode == 2 and "multiple of 4" in out.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    out = _herdrt("ring", str(empty), check=False)
    assert out.returncode == 2 and "holds no words" in out.stderr
    out = _herdrt("ring", str(tmp_path / "missing.txt"), check=False)
    assert out.returncode == 2 and "does not exist" in out.stderr
