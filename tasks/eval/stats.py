"""Confidence intervals for evaluation figures: percentile bootstrap over questions.

A figure on 42 or 300 questions is a sample; its interval says how far another draw of questions
could move it. `paired_bootstrap` resamples the same questions for two models, so the interval of
their difference reflects the per-question noise once, not twice. `bootstrap_statistic` does the
same for any figure computed from the resampled questions (a gap between groups' means, an ECE).
Every function draws the same resampled question lists for the same (n, resamples, seed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from functools import lru_cache

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
    ci = bootstrap_statistic(
        len(diffs), lambda idx: _mean([diffs[i] for i in idx]), level=level, resamples=resamples, seed=seed
    )
    return {"mean": ci["value"], **{k: ci[k] for k in ("ci_low", "ci_high", "n", "level")}}


def bootstrap_statistic(
    n: int,
    statistic: Callable[[Sequence[int]], float],
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """{"value", "ci_low", "ci_high", "n", "level"}: `statistic` over items 0..n-1 and its percentile-bootstrap interval.

    `statistic` takes a list of item indices (with repeats) and returns one number; it is called once on
    range(n) for the value and once per resample. Pair two models by computing both inside it.
    """
    if n < 1:
        raise ValueError("bootstrap: no values")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"bootstrap: level must be in (0, 1) and resamples >= 1, got {level}, {resamples}")
    values = sorted(statistic(idx) for idx in _resampled_indices(n, resamples, seed))
    tail = (1 - level) / 2
    return {
        "value": statistic(range(n)),
        "ci_low": _percentile(values, tail),
        "ci_high": _percentile(values, 1 - tail),
        "n": n,
        "level": level,
    }


@lru_cache(maxsize=4)
def _resampled_indices(n: int, resamples: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """`resamples` draws of n indices with replacement; cached, as every metric of a report resamples alike."""
    rng = random.Random(seed)
    return tuple(tuple(rng.randrange(n) for _ in range(n)) for _ in range(resamples))


def rounded(ci: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in ci.items()}
