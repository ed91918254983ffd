"""The README's Python blocks run as written.

The rule: every ```python block of README.md is a complete program, unless its first line is a
comment starting with ``# fragment`` (then it must still compile, top-level ``await`` allowed).
A program runs in a fresh interpreter (``sys.executable``, its working directory a temporary
one), must exit 0 within a minute and write nothing to stderr (no warning, no traceback), and
must print, in order, every line that a ``# -> TEXT`` comment in it shows; ``...`` in TEXT
stands for any text.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
TIMEOUT = 60.0


@dataclass(frozen=True)
class Block:
    """One ```python block of the README: its first line number there and its text."""

    line: int
    source: str

    @property
    def is_fragment(self) -> bool:
        return self.source.lstrip().startswith("# fragment")

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text (the fence itself excluded)."""
    blocks = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i].rstrip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].rstrip() != "```":
                end += 1
            assert end < len(lines), f"README.md:{i + 1}: a ```python block is never closed"
            blocks.append(Block(start + 1, "".join(lines[start:end])))
            i = end
        i += 1
    return blocks


def expected_output(source: str) -> list[str]:
    """The lines a program's ``# -> TEXT`` comments say it prints, in order (comments only, not
    strings that happen to contain ``# ->``)."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            m = re.match(r"#\s*->\s?(.*?)\s*$", tok.string)
            if m:
                found.append(m.group(1))
    return found


def _pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def assert_prints_in_order(stdout: str, expected: list[str]) -> None:
    lines = [line.rstrip() for line in stdout.splitlines()]
    at = 0
    for text in expected:
        pattern = _pattern(text)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        assert at < len(lines), f"expected a line {text!r} (in this order) in the output:\n{stdout}"
        at += 1


BLOCKS = python_blocks(README.read_text("utf-8"))
PROGRAMS = [b for b in BLOCKS if not b.is_fragment]
FRAGMENTS = [b for b in BLOCKS if b.is_fragment]


def test_the_readme_has_its_programs():
    # guards the extraction: the examples this test exists for are found, and run
    assert len(PROGRAMS) >= 3
    assert any("HerdNode" in b.source and ".wait_for(" in b.source for b in PROGRAMS)
    assert any("class Counter(Actor)" in b.source for b in PROGRAMS)
    assert any("core.FrameDecoder" in b.source for b in PROGRAMS)


@pytest.mark.parametrize("block", PROGRAMS, ids=lambda b: b.id)
def test_readme_program_runs_as_written(block: Block, tmp_path: Path):
    script = tmp_path / "example.py"
    script.write_text(block.source, "utf-8")
    try:
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {TIMEOUT:g} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.stderr == "", f"{block.id} wrote to stderr:\n{done.stderr}"
    assert_prints_in_order(done.stdout, expected_output(block.source))


def test_readme_fragments_compile():
    for block in FRAGMENTS:
        compile(block.source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_expected_output_rules():
    source = "print(\"a # -> no\")   # -> 13 c@a\nx = 1\n# -> {'node': ...}\n"
    assert expected_output(source) == ["13 c@a", "{'node': ...}"]
    assert_prints_in_order("x\n13 c@a\n{'node': 'a', 'n': 1}\n", ["13 c@a", "{'node': ...}"])
    with pytest.raises(AssertionError):
        assert_prints_in_order("{'node': 'a'}\n13 c@a\n", ["13 c@a", "{'node': ...}"])
    blocks = python_blocks("text\n```python\n# fragment: x\nawait f()\n```\n```sh\nls\n```\n")
    assert blocks == [Block(3, "# fragment: x\nawait f()\n")] and blocks[0].is_fragment
