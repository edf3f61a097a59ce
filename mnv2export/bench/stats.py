"""Latency statistics: a pure function of a sequence of timings, testable on a known sequence.

Percentiles interpolate linearly between the two closest ranks (Hyndman & Fan type 7, ``numpy.percentile``'s
default): for sorted values ``v[0..n-1]`` the q-th percentile sits at rank ``(n - 1) * q / 100``. The standard
deviation is the sample one (``n - 1`` in the denominator; 0 for a single value). Throughput is images per second
over the whole timed loop: ``batch * n / sum(times)``, i.e. ``batch / mean``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation between closest ranks."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    rank = (len(sorted_values) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def latency_stats(times_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    """p50/p90/p95/p99/min/max/mean/std of ``times_ms`` (one latency per timed call, in ms) and the throughput
    (images/s) for ``batch`` images per call."""
    if not times_ms:
        raise ValueError("no timings")
    if batch < 1:
        raise ValueError(f"batch {batch} < 1")
    values = sorted(float(t) for t in times_ms)
    if values[0] < 0 or not math.isfinite(values[-1]):
        raise ValueError("timings must be finite and >= 0")
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    out = {f"p{q}_ms": percentile(values, q) for q in PERCENTILES}
    out.update(min_ms=values[0], max_ms=values[-1], mean_ms=mean, std_ms=math.sqrt(var))
    out["throughput"] = batch * 1000.0 / mean if mean > 0 else math.inf
    return out
