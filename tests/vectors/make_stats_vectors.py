"""Generate ``tests/vectors/stats.json``: golden vectors for OnlineStats and QuantileSketch.

Run from the repository root: ``python tests/vectors/make_stats_vectors.py``. The output is
deterministic. Expected moments (mean, m2, sum) are computed exactly with fractions and then
rounded, so they do not come from either implementation under test; expected sketches come from
the reference twin ``herdrt.core._pure`` (the sketch's bucket rule is its definition). Samples are
chosen so that no bucket index sits within 1e-9 of a bucket boundary, so that another language's
``log`` (off by an ulp from C's) cannot put a sample in a different bucket.
"""

from __future__ import annotations

import json
import math
import random
import sys
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from herdrt.core import _pure  # noqa: E402

QUANTILES = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]
TINY = 2.2250738585072014e-308

FORMAT = """\
Golden vectors for herdrt's online statistics (OnlineStats, QuantileSketch); read by the Python
tests (tests/test_stats.py, both implementations) and the Go tests.

Numbers: a JSON number is an IEEE-754 double (or an integer for counts and bucket indexes); the
strings "NaN", "Infinity" and "-Infinity" stand for the non-finite doubles, wherever a double may
appear (samples, min, max). -0.0 and 0.0 compare equal.

"cases": each has "name", "samples" (fed in order, one at a time or as one buffer; non-finite
samples are skipped and counted in "skipped"), "sketch" (the QuantileSketch parameters
relative_accuracy and max_bins) and "expect":
  "stats": OnlineStats.to_dict() after the samples: count, mean, m2 (sum of squared deviations
      from the mean), min, max, sum, skipped. Empty: mean = m2 = sum = 0, min = Infinity,
      max = -Infinity.
  "tolerance": absolute tolerances for mean, m2 and sum: |got - want| <= tolerance. With
      n = count and M = the largest |sample| among the finite samples (0 if none), they are
      1e-11 * M (mean), 1e-11 * n * M (sum) and 1e-9 * want + 1e-13 * M * sqrt(n * want)
      + 1e-24 * n * M**2 (m2): rounding in a streaming algorithm scales with the magnitude of
      the data, not of the result. count, skipped, min and max match exactly.
  "sketch": QuantileSketch.to_dict() after the samples; matches exactly. "pos" and "neg" are
      [bucket index, count] pairs in ascending index order, only buckets with a positive count.
      A sample x with |x| >= 2.2250738585072014e-308 goes in bucket ceil(ln|x| / ln(gamma)),
      gamma = (1 + relative_accuracy) / (1 - relative_accuracy), of "pos" (x > 0) or "neg"
      (x < 0); smaller magnitudes count in "zero". Each store keeps the buckets in
      [top - max_bins + 1, top], top = its highest index ever: lower ones fold into the lowest.
  "quantiles": [q, value] pairs: quantile(q) of that sketch, within relative 1e-12 (the value is
      2 * gamma**i / (gamma + 1) for a bucket i, and pow may differ in the last bit between math
      libraries). Empty sketch: every quantile is NaN.
"merges": each has "name", "a" and "b" (case names), "sketch" parameters, and "expect" as above
  for: one OnlineStats fed a's samples, merged with (merge(b)) one fed b's samples; the same for
  two sketches with the merge's sketch parameters. A merge equals one stream of a then b: the
  sketch exactly, the moments within the tolerances (computed over the samples of both).
"""


def _enc(x: float):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _safe(x: float, accuracies) -> bool:
    """False if x's bucket index is within 1e-9 of a boundary for any accuracy used."""
    if not math.isfinite(x) or abs(x) < TINY or abs(x) == 1.0:
        return True
    for a in accuracies:
        t = math.log(abs(x)) / math.log((1 + a) / (1 - a))
        if abs(t - round(t)) < 1e-9:
            return False
    return True


def _exact_moments(samples):
    finite = [x for x in samples if math.isfinite(x)]
    n = len(finite)
    if n == 0:
        stats = {"count": 0, "mean": 0.0, "m2": 0.0, "min": math.inf, "max": -math.inf, "sum": 0.0}
        big = 0.0
    else:
        total = sum(Fraction(x) for x in finite)
        mean = total / n
        m2 = sum((Fraction(x) - mean) ** 2 for x in finite)
        stats = {
            "count": n,
            "mean": float(mean),
            "m2": float(m2),
            "min": min(finite),
            "max": max(finite),
            "sum": float(total),
        }
        big = max(abs(x) for x in finite)
    stats["skipped"] = len(samples) - n
    tol = {
        "mean": 1e-11 * big,
        "m2": 1e-9 * stats["m2"] + 1e-13 * big * math.sqrt(n * stats["m2"]) + 1e-24 * n * big * big,
        "sum": 1e-11 * n * big,
    }
    return stats, tol


