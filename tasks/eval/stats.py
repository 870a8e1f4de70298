"""Confidence intervals for evaluation figures: percentile bootstrap over questions.

A figure on 42 or 300 questions is a sample; its interval says how far another draw of questions
could move it. `paired_bootstrap` resamples the same questions for two models, so the interval of
their difference reflects the per-question noise once, not twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20260101  # fixed: the same scores always give the same interval


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict:
    """{"mean", "ci_low", "ci_high", "n", "level"}: the mean and its percentile-bootstrap interval."""
    return paired_bootstrap(values, None, level=level, resamples=resamples, seed=seed)


def paired_bootstrap(
    values: Sequence[float],
    baseline: Sequence[float] | None,
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Mean of `values` − `baseline` (per item, same items) with its percentile-bootstrap interval.

    With `baseline` None, the interval of the mean of `values` alone.
    """
    if not values:
        raise ValueError("bootstrap: no values")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"bootstrap: level must be in (0, 1) and resamples >= 1, got {level}, {resamples}")
    if baseline is not None and len(baseline) != len(values):
        raise ValueError(f"paired bootstrap: {len(values)} values vs {len(baseline)} baseline values")
    diffs = [float(v) - (float(baseline[i]) if baseline is not None else 0.0) for i, v in enumerate(values)]
    if any(math.isnan(d) for d in diffs):
        raise ValueError("bootstrap: a value is NaN")
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(_mean([diffs[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - level) / 2
    return {
        "mean": _mean(diffs),
        "ci_low": _percentile(means, tail),
        "ci_high": _percentile(means, 1 - tail),
        "n": n,
        "level": level,
    }


def rounded(ci: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in ci.items()}
