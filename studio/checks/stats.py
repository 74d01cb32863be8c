"""How sure a pass rate or a mean score is, over the answers of a held-out set: the Wilson interval of a pass rate
(good at 0 and 1 and for small n, where the normal approximation is not) and a normal-approximation interval of a
mean score, both 95% by default, and `summarize`, which gives both for one check's scores.
"""
from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of the pass rate k/n; (0.0, 1.0) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and mean +- z standard errors (sample standard deviation), clipped to [0, 1];
    (nan, nan, nan) for no values, and (mean, 0.0, 1.0) for one (its spread is unknown)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0, 1.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def summarize(scores: list[float]) -> dict:
    """One check's scores -> {"n", "passed" (scores of 1), "pass_rate", "pass_lo", "pass_hi" (Wilson), "mean",
    "mean_lo", "mean_hi"}; pass_rate and the means are nan when there are no scores."""
    n = len(scores)
    passed = sum(1 for s in scores if s >= 1.0)
    lo, hi = wilson(passed, n)
    mean, mean_lo, mean_hi = mean_ci(list(scores))
    return {"n": n, "passed": passed, "pass_rate": passed / n if n else math.nan, "pass_lo": lo, "pass_hi": hi,
            "mean": mean, "mean_lo": mean_lo, "mean_hi": mean_hi}
