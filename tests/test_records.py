"""Sealed link records (PROTOCOL.md, Records): the compiled core (OpenSSL) and the pure twin
(`cryptography`) give the same bytes for the same key and input, open each other's records
however the stream is split, and refuse forged, replayed, reordered and oversized ones alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herdrt.errors import RecordError

KEY = bytes(range(32))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=8), st.lists(st.integers(1, 5000), max_size=12))
def test_compiled_and_pure_seal_alike_and_open_each_other_split_anywhere(fast, pure, writes, cuts):
    sealed = [fast.RecordSealer(KEY), pure.RecordSealer(KEY)]
    streams = [b"".join(s.seal(w) for w in writes) for s in sealed]
    assert streams[0] == streams[1]
    stream = streams[0]
    for opener in (fast.RecordOpener(KEY), pure.RecordOpener(KEY)):
        got, pos = [], 0
        for cut in cuts:
            got.append(opener.feed(stream[pos : pos + cut]))
            pos += cut
        got.append(opener.feed(stream[pos:]))
        assert b"".join(got) == b"".join(writes) and opener.buffered == 0 and opener.seq == len(writes)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_a_write_over_record_max_is_several_records(fast, pure, size):
    data = bytes(i % 251 for i in range(size))
    for impl in (fast, pure):
        sealer = impl.RecordSealer(KEY)
        out = sealer.seal(memoryview(data))  # any bytes-like
        records = max(1, -(-size // impl.RECORD_MAX))
        assert len(out) == size + records * (4 + impl.RECORD_TAG_SIZE) and sealer.seq == records
        assert impl.RecordOpener(KEY).feed(out) == data


def test_bad_records_are_refused_alike_and_good_ones_before_them_kept(fast, pure):
    for impl in (fast, pure):
        sealer = impl.RecordSealer(KEY)
        r0, r1, r2 = (sealer.seal(b"record %d" % i) for i in range(3))
        flipped = bytearray(r2)
        flipped[-1] ^= 1
        with pytest.raises(RecordError) as info:
            impl.RecordOpener(KEY).feed(r0 + r1 + bytes(flipped))
        assert info.value.plain == b"record 0record 1"  # what came before the forgery still counts
        for bad, _why in [
            (r1, "out of order"),
            (r0 + r0, "replayed"),
            ((1 << 20).to_bytes(4, "big"), "too long"),
            ((3).to_bytes(4, "big") + b"abc", "shorter than a tag"),
        ]:
            with pytest.raises(RecordError):
                impl.RecordOpener(KEY).feed(bad)
        with pytest.raises(RecordError):  # another key (the other direction's)
            impl.RecordOpener(bytes(32)).feed(r0)
        with pytest.raises(ValueError):
            impl.RecordSealer(b"short key")
