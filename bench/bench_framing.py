"""Framing benchmarks: the compiled core against the pure twin and plain msgpack.

    pytest bench/bench_framing.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,mean,ops,rounds
    python bench/bench_framing.py     # the same groups, interleaved, as msgs/s and ratios vs targets

One round = the same N_MSGS messages, so ``ops`` x N_MSGS is messages per second (also in
``extra_info``). The messages are protocol-2+ wire envelopes, msgpack arrays with application
bodies (``_messages.py``). Groups:

* ``decode-small`` (TELL, ASK, REPLY and keyed TELL envelopes of 26-50 bytes, small dict and list
  bodies) / ``decode-1KiB`` (an ASK with a 1 KiB reading, a TELLS of 16 dict bodies; 664-990
  bytes): one buffer of N_MSGS frames fed in 64 KiB chunks; each chunk's messages are counted
  and let go (a consumer dispatching them: nothing piles up for the garbage collector); the
  messages themselves are checked in an untimed run. Contenders: the
  compiled ``FrameDecoder``; the pure one; a bare ``msgpack.Unpacker`` fed the same bodies
  concatenated without framing (``unpacker``: ``list(unpacker)`` per chunk, the same work as
  ``feed`` minus framing and limits; ``unpacker-iter``: each message let go as the iterator yields
  it); and a hand-written ``struct`` length prefix + ``msgpack.unpackb`` loop. Targets: compiled
  >= 1.0x ``unpacker``, >= 1.7x ``struct+unpackb``.
* ``encode-batch``: the small envelopes into one buffer of frames: compiled ``encode_frames``
  (also with ``max_size``, as links call it) vs pure vs ``msgpack.Packer`` + ``struct`` by hand.
"""

from __future__ import annotations

import struct
import timeit

import msgpack
import pytest

import _messages
from herdrt.core import _fast, _pure

N_MSGS = 20_000
CHUNK = 64 * 1024
_HEADER = struct.Struct(">I")


MESSAGES = {
    "decode-small": [_messages.small(i) for i in range(N_MSGS)],
    "decode-1KiB": [_messages.large(i) for i in range(N_MSGS)],
}


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


# Each decode run takes a sink: None when timed (every chunk's messages are counted and let go,
# as a consumer dispatching them would), or a callable given each chunk's list (untimed check).


def _decoder_run(impl, chunks):
    def run(sink=None):
        dec = impl.FrameDecoder()
        n = 0
        for chunk in chunks:
            msgs = dec.feed(chunk)
            n += len(msgs)
            if sink is not None:
                sink(msgs)
        dec.close()
        return n

    return run


def _unpacker_run(chunks, as_list=True):
    def run(sink=None):
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
        n = 0
        for chunk in chunks:
            unpacker.feed(chunk)
            if as_list or sink is not None:
                msgs = list(unpacker)
                n += len(msgs)
                if sink is not None:
                    sink(msgs)
            else:  # unpacker-iter: each message handed on (here: let go) as it is yielded
                for _ in unpacker:
                    n += 1
        return n

    return run


def _struct_unpackb_run(chunks):
    unpack_from, unpackb = _HEADER.unpack_from, msgpack.unpackb

    def run(sink=None):
        buf = bytearray()
        n = 0
        for chunk in chunks:
            buf += chunk
            pos, end = 0, len(buf)
            msgs = []
            while end - pos >= 4:
                (size,) = unpack_from(buf, pos)
                if pos + 4 + size > end:
                    break
                msgs.append(unpackb(buf[pos + 4 : pos + 4 + size], raw=False, strict_map_key=True))
                pos += 4 + size
            del buf[:pos]
            n += len(msgs)
            if sink is not None:
                sink(msgs)
        return n

    return run


def _packer_struct_run(msgs):
    def run(sink=None):
        pack, header = msgpack.Packer().pack, _HEADER.pack
        parts = []
        for msg in msgs:
            body = pack(msg)
            parts.append(header(len(body)))
            parts.append(body)
        return b"".join(parts)

    return run


def _cases():
    """(group, name, callable running one round, expected result) for every benchmark."""
    cases = []
    for group, msgs in MESSAGES.items():
        frames = _pure.encode_frames(msgs)
        bodies = b"".join(msgpack.packb(m) for m in msgs)
        chunks, body_chunks = _chunks(frames), _chunks(bodies)
        cases += [
            (group, "compiled", _decoder_run(_fast, chunks), msgs),
            (group, "pure", _decoder_run(_pure, chunks), msgs),
            (group, "unpacker", _unpacker_run(body_chunks), msgs),
            (group, "unpacker-iter", _unpacker_run(body_chunks, as_list=False), msgs),
            (group, "struct+unpackb", _struct_unpackb_run(chunks), msgs),
        ]
    msgs = MESSAGES["decode-small"]
    frames = _pure.encode_frames(msgs)
    cases += [
        ("encode-batch", "compiled", lambda sink=None: _fast.encode_frames(msgs), frames),
        # as a link calls it: each frame checked against the peer's limit
        ("encode-batch", "compiled+max_size", lambda sink=None: _fast.encode_frames(msgs, 1 << 20), frames),
        ("encode-batch", "pure", lambda sink=None: _pure.encode_frames(msgs), frames),
        ("encode-batch", "packer+struct", _packer_struct_run(msgs), frames),
    ]
    return cases


CASES = _cases()
TARGETS = {("compiled", "unpacker"): 1.0, ("compiled", "struct+unpackb"): 1.7}


@pytest.mark.parametrize("group,name,run,expected", CASES, ids=[f"{g}:{n}" for g, n, _, _ in CASES])
def test_framing_bench(benchmark, group, name, run, expected):
    benchmark.group = group
    benchmark.extra_info["msgs_per_round"] = N_MSGS
    if group.startswith("decode"):
        body_sizes = {len(msgpack.packb(m)) for m in MESSAGES[group][:100]}
        benchmark.extra_info["body_bytes"] = f"{min(body_sizes)}-{max(body_sizes)}"
        assert benchmark(run) == N_MSGS
        kept = []  # untimed: the very messages, in order
        run(kept.extend)
        assert kept == expected
    else:
        assert benchmark(run) == expected
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.min > 0:
        benchmark.extra_info["msgs_per_s_best"] = round(N_MSGS / stats.min)


def main() -> None:
    """Interleaved timeit runs (best of several), printed as msgs/s and ratios within each group."""
    best: dict[tuple[str, str], float] = {}
    for _ in range(7):  # interleave contenders so machine noise hits them alike
        for group, name, run, _ in CASES:
            t = min(timeit.repeat(run, number=1, repeat=3))
            best[group, name] = min(best.get((group, name), t), t)
    for group in dict.fromkeys(g for g, _, _, _ in CASES):
        print(group)
        compiled = best[group, "compiled"]
        for (g, name), t in best.items():
            if g == group:
                target = TARGETS.get(("compiled", name))
                note = f"   (target >= {target}x)" if target else ""
                print(f"  {name:16s} {N_MSGS / t / 1e6:6.2f} M msgs/s   compiled is {t / compiled:5.2f}x this{note}")


if __name__ == "__main__":
    main()
