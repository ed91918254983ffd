"""The core: framing, hash ring, online statistics, sealed link records — chosen once, here.

Two implementations share one public API:

* ``herdrt.core._fast``, compiled from ``_fast.pyx`` by Cython (the default), and
* ``herdrt.core._pure``, its pure-Python twin (same results; the baseline it is benchmarked against).

Set ``HERDRT_PURE=1`` to force the twin. If the compiled core cannot be imported, the twin is used
with a warning — unless ``HERDRT_REQUIRE_COMPILED=1``, which makes that an error (CI sets it, so a
broken build can never pass as a slow one). ``IMPLEMENTATION`` says which one is active.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import CompiledCoreMissing, EmptyRingError, FrameError, FrameTooLarge
from ._api import PUBLIC_NAMES  # the one list of the core's names (both implementations)


def env_flag(name: str) -> bool:
    """An environment flag: set, and not one of "", "0", "false", "no" (any case)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _load() -> tuple[ModuleType, str]:
    if env_flag("HERDRT_PURE"):
        from . import _pure

        return _pure, "pure"
    try:
        # (absolute, so that mypy's ignore_missing_imports for this Cython module applies)
        import herdrt.core._fast as _fast
    except ImportError as exc:
        if env_flag("HERDRT_REQUIRE_COMPILED"):
            raise CompiledCoreMissing(
                f"the compiled core herdrt.core._fast cannot be imported ({exc}); rebuild it with "
                "`pip install -e '.[dev]'`, or unset HERDRT_REQUIRE_COMPILED to allow the pure twin"
            ) from exc
        warnings.warn(
            f"herdrt: compiled core unavailable ({exc}); using the slower pure-Python twin. "
            "Rebuild with `pip install -e '.[dev]'`.",
            RuntimeWarning,
            stacklevel=3,
        )
        from . import _pure

        return _pure, "pure"
    return _fast, "compiled"


_impl, IMPLEMENTATION = _load()

if TYPE_CHECKING:
    # The type checker sees the pure twin's API: the compiled core has the same names and
    # signatures (tests/test_core.py holds the two to them) and ships no stub of its own.
    from ._pure import (
        DEFAULT_MAX_FRAME_SIZE,
        RECORD_MAX,
        RECORD_TAG_SIZE,
        FrameDecoder,
        HashRing,
        OnlineStats,
        QuantileSketch,
        RecordOpener,
        RecordSealer,
        encode_frame,
        encode_frames,
        jump_hash,
        md5_shard,
    )
else:
    encode_frame = _impl.encode_frame
    encode_frames = _impl.encode_frames
    FrameDecoder = _impl.FrameDecoder
    HashRing = _impl.HashRing
    md5_shard = _impl.md5_shard
    jump_hash = _impl.jump_hash
    OnlineStats = _impl.OnlineStats
    QuantileSketch = _impl.QuantileSketch
    DEFAULT_MAX_FRAME_SIZE = _impl.DEFAULT_MAX_FRAME_SIZE
    RECORD_MAX = _impl.RECORD_MAX
    RECORD_TAG_SIZE = _impl.RECORD_TAG_SIZE
    RecordSealer = _impl.RecordSealer
    RecordOpener = _impl.RecordOpener

__all__ = [*PUBLIC_NAMES, "IMPLEMENTATION", "env_flag", "FrameError", "FrameTooLarge", "EmptyRingError"]
