"""Frame decoding: the core's hand-written msgpack reader against msgpack-python's C unpacker.

    pytest bench/bench_unpack.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,median,ops
    python bench/bench_unpack.py      # the same groups, interleaved, as msgs/s and ratios

``compiled`` is the core's ``FrameDecoder``: framing in Cython, each body parsed by ``_msgpack.h``.
The other contenders split frames with the same Cython code (``bench/_c/frame_contenders.pyx``,
compiled at benchmark time by ``bench/_cbuild.py``, never shipped; a failed build fails the
benchmark) and hand each body to msgpack's C extension:

* ``unpackb-bytes``: ``msgpack.unpackb(body, raw=False, strict_map_key=True)`` on a bytes copy of
  the body, called through ``PyObject_Vectorcall``;
* ``unpackb-view``: the same on a memoryview of the caller's buffer (no copy);
* ``unpacker-feed``: one ``msgpack.Unpacker`` per decoder; each body fed, then ``unpack()`` and
  ``tell()`` (to know the body held exactly one value).

The stream is protocol-2+ envelopes (``_messages.py``), one buffer of frames fed in 64 KiB
chunks; each chunk's messages are counted and let go, and every contender's messages are checked
against the originals in an untimed run. Groups: ``unpack-small`` (20,000 envelopes of 26-50
bytes), ``unpack-1KiB`` (20,000 of 664-990 bytes), ``unpack-17KiB`` (500 TELLS of 400 bodies).
``ops`` x the messages per round is messages per second (``extra_info``).
"""

from __future__ import annotations

import timeit

import msgpack
import pytest

import _cbuild
import _messages
from herdrt.core import _fast, _pure

CHUNK = 64 * 1024
GROUPS = {
    "unpack-small": [_messages.small(i) for i in range(20_000)],
    "unpack-1KiB": [_messages.large(i) for i in range(20_000)],
    "unpack-17KiB": [_messages.batch(i) for i in range(500)],
}
CONTENDERS = ("compiled", "unpackb-bytes", "unpackb-view", "unpacker-feed")


def _decoder_run(make, chunks):
    def run(sink=None):
        dec = make()
        n = 0
        for chunk in chunks:
            msgs = dec.feed(chunk)
            n += len(msgs)
            if sink is not None:
                sink(msgs)
        dec.close()
        return n

    return run


def _cases(m):
    """(group, name, callable running one round, the messages) for every benchmark."""
    cases = []
    for group, msgs in GROUPS.items():
        frames = _pure.encode_frames(msgs)
        chunks = [frames[i : i + CHUNK] for i in range(0, len(frames), CHUNK)]
        makers = {"compiled": _fast.FrameDecoder, **m.CONTENDERS}
        for name in CONTENDERS:
            cases.append((group, name, _decoder_run(makers[name], chunks), msgs))
    return cases


NAMES = [(g, n) for g in GROUPS for n in CONTENDERS]


@pytest.fixture(scope="module")
def cases():
    m = _cbuild.build("frame_contenders")  # raises if it does not build: no contender is skipped
    return {(g, n): (run, msgs) for g, n, run, msgs in _cases(m)}


@pytest.mark.parametrize("group,name", NAMES, ids=[f"{g}:{n}" for g, n in NAMES])
def test_unpack_bench(benchmark, cases, group, name):
    run, msgs = cases[group, name]
    benchmark.group = group
    benchmark.extra_info["msgs_per_round"] = len(msgs)
    sizes = [len(msgpack.packb(x)) for x in msgs[:100]]
    benchmark.extra_info["body_bytes"] = f"{min(sizes)}-{max(sizes)}"
    assert benchmark(run) == len(msgs)
    kept = []  # untimed: the very messages, in order
    run(kept.extend)
    assert kept == msgs
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.min > 0:
        benchmark.extra_info["msgs_per_s_best"] = round(len(msgs) / stats.min)


def main() -> None:
    """Interleaved timeit runs (best of several), printed as msgs/s and ratios to the compiled core."""
    cases = _cases(_cbuild.build("frame_contenders"))
    best: dict[tuple[str, str], float] = {}
    for _ in range(5):  # interleave contenders so machine noise hits them alike
        for group, name, run, _ in cases:
            t = min(timeit.repeat(run, number=1, repeat=3))
            best[group, name] = min(best.get((group, name), t), t)
    for group, msgs in GROUPS.items():
        print(group)
        compiled = best[group, "compiled"]
        for (g, name), t in best.items():
            if g == group:
                rate = len(msgs) / t / 1e6
                print(f"  {name:14s} {rate:6.3f} M msgs/s   {t / compiled:5.2f}x the time of compiled")


if __name__ == "__main__":
    main()
