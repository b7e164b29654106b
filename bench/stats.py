"""Order statistics for the benchmark tables (nearest-rank percentiles, no interpolation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the samples at or
    below it (``q`` in [0, 1]). NaN for no samples.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.0
    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    4.0
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile q={q!r} must be within [0, 1]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], *, digits: int = 3) -> dict[str, float | int]:
    """``n``, ``min``, ``p50``, ``p90``, ``p99``, ``max`` and ``mean`` of ``values``."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 0.50), digits),
        "p90": round(percentile(values, 0.90), digits),
        "p99": round(percentile(values, 0.99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }
