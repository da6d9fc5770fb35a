"""Small statistics for benchmarks/performance.py and its Synapse-side probe
(tests/support/perf_probe_module.py): no dependencies, so both can use it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in [0, 1]); NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def median(values: Iterable[float]) -> float:
    found = list(values)
    return statistics.median(found) if found else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when that has no meaning."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return math.nan
    return numerator / denominator