def _encode_dict(d: dict) -> dict:
    return {k: (_enc(v) if isinstance(v, float) else v) for k, v in d.items()}


def _expect(samples_a, samples_b, sketch):
    sk = _pure.QuantileSketch(sketch["relative_accuracy"], sketch["max_bins"])
    for x in samples_a:
        sk.add(x)
    if samples_b is not None:
        other = _pure.QuantileSketch(sketch["relative_accuracy"], sketch["max_bins"])
        for x in samples_b:
            other.add(x)
        sk.merge(other)
    everything = list(samples_a) + list(samples_b or [])
    stats, tol = _exact_moments(everything)
    return {
        "stats": _encode_dict(stats),
        "tolerance": tol,
        "sketch": _encode_dict(sk.to_dict()),
        "quantiles": [[q, _enc(sk.quantile(q))] for q in QUANTILES],
    }


def _sets():
    rnd = random.Random(20240611)
    sets = {
        "empty": [],
        "single": [42.5],
        "one-to-ten": [float(i) for i in range(1, 11)],
        "uniform": [rnd.uniform(0.0, 1000.0) for _ in range(400)],
        "lognormal-latency": [rnd.lognormvariate(-6.0, 1.2) for _ in range(600)],
        "signed-with-zeros": [rnd.gauss(0.0, 50.0) for _ in range(300)] + [0.0, -0.0, 0.0, 5e-324, -1e-310, 1.0, -1.0],
        "non-finite": [1.0, math.nan, 2.0, math.inf, -math.inf, 3.0, math.nan],
        "near-1e9": [1e9 + rnd.gauss(0.0, 1.0) for _ in range(1000)],
        "wide-range": [rnd.choice((-1, 1)) * math.exp(rnd.uniform(-200.0, 200.0)) for _ in range(400)],
        "constant": [0.1] * 257,
    }
    rnd.shuffle(sets["signed-with-zeros"])
    return sets


def build() -> dict:
    sets = _sets()
    default = {"relative_accuracy": 0.01, "max_bins": 2048}
    params = {name: default for name in sets}
    params["wide-range"] = {"relative_accuracy": 0.05, "max_bins": 16}
    params["signed-with-zeros"] = {"relative_accuracy": 0.02, "max_bins": 64}
    params["lognormal-latency"] = {"relative_accuracy": 0.01, "max_bins": 50}
    accuracies = {p["relative_accuracy"] for p in params.values()}
    for name, samples in sets.items():
        bad = [x for x in samples if not _safe(x, accuracies)]
        assert not bad, f"{name}: samples on a bucket boundary {bad}; pick another seed"
    cases = [
        {
            "name": name,
            "samples": [_enc(x) for x in samples],
            "sketch": params[name],
            "expect": _expect(samples, None, params[name]),
        }
        for name, samples in sets.items()
    ]
    merge_specs = [
        ("uniform", "lognormal-latency", default),
        ("signed-with-zeros", "non-finite", {"relative_accuracy": 0.02, "max_bins": 64}),
        ("lognormal-latency", "wide-range", {"relative_accuracy": 0.05, "max_bins": 16}),
        ("empty", "one-to-ten", default),
        ("near-1e9", "empty", default),
        ("near-1e9", "one-to-ten", {"relative_accuracy": 0.01, "max_bins": 8}),
    ]
    merges = [
        {
            "name": f"{a}+{b}",
            "a": a,
            "b": b,
            "sketch": p,
            "expect": _expect(sets[a], sets[b], p),
        }
        for a, b, p in merge_specs
    ]
    return {"format": FORMAT.splitlines(), "quantile_rel_tolerance": 1e-12, "cases": cases, "merges": merges}


def main() -> None:
    out = HERE / "stats.json"
    text = json.dumps(build(), indent=1, allow_nan=False)
    out.write_text(text + "\n")
    print(f"wrote {out} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
