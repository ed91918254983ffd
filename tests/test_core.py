"""How the core is chosen: compiled by default, the twin on request, never a silent fallback on CI."""

import os
import subprocess
import sys
import textwrap

import pytest

from herdrt import core


def test_both_implementations_provide_every_public_name(fast, pure):
    for name in core.PUBLIC_NAMES:
        assert hasattr(fast, name), f"compiled core lacks {name}"
        assert hasattr(pure, name), f"pure twin lacks {name}"


def test_compiled_classes_are_really_compiled(fast):
    # A placeholder that re-exports the twin would pass every equivalence test; this would not.
    for name in ("FrameDecoder", "HashRing", "OnlineStats", "QuantileSketch", "RecordSealer", "RecordOpener"):
        assert getattr(fast, name).__module__ == "herdrt.core._fast", name
    for name in ("encode_frame", "encode_frames", "md5_shard", "jump_hash"):
        assert type(getattr(fast, name)).__name__ in ("cython_function_or_method", "builtin_function_or_method"), name


def test_active_implementation_matches_environment():
    expected = "pure" if os.environ.get("HERDRT_PURE", "") not in ("", "0") else "compiled"
    assert core.IMPLEMENTATION == expected
    module = sys.modules["herdrt.core._pure" if expected == "pure" else "herdrt.core._fast"]
    assert core.HashRing is module.HashRing
    import herdrt

    assert herdrt.IMPLEMENTATION == core.IMPLEMENTATION


# The child blocks `herdrt.core._fast` as if it had never been built.
_CHILD = textwrap.dedent(
    """
    import sys, warnings
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "herdrt.core._fast":
                raise ImportError("simulated: no compiled core")
    sys.meta_path.insert(0, Block())
    warnings.simplefilter("always")
    try:
        with warnings.catch_warnings(record=True) as caught:
            import herdrt
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    else:
        print("OK", herdrt.IMPLEMENTATION, [str(w.message) for w in caught])
    """
)


def _child(**env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HERDRT_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=full, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_missing_compiled_core_is_an_error_when_required():
    out = _child(HERDRT_REQUIRE_COMPILED="1")
    assert out.startswith("ERROR CompiledCoreMissing"), out
    assert "pip install -e" in out  # the error says what to do


def test_missing_compiled_core_falls_back_loudly_otherwise():
    out = _child()
    assert out.startswith("OK pure"), out
    assert "pure-Python twin" in out


def test_pure_can_be_forced_even_when_compiled_is_required():
    out = _child(HERDRT_PURE="1", HERDRT_REQUIRE_COMPILED="1")
    assert out.startswith("OK pure"), out


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_falsy_pure_values_keep_the_compiled_core(value):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HERDRT_")}
    full["HERDRT_PURE"] = value
    out = subprocess.run(
        [sys.executable, "-c", "import herdrt; print(herdrt.IMPLEMENTATION)"],
        env=full, capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "compiled", out.stderr
