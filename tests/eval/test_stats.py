"""Bootstrap confidence intervals (tasks.eval.stats) against cases whose answer is known."""

from __future__ import annotations

import math
import random

import pytest

from tasks.eval.stats import bootstrap_ci, bootstrap_statistic, paired_bootstrap


def test_constant_values_have_a_zero_width_interval():
    ci = bootstrap_ci([0.25] * 40)
    assert ci["mean"] == ci["ci_low"] == ci["ci_high"] == pytest.approx(0.25)
    assert ci["n"] == 40 and ci["level"] == 0.95


def test_interval_of_a_proportion_matches_the_normal_approximation():
    # 300 Bernoulli(0.4) draws: the 95% interval of the mean is about ±1.96·sqrt(p(1-p)/n) = ±0.0554.
    values = [1.0] * 120 + [0.0] * 180
    ci = bootstrap_ci(values, resamples=4000)
    half = 1.96 * math.sqrt(0.4 * 0.6 / 300)
    assert ci["mean"] == pytest.approx(0.4)
    assert ci["ci_low"] == pytest.approx(0.4 - half, abs=0.01)
    assert ci["ci_high"] == pytest.approx(0.4 + half, abs=0.01)


def test_paired_difference_removes_the_shared_per_item_noise():
    rng = random.Random(3)
    difficulty = [rng.gauss(0, 5) for _ in range(200)]  # large per-question spread shared by both models
    base = difficulty
    tuned = [d - 1.0 + rng.gauss(0, 0.1) for d in difficulty]
    paired = paired_bootstrap(tuned, base)
    assert paired["mean"] == pytest.approx(-1.0, abs=0.05)
    assert paired["ci_high"] < -0.9 and paired["ci_low"] > -1.1
    # Unpaired, the two means' intervals overlap heavily: the same gain would look like noise.
    assert bootstrap_ci(tuned)["ci_high"] > bootstrap_ci(base)["ci_low"]


def test_same_seed_same_interval_and_bad_input_is_refused():
    values = [random.Random(1).random() for _ in range(50)]
    assert bootstrap_ci(values) == bootstrap_ci(values)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="3 values vs 2"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_statistic_of_the_mean_is_the_plain_bootstrap():
    values = [random.Random(7).random() for _ in range(60)]
    ci = bootstrap_statistic(len(values), lambda idx: sum(values[i] for i in idx) / len(idx))
    plain = bootstrap_ci(values)
    assert ci["value"] == pytest.approx(plain["mean"])
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((plain["ci_low"], plain["ci_high"]))


def test_gap_between_group_means_matches_the_normal_approximation():
    # Group a answers the first 150 of 300 questions, group b none: the gap max − min of the groups'
    # means is a's proportion, 0.5, with a 95% interval of about ±1.96·sqrt(0.25/300) = ±0.0566.
    groups = {"a": [1.0] * 150 + [0.0] * 150, "b": [0.0] * 300}

    def gap(idx):
        means = [sum(col[i] for i in idx) / len(idx) for col in groups.values()]
        return max(means) - min(means)

    ci = bootstrap_statistic(300, gap, resamples=4000)
    half = 1.96 * math.sqrt(0.25 / 300)
    assert ci["value"] == pytest.approx(0.5) and ci["n"] == 300 and ci["level"] == 0.95
    assert ci["ci_low"] == pytest.approx(0.5 - half, abs=0.01)
    assert ci["ci_high"] == pytest.approx(0.5 + half, abs=0.01)


def test_statistic_of_two_items_spans_both():
    # Items 0 and 1 resampled twice: the mean is 0, 0.5 or 1 with odds 1:2:1, so the 95% interval is [0, 1].
    ci = bootstrap_statistic(2, lambda idx: sum(idx) / len(idx))
    assert (ci["value"], ci["ci_low"], ci["ci_high"]) == (0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_statistic(0, len)
