"""Domain QA figures per split (tasks.eval.split_figures): per-bucket EM/F1 intervals, paired gains, the
below-base and beyond-noise flags, and text that never rounds a claim up."""

from __future__ import annotations

import math

import pytest

from tasks.eval.split_figures import bucket_indices, claim, interval_text, split_figures


def _rows(buckets: list[str | None]) -> list[dict]:
    return [
        {"id": f"q{i}", "question": "?", "answer": "a", **({"bucket": b} if b else {})} for i, b in enumerate(buckets)
    ]


def test_buckets_in_frequency_order_and_rows_without_one_only_overall():
    rows = _rows(["tail", "common", None, "mid", "common", "other"])
    assert bucket_indices(rows) == {"common": [1, 4], "mid": [3], "tail": [0], "other": [5]}


def test_known_case_per_bucket_and_paired_gain():
    # 300 questions, 200 common and 100 tail. Base answers none; fine-tuned answers half the common ones
    # and none of the tail: common EM 0.5 ± 1.96·sqrt(0.25/200) = ±0.069, tail 0 exactly, overall 1/3.
    rows = _rows(["common"] * 200 + ["tail"] * 100)
    base = {"exact_match": [0.0] * 300, "f1": [0.0] * 300}
    tuned_em = [1.0, 0.0] * 100 + [0.0] * 100
    tuned = {"exact_match": tuned_em, "f1": [0.5 * x for x in tuned_em]}
    fig = split_figures(rows, base, tuned)
    assert fig["n"] == 300 and fig["below_base"] is False and fig["worse_beyond_noise"] is False
    common = fig["finetuned"]["buckets"]["common"]
    half = 1.96 * math.sqrt(0.25 / 200)
    assert common["n"] == 200 and common["exact_match"]["mean"] == pytest.approx(0.5)
    assert common["exact_match"]["ci_low"] == pytest.approx(0.5 - half, abs=0.015)
    assert common["exact_match"]["ci_high"] == pytest.approx(0.5 + half, abs=0.015)
    assert common["f1"]["mean"] == pytest.approx(0.25)
    tail = fig["finetuned"]["buckets"]["tail"]["exact_match"]
    assert tail["mean"] == tail["ci_low"] == tail["ci_high"] == 0.0
    assert fig["finetuned"]["exact_match"]["mean"] == pytest.approx(1 / 3, abs=1e-4)
    # Base answers nothing, so the paired gain is fine-tuned's own figure, interval included.
    gain = fig["gain"]["buckets"]["common"]["exact_match"]
    assert (gain["mean"], gain["ci_low"], gain["ci_high"]) == (
        common["exact_match"]["mean"],
        common["exact_match"]["ci_low"],
        common["exact_match"]["ci_high"],
    )
    assert fig["gain"]["exact_match"]["ci_low"] > 0  # a gain beyond the noise


def test_worse_than_base_is_flagged_point_and_beyond_noise():
    rows = _rows(["common"] * 300)
    base = {"exact_match": [1.0] * 150 + [0.0] * 150, "f1": [1.0] * 150 + [0.0] * 150}
    one_fewer = {"exact_match": [1.0] * 149 + [0.0] * 151, "f1": base["f1"]}
    fig = split_figures(rows, base, one_fewer)
    assert fig["below_base"] is True and fig["worse_beyond_noise"] is False  # one question: within the noise
    much_worse = {"exact_match": [1.0] * 60 + [0.0] * 240, "f1": base["f1"]}
    fig = split_figures(rows, base, much_worse)
    assert fig["below_base"] is True and fig["worse_beyond_noise"] is True
    assert fig["gain"]["exact_match"]["ci_high"] < 0
    same = split_figures(rows, base, base)
    assert same["below_base"] is False and same["gain"]["exact_match"]["mean"] == 0.0


def test_scores_must_cover_every_question():
    rows = _rows(["common"] * 3)
    with pytest.raises(ValueError, match="finetuned has \\[2\\] scores for 3 questions"):
        split_figures(rows, {"exact_match": [0.0] * 3, "f1": [0.0] * 3}, {"exact_match": [0.0] * 2, "f1": [0.0] * 2})


def test_claims_are_never_rounded_up():
    assert claim(0.14375) == "0.143"  # 46/320
    assert claim(0.1) == "0.100" and claim(1 / 3) == "0.333" and claim(2 / 3) == "0.666"
    assert claim(0.0249, signed=True) == "+0.024" and claim(-0.0004, signed=True) == "-0.001"
    ci = {"mean": 0.14375, "ci_low": 0.10625, "ci_high": 0.18125}
    assert interval_text(ci) == "0.143 [0.106, 0.182]"  # the interval only ever widens
    gain = {"mean": 0.03125, "ci_low": -0.0031, "ci_high": 0.0656}
    assert interval_text(gain, signed=True) == "+0.031 [-0.004, +0.066]"
