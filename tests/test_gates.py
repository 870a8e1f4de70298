"""Promotion gates and the audit hold-out split."""

from __future__ import annotations

import json

import pytest

from tasks.config import GatesConfig
from tasks.gates import PromotionGated, check_gates, enforce
from tasks.splits import in_holdout, split_audit_holdout

GOOD = {"exact_match_gain": 0.02, "regression_vs_champion": -0.01, "toxicity_rate": 0.0, "pii_leaks": 0,
        "canary_exposure_max": 2.0, "mia_auc": 0.51}


def test_all_gates_pass_on_good_evidence():
    outcome = check_gates(GOOD, GatesConfig())
    assert outcome["status"] == "passed" and outcome["failed"] == []
    assert {g["status"] for g in outcome["gates"]} == {"passed"}
    assert enforce(outcome) is outcome


@pytest.mark.parametrize("metric,value,gate", [
    ("exact_match_gain", -0.05, "exact_match_gain"),
    ("regression_vs_champion", 0.2, "champion_regression"),
    ("toxicity_rate", 0.3, "toxicity"),
    ("pii_leaks", 1, "pii_leaks"),
    ("canary_exposure_max", 9.5, "canary_exposure"),
    ("mia_auc", 0.8, "membership_inference"),
])
def test_each_gate_fails_on_its_own_metric(metric, value, gate):
    outcome = check_gates({**GOOD, metric: value}, GatesConfig())
    assert outcome["status"] == "gated" and outcome["failed"] == [gate]
    with pytest.raises(PromotionGated, match=gate) as err:
        enforce(outcome)
    assert "gates." in str(err.value)  # names the config field to change


def test_unmeasured_figures_do_not_block_and_off_gates_are_ignored():
    metrics = {**GOOD, "regression_vs_champion": None, "canary_exposure_max": None, "mia_auc": 0.99}
    outcome = check_gates(metrics, GatesConfig(max_mia_auc=None))
    status = {g["name"]: g["status"] for g in outcome["gates"]}
    assert status["champion_regression"] == "not measured"
    assert status["canary_exposure"] == "not measured"
    assert status["membership_inference"] == "off"
    assert outcome["status"] == "passed"


def test_several_failures_are_all_reported():
    outcome = check_gates({**GOOD, "pii_leaks": 3, "toxicity_rate": 0.5}, GatesConfig())
    assert sorted(outcome["failed"]) == ["pii_leaks", "toxicity"]
    assert len(outcome["reasons"]) == 2


def test_holdout_split_is_deterministic_and_partitions_rows(tmp_path):
    rows = tmp_path / "masked.jsonl"
    rows.write_text("".join(json.dumps({"record_id": f"R-{i}", "text": f"text {i}"}) + "\n" for i in range(2000)))
    first = split_audit_holdout(rows, tmp_path / "a", 0.05)
    second = split_audit_holdout(rows, tmp_path / "b", 0.05)
    assert first["train_records"] + first["holdout_records"] == 2000
    assert 60 <= first["holdout_records"] <= 140  # ~5 % of 2000
    assert (tmp_path / "a" / "audit_holdout.jsonl").read_text() == (tmp_path / "b" / "audit_holdout.jsonl").read_text()
    train_ids = {json.loads(line)["record_id"] for line in open(first["train_path"])}
    holdout_ids = {json.loads(line)["record_id"] for line in open(first["holdout_path"])}
    assert not train_ids & holdout_ids
    assert all(in_holdout(i, 0.05) for i in holdout_ids)
    # A record's side does not depend on which other records are in the file (monthly versions grow).
    assert in_holdout("R-7", 0.05) == ("R-7" in holdout_ids)


def test_holdout_off_keeps_every_record(tmp_path):
    rows = tmp_path / "masked.jsonl"
    rows.write_text("".join(json.dumps({"record_id": f"R-{i}", "text": "t"}) + "\n" for i in range(50)))
    out = split_audit_holdout(rows, tmp_path / "s", 0.0)
    assert out["train_records"] == 50 and out["holdout_records"] == 0
    with pytest.raises(ValueError, match="audit_holdout_share"):
        split_audit_holdout(rows, tmp_path / "s", 0.6)
