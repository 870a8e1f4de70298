"""Calibrated membership-inference scores and their metrics (tasks.eval.mia) on hand-made cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.eval import mia, safety


def test_min_k_averages_the_least_likely_tokens():
    # k = 20 % of 10 tokens: the two largest NLLs, 5 and 4, so the mean log-prob is -4.5
    assert mia.min_k_score([0.1, 5.0, 0.2, 4.0, 0.1, 0.3, 0.1, 0.2, 0.1, 0.1]) == pytest.approx(-4.5)
    assert mia.min_k_score([2.0]) == -2.0  # at least one token
    assert mia.min_k_score([1.0, 3.0], k=1.0) == -2.0  # k = 100 %: the plain mean


def test_reference_calibration_removes_a_per_record_difficulty_offset():
    """Records differ in difficulty far more than training lowered the members' loss: the plain loss cannot
    tell members apart, the reference-calibrated loss separates them perfectly."""
    rng = random.Random(0)
    difficulty = [rng.uniform(1.0, 5.0) for _ in range(80)]
    member = [i % 2 == 0 for i in range(80)]
    model_nll = [[d - (0.3 if m else 0.0)] * 10 for d, m in zip(difficulty, member)]
    scores = mia.record_scores(model_nll, [50] * 80, reference_losses=difficulty)
    pos = {k: [s for s, m in zip(v, member) if m] for k, v in scores.items()}
    neg = {k: [s for s, m in zip(v, member) if not m] for k, v in scores.items()}
    assert mia.fast_auc(np.array(pos["reference"]), np.array(neg["reference"])) == 1.0
    assert abs(mia.fast_auc(np.array(pos["loss"]), np.array(neg["loss"])) - 0.5) < 0.2
    out = mia.audit(pos, neg)
    assert out["score"] == "min_k" and out["scores"]["reference"]["auc"] == 1.0  # min-k is the pre-declared primary


def test_zlib_divides_the_loss_by_the_compressed_size():
    scores = mia.record_scores([[2.0, 4.0]], [30])
    assert scores["zlib"] == [pytest.approx(-3.0 / 30)] and scores["loss"] == [-3.0] and "reference" not in scores
    assert mia.zlib_bytes("abc" * 100) < mia.zlib_bytes("".join(chr(97 + (i * 7) % 26) for i in range(300)))


def test_auc_of_separated_scores_and_agreement_with_the_exact_auc():
    assert mia.fast_auc(np.array([3.0, 2.0]), np.array([1.0, 0.0])) == 1.0
    assert mia.fast_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    rng = random.Random(1)
    pos, neg = [rng.randint(0, 9) for _ in range(57)], [rng.randint(0, 7) for _ in range(43)]
    assert mia.fast_auc(np.array(pos, float), np.array(neg, float)) == pytest.approx(safety.auc(pos, neg), abs=1e-12)


def test_tpr_at_low_fpr_uses_a_threshold_that_flags_at_most_that_share_of_non_members():
    neg = np.arange(100, dtype=float)  # 0..99: FPR 1 % allows one false positive, threshold 98
    pos = np.array([99.5, 98.5, 97.0, 10.0])
    assert mia.tpr_at_fpr(pos, neg, 0.01) == 0.5
    assert mia.tpr_at_fpr(pos, neg, 0.10) == 0.75  # threshold 89
    assert mia.tpr_at_fpr(pos, neg, 0.0) == 0.25  # nothing above the largest non-member but 99.5


def test_metrics_carry_a_bootstrap_ci_around_the_auc():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    m = mia.attack_metrics(pos, neg, resamples=300)
    assert m["auc_ci_low"] < m["auc"] < m["auc_ci_high"]
    assert 0.70 < m["auc"] < 0.82  # Φ(1/√2) ≈ 0.76
    assert set(m["tpr_at_fpr"]) == {"0.01", "0.1"} and m["n_members"] == 200
    perfect = mia.attack_metrics([5.0, 6.0, 7.0], [1.0, 2.0], resamples=50)
    assert perfect["auc"] == perfect["auc_ci_low"] == perfect["auc_ci_high"] == 1.0
    with pytest.raises(ValueError, match="finite"):
        mia.attack_metrics([float("nan")], [1.0])


def test_grouping_scores_a_subject_by_the_mean_of_its_records():
    assert mia.group_means([1.0, 3.0, 10.0, 2.0], ["a", "a", "b", "a"]) == [2.0, 10.0]
    members = {"loss": [1.0, 3.0, 2.0, 9.0]}
    non_members = {"loss": [0.0, 4.0, 0.5]}
    # per record 9 of 12 pairs are ordered (AUC 0.75); per subject the means are 2 and 9 vs 2 and 0.5: 3.5 of 4
    assert mia.audit(members, non_members)["auc"] == 0.75
    out = mia.audit(members, non_members, member_groups=["s1", "s1", "s1", "s2"], non_member_groups=["s3", "s3", "s4"])
    assert out["unit"] == "group" and out["scores"]["loss"]["n_members"] == 2
    assert out["auc"] == 0.875 and out["score"] == "loss"
    with pytest.raises(ValueError, match="both"):
        mia.audit(members, non_members, member_groups=["s1"] * 4)
