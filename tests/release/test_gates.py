"""Promotion gates and the audit hold-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import GatesConfig
from tasks.data.splits import in_holdout, split_audit_holdout
from tasks.release.gates import PromotionGated, check_gates, enforce

GOOD = {
    "exact_match_gain": 0.02,
    "exact_match_below_base": 0.0,
    "regression_vs_champion": -0.01,
    "toxicity_rate": 0.0,
    "pii_leaks": 0,
    "canary_exposure_max": 2.0,
    "mia_auc": 0.51,
    "reproducible_noise": 0.0,
}


def test_all_gates_pass_on_good_evidence():
    outcome = check_gates(GOOD, GatesConfig())
    assert outcome["status"] == "passed" and outcome["failed"] == []
    assert {g["status"] for g in outcome["gates"]} == {"passed"}
    assert enforce(outcome) is outcome


@pytest.mark.parametrize(
    "metric,value,gate",
    [
        ("exact_match_gain", -0.05, "exact_match_gain"),
        ("exact_match_below_base", 1.0, "not_worse_than_base"),
        ("regression_vs_champion", 0.2, "champion_regression"),
        ("toxicity_rate", 0.3, "toxicity"),
        ("pii_leaks", 1, "pii_leaks"),
        ("canary_exposure_max", 9.5, "canary_exposure"),
        ("mia_auc", 0.8, "membership_inference"),
    ],
)
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


def test_a_model_below_base_on_validation_is_never_promoted_unless_the_switch_is_off():
    below = {**GOOD, "exact_match_gain": -0.003, "exact_match_below_base": 1.0}
    outcome = check_gates(below, GatesConfig(min_exact_match_gain=None))  # the gain gate off: this one still holds
    assert outcome["status"] == "gated" and outcome["failed"] == ["not_worse_than_base"]
    assert "below base" in outcome["reasons"][0] and "gates.not_worse_than_base" in outcome["reasons"][0]
    gate = next(g for g in outcome["gates"] if g["name"] == "not_worse_than_base")
    assert (gate["threshold"], gate["value"]) == (0.0, 1.0)
    off = check_gates(below, GatesConfig(min_exact_match_gain=None, not_worse_than_base=False))
    assert off["status"] == "passed"
    assert next(g for g in off["gates"] if g["name"] == "not_worse_than_base")["status"] == "off"
    assert GatesConfig().not_worse_than_base is True  # on unless a deployment turns it off


def test_several_failures_are_all_reported():
    outcome = check_gates({**GOOD, "pii_leaks": 3, "toxicity_rate": 0.5}, GatesConfig())
    assert sorted(outcome["failed"]) == ["pii_leaks", "toxicity"]
    assert len(outcome["reasons"]) == 2


def test_holdout_split_is_deterministic_and_partitions_rows(tmp_path):
    rows = tmp_path / "masked.jsonl"
    rows.write_text("".join(json.dumps({"record_id": f"R-{i}", "text": f"text {i}"}) + "\n" for i in range(2000)))
    first = split_audit_holdout(rows, tmp_path / "a", 0.05)
    split_audit_holdout(rows, tmp_path / "b", 0.05)
    assert first["train_records"] + first["holdout_records"] == 2000
    assert 60 <= first["holdout_records"] <= 140  # ~5 % of 2000
    assert (tmp_path / "a" / "audit_holdout.jsonl").read_text() == (tmp_path / "b" / "audit_holdout.jsonl").read_text()
    train_ids = {json.loads(line)["record_id"] for line in Path(first["train_path"]).read_text().splitlines()}
    holdout_ids = {json.loads(line)["record_id"] for line in Path(first["holdout_path"]).read_text().splitlines()}
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


def test_a_gated_run_fails_visibly_and_keeps_its_evidence(tmp_path, monkeypatch):
    """stage_gates with a failing figure: gates.json and the version tag say 'gated', the task raises
    PromotionGated naming the gate, and the strict report fails with 'run gated'."""
    from mlflow import MlflowClient

    from tasks.config import Paths, PipelineConfig, save_resolved
    from tasks.release.registry import register_model
    from tasks.stages import privacy_finetune
    from tasks.stages.run import save_stage
    from tests.release.test_register import build_model

    monkeypatch.setenv("PFT_HOME", str(tmp_path / "home"))
    paths = Paths()
    run_id = "manual__gated"
    run_dir = paths.run_dir(run_id)
    save_resolved(PipelineConfig(), run_dir)
    base, adapter = build_model(tmp_path / "model", "x")
    registered = register_model(
        paths=paths,
        model_name="gated-lm",
        base_model_dir=base,
        adapter_dir=adapter,
        mlflow_run_id=None,
        tags={},
        metrics={},
    )
    evaluated = {
        "base": {"exact_match": 0.1, "f1": 0.1, "relevance": 0.5},
        "finetuned": {"exact_match": 0.2, "f1": 0.2, "relevance": 0.5},
        **GOOD,
        "pii_leaks": 2,
    }
    trained = {
        "dp": True,
        "epsilon": 7.9,
        "delta": 1e-5,
        "method": "lora",
        "trainable_pct": 2.0,
        "noise_source": "csprng (os.urandom)",
    }
    for name, payload in (
        ("prepare", {"run_id": run_id}),
        ("evaluate", evaluated),
        ("train", trained),
        ("register", registered),
    ):
        save_stage(run_id, name, payload)
    with pytest.raises(PromotionGated, match="pii_leaks"):
        privacy_finetune.stage_gates(run_id, evaluated, registered, trained)
    saved = json.loads((run_dir / "stages" / "gates.json").read_text())
    assert saved["status"] == "gated" and saved["failed"] == ["pii_leaks"]
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri, registry_uri=paths.mlflow_tracking_uri)
    version = client.get_model_version("gated-lm", str(registered["version"]))
    assert version.tags["gates"] == "gated" and "gated" in version.description
    assert "champion" not in client.get_registered_model("gated-lm").aliases
    with pytest.raises(RuntimeError, match="run gated"):
        privacy_finetune.stage_report(run_id)
    assert json.loads((run_dir / "report.json").read_text())["outcome"] == "gated"


def test_a_model_trained_with_reproducible_noise_is_refused_promotion():
    """Seeded DP noise can be regenerated by anyone with the seed: such a model never becomes champion
    unless the deployment's config explicitly allows it (tests, benchmarks)."""
    from tasks.release.gates import reproducible_noise
    from tasks.train.noise import NOISE_SOURCE_CSPRNG, NOISE_SOURCE_SEEDED

    seeded = {**GOOD, "reproducible_noise": reproducible_noise({"dp": True, "noise_source": NOISE_SOURCE_SEEDED})}
    outcome = check_gates(seeded, GatesConfig())
    assert outcome["status"] == "gated" and outcome["failed"] == ["secure_noise"]
    assert "allow_reproducible_noise" in outcome["reasons"][0]
    with pytest.raises(PromotionGated, match="secure_noise"):
        enforce(outcome)
    assert check_gates(seeded, GatesConfig(allow_reproducible_noise=True))["status"] == "passed"
    secure = {**GOOD, "reproducible_noise": reproducible_noise({"dp": True, "noise_source": NOISE_SOURCE_CSPRNG})}
    assert check_gates(secure, GatesConfig())["status"] == "passed"
    assert reproducible_noise({"dp": True}) == 1.0  # a result that does not say where its noise came from
    assert reproducible_noise({"dp": False}) is None
