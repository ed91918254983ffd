"""How the core is chosen: compiled by default, the twin on request, never a silent fallback on CI."""

import inspect
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
    assert set(fast.__all__) == set(pure.__all__) == set(core.PUBLIC_NAMES)
    for name in core.PUBLIC_NAMES:  # herdrt.core hands out the active implementation's objects
        assert getattr(core, name) is getattr(fast if core.IMPLEMENTATION == "compiled" else pure, name)


def _params(fn) -> list[tuple]:
    """Names, kinds and defaults of a signature (annotations are the twin's documentation only)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


#: Arguments a class needs to be built (the rest have defaults).
_REQUIRED = {"RecordSealer": {"key": bytes(32)}, "RecordOpener": {"key": bytes(32)}}


@pytest.mark.parametrize("name", core.PUBLIC_NAMES)
def test_both_implementations_have_the_same_signatures(fast, pure, name):
    f, p = getattr(fast, name), getattr(pure, name)
    if not callable(p):
        assert f == p and type(f) is type(p)
        return
    if not inspect.isclass(p):
        assert _params(f) == _params(p)
        return
    # Compiled classes do not expose their constructor's signature: build both with the twin's
    # parameters, by keyword, each at its default (or the required value).
    kwargs = {q.name: _REQUIRED.get(name, {}).get(q.name, q.default) for q in inspect.signature(p).parameters.values()}
    fi, pi = f(**kwargs), p(**kwargs)
    public = {m for m in dir(pi) if not m.startswith("_")}
    assert public == {m for m in dir(fi) if not m.startswith("_")}, "the same methods and attributes"
    for m in sorted(public):
        if callable(getattr(pi, m)):
            assert _params(getattr(f, m)) == _params(getattr(p, m)), f"{name}.{m}"


def test_compiled_classes_are_really_compiled(fast):
    # A placeholder that re-exports the twin would pass every equivalence test; this would not.
    for name in ("FrameDecoder", "HashRing", "OnlineStats", "QuantileSketch", "RecordSealer", "RecordOpener"):
        assert getattr(fast, name).__module__ == "herdrt.core._fast", name
    for name in ("encode_frame", "encode_frames", "md5_shard", "jump_hash"):
        assert type(getattr(fast, name)).__name__ in ("cython_function_or_method", "builtin_function_or_method"), name


def test_active_implementation_matches_environment():
    expected = "pure" if core.env_flag("HERDRT_PURE") else "compiled"
    assert core.IMPLEMENTATION == expected
    module = sys.modules["herdrt.core._pure" if expected == "pure" else "herdrt.core._fast"]
    assert core.HashRing is module.HashRing
    assert core.IMPLEMENTATION in ("compiled", "pure")


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
            import herdrt.core
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    else:
        print("OK", herdrt.core.IMPLEMENTATION, [str(w.message) for w in caught])
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


@pytest.mark.parametrize("value", ["", "0", "false", "No", " FALSE "])
def test_falsy_pure_values_keep_the_compiled_core(value):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HERDRT_")}
    full["HERDRT_PURE"] = value
    out = subprocess.run(
        [sys.executable, "-c", "import herdrt.core; print(herdrt.core.IMPLEMENTATION)"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "compiled", out.stderr
