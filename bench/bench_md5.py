"""MD5 of ring keys: a hand-written C MD5 against OpenSSL called from Cython and against hashlib.

    pytest bench/bench_md5.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-columns=min,median,ops
    python bench/bench_md5.py         # the same groups, interleaved, as M keys/s and ratios

The contenders are compiled at benchmark time from ``bench/_c/md5_contenders.pyx`` (never
shipped; ``bench/_cbuild.py``, linked with libcrypto). A failed build fails the benchmark. One
round = the same 10,000 keys, so ``ops`` x 10,000 is keys per second (also in ``extra_info``).

* ``md5-keys-8-40`` (bytes keys of 8 to 40 bytes, one MD5 block each) and ``md5-keys-100``
  (100 bytes, two blocks): one Cython loop over the list per contender, the digest words folded
  into a checksum, so only the hash call differs:

  - ``herd_md5``: the MD5 the core carried until it was measured here (RFC 1321 in C, header-only
    and inlined; now ``bench/_c/herd_md5.h``, kept only as this contender);
  - ``MD5_Init``: OpenSSL's low-level ``MD5_Init`` + ``MD5_Update`` + ``MD5_Final`` on a stack
    ``MD5_CTX``: what the core calls now; ``MD5``: the one-shot ``MD5()``, the same calls plus a
    wipe of the context (both deprecated since OpenSSL 3.0, still in 3.x);
  - ``evp``: ``EVP_MD_fetch(NULL, "MD5", NULL)`` once, one ``EVP_MD_CTX`` reused, per key
    ``EVP_DigestInit_ex2`` + ``EVP_DigestUpdate`` + ``EVP_DigestFinal_ex``; ``evp-init_ex`` the
    same with ``EVP_DigestInit_ex``; ``evp-digest`` the one-shot ``EVP_Digest`` (a context per
    call);
  - ``hashlib``: ``[md5(key).digest() for key in keys]`` in Python.

* ``md5-ring-lookup-5`` / ``md5-ring-lookup-100``: ``lookup`` end to end, as ``bench_ring.py``
  measures it (10,000 str keys, 5 or 100 nodes x 160 vnodes): the core's ``HashRing`` (``compiled``)
  against a bench copy of its lookup with each MD5 wired in (``ring+herd_md5``, ``ring+MD5_Init``,
  ``ring+MD5``, ``ring+evp``). ``ring+MD5_Init`` hashes as the core does now.
"""

from __future__ import annotations

import hashlib
import random
import timeit

import pytest

import _cbuild
from herdrt.core import _fast, _pure

N_KEYS = 10_000
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.:-_"


def _keys(rng: random.Random, lengths) -> list[bytes]:
    out = []
    for i, n in enumerate(lengths):
        prefix = f"k{i}:"
        out.append((prefix + "".join(rng.choice(_ALPHABET) for _ in range(n - len(prefix)))).encode())
    return out


_rng = random.Random(5)
KEYS = {
    "md5-keys-8-40": _keys(_rng, [_rng.randint(8, 40) for _ in range(N_KEYS)]),
    "md5-keys-100": _keys(_rng, [100] * N_KEYS),
}
RING_KEYS = [f"user:{i}:session" for i in range(N_KEYS)]
LOOP_NAMES = ("herd_md5", "MD5_Init", "MD5", "evp", "evp-init_ex", "evp-digest")
RING_NAMES = ("herd_md5", "MD5_Init", "MD5", "evp")


def _nodes(n: int) -> list[str]:
    return [f"10.0.{i // 256}.{i % 256}:11211" for i in range(n)]


def _checksum(digests) -> int:
    """What the Cython loops return: the sum over keys of the xor of the four little-endian words."""
    total = 0
    for d in digests:
        w = [int.from_bytes(d[4 * k : 4 * k + 4], "little") for k in range(4)]
        total += w[0] ^ w[1] ^ w[2] ^ w[3]
    return total & ((1 << 64) - 1)


def _cases(m):
    """(group, name, callable running one round, expected result) for every benchmark."""
    cases = []
    md5 = hashlib.md5
    for group, keys in KEYS.items():
        digests = [md5(k).digest() for k in keys]
        expected = _checksum(digests)
        for name in LOOP_NAMES:
            cases.append((group, name, lambda f=m.LOOPS[name], keys=keys: f(keys), expected))
        cases.append((group, "hashlib", lambda keys=keys: [md5(k).digest() for k in keys], digests))
    for n in (5, 100):
        nodes = _nodes(n)
        reference = _pure.HashRing(nodes, vnodes=160)
        expected = [reference.lookup(k) for k in RING_KEYS]
        group = f"md5-ring-lookup-{n}"
        lookups = {"compiled": _fast.HashRing(nodes, vnodes=160).lookup}
        for name in RING_NAMES:
            lookups[f"ring+{name}"] = m.Ring(reference.points(), nodes, name).lookup
        for name, lookup in lookups.items():
            cases.append((group, name, lambda f=lookup: [f(k) for k in RING_KEYS], expected))
    return cases


NAMES = [(g, n) for g in KEYS for n in (*LOOP_NAMES, "hashlib")] + [
    (f"md5-ring-lookup-{n}", name) for n in (5, 100) for name in ("compiled", *(f"ring+{r}" for r in RING_NAMES))
]


@pytest.fixture(scope="module")
def cases():
    m = _cbuild.build("md5_contenders")  # raises if it does not build: no contender is skipped
    # Every compiled contender against hashlib, on every key (block boundaries included).
    edge = [bytes(range(n)) for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128)]
    for name in LOOP_NAMES:
        for key in edge + KEYS["md5-keys-8-40"][:500] + KEYS["md5-keys-100"][:100]:
            assert m.digest(name, key) == hashlib.md5(key).digest(), (name, key)
    return {(g, n): (run, expected) for g, n, run, expected in _cases(m)}


@pytest.mark.parametrize("group,name", NAMES, ids=[f"{g}:{n}" for g, n in NAMES])
def test_md5_bench(benchmark, cases, group, name):
    run, expected = cases[group, name]
    benchmark.group = group
    benchmark.extra_info["keys_per_round"] = N_KEYS
    assert benchmark(run) == expected
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.min > 0:
        benchmark.extra_info["keys_per_s_best"] = round(N_KEYS / stats.min)


def main() -> None:
    """Interleaved timeit runs (best of several), printed as M keys/s and ratios to the hand-written MD5."""
    m = _cbuild.build("md5_contenders")
    cases = _cases(m)
    best: dict[tuple[str, str], float] = {}
    for _ in range(5):  # interleave contenders so machine noise hits them alike
        for group, name, run, _ in cases:
            t = min(timeit.repeat(run, number=1, repeat=5))
            best[group, name] = min(best.get((group, name), t), t)
    for group in dict.fromkeys(g for g, _, _, _ in cases):
        print(group)
        base_name = "herd_md5" if (group, "herd_md5") in best else "ring+herd_md5"
        base = best[group, base_name]
        for (g, name), t in best.items():
            if g == group:
                print(f"  {name:16s} {N_KEYS / t / 1e6:6.2f} M keys/s   {t / base:5.2f}x the time of {base_name}")


if __name__ == "__main__":
    main()
