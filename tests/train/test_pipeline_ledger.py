"""The training stage charges the privacy ledger once per run, before any step, and refuses over budget."""

from __future__ import annotations

import math

import pytest

from tasks.config import PipelineConfig
from tasks.stages import privacy_finetune
from tasks.train import ledger
from tests.helpers import masked_records


@pytest.fixture()
def ledger_url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("PFT_LEDGER_URL", url)
    yield url
    ledger.dispose_engines()


def _setup(tmp_path, *, epsilon_budget=20.0, dp=True, allow_non_private=False, target_epsilon=8.0):
    cfg = PipelineConfig.model_validate(
        {
            "train": {
                "batch_size": 20,
                "physical_batch_size": 10,
                "epochs": 1.0,
                "dp": dp,
                "target_epsilon": target_epsilon,
            },
            "privacy": {
                "source_dataset": "test-records",
                "epsilon_budget": epsilon_budget,
                "delta_budget": 1e-2,
                "allow_non_private": allow_non_private,
            },
        }
    )
    spec = {"train": cfg.train.model_dump(), "data_path": str(masked_records(tmp_path / "train.jsonl", 200))}
    return cfg, spec


def test_plan_matches_the_recipe_and_stays_within_target(tmp_path):
    _cfg, spec = _setup(tmp_path)
    plan = privacy_finetune.privacy_plan(spec)
    assert plan["records"] == 200 and plan["steps"] == 10 and plan["delta"] == pytest.approx(1 / 2000)
    assert 0 < plan["epsilon"] <= 8.0 and plan["noise_multiplier"] > 0 and plan["accountant"] in ("prv", "rdp")


def test_the_recipe_runs_the_charged_mechanism_and_recomputes_when_inputs_changed(tmp_path):
    """stage_train hands the ledger's mechanism to torchrun; it applies only to the same records and DP inputs."""
    from tasks.train.dp import DP_INPUTS, dp_mechanism, planned_mechanism

    _cfg, spec = _setup(tmp_path)
    plan = privacy_finetune.privacy_plan(spec)
    handed = {
        **spec,
        "dp_mechanism": {
            "records": 200,
            "mechanism": plan["mechanism"],
            "inputs": {k: spec["train"][k] for k in DP_INPUTS},
        },
    }
    assert planned_mechanism(handed, 200) == dp_mechanism(spec["train"], 200) == plan["mechanism"]
    assert planned_mechanism(handed, 150) == dp_mechanism(spec["train"], 150) != plan["mechanism"]
    changed = {**handed, "train": {**spec["train"], "target_epsilon": 2.0}}
    assert planned_mechanism(changed, 200)["epsilon"] <= 2.0


def test_reservation_is_charged_once_and_refused_over_budget(tmp_path, ledger_url):
    """Runs at ε ≈ 8 (PRV, 10 steps at q = 0.1, δ = 5e-4) under a budget of 12: composed tightly, three fit
    (basic composition would have refused the second), the fourth is refused."""
    from tasks.train.composition import compose

    cfg, spec = _setup(tmp_path, epsilon_budget=12.0)
    first = privacy_finetune.reserve_privacy_budget("manual__one", cfg, spec, dataset_rev="rev1")
    again = privacy_finetune.reserve_privacy_budget("manual__one", cfg, spec, dataset_rev="rev1")  # an Airflow retry
    assert again.run_id == first.run_id
    assert ledger.spent("test-records").runs == 1
    assert first.recorded_mechanism is not None and first.unit == "record"
    for key in ("manual__two", "manual__three"):
        privacy_finetune.reserve_privacy_budget(key, cfg, spec, dataset_rev="rev1")
    spent = ledger.spent("test-records")
    mechanism, delta = first.recorded_mechanism, first.delta
    assert spent.epsilon == compose([mechanism] * 3, 3 * delta).epsilon and spent.accountant == "prv"
    assert spent.basic_epsilon == pytest.approx(3 * first.epsilon) and spent.basic_epsilon > 1.9 * 12.0
    assert 2 * first.epsilon > 12.0 >= spent.epsilon  # basic composition would have refused the second run
    with pytest.raises(ledger.PrivacyBudgetExceeded) as err:  # the fourth takes the composed total past 12
        privacy_finetune.reserve_privacy_budget("manual__four", cfg, spec, dataset_rev="rev1")
    message, total = str(err.value), compose([mechanism] * 4, 4 * delta).epsilon
    assert total > 12.0 and err.value.status.total_epsilon == total
    assert "test-records" in message and "limit ε=12" in message and f"ε={total:.6g} (PRV accountant" in message
    assert ledger.spent("test-records").runs == 3  # the refused run is not recorded
    summary = privacy_finetune.ledger_summary(cfg, first, None)
    assert summary["spent_epsilon"] == spent.epsilon and summary["basic_epsilon"] == spent.basic_epsilon
    from tasks.airflow.dag_parts import permanent_errors

    assert isinstance(err.value, permanent_errors())  # the Airflow task fails at once, no retry


def test_non_private_run_is_refused_unless_allowed(tmp_path, ledger_url):
    cfg, spec = _setup(tmp_path, dp=False)
    with pytest.raises(ledger.PrivacyBudgetExceeded):
        privacy_finetune.reserve_privacy_budget("manual__nodp", cfg, spec, dataset_rev="rev1")
    cfg, spec = _setup(tmp_path, dp=False, allow_non_private=True)
    entry = privacy_finetune.reserve_privacy_budget("manual__nodp", cfg, spec, dataset_rev="rev1")
    assert math.isinf(entry.epsilon) and not entry.private


def test_colliding_run_ids_get_distinct_folders_and_ledger_entries(tmp_path, ledger_url):
    """Run ids that clean to the same string, and one name used by two DAGs, are separate runs and charges."""
    from tasks.config import Paths, safe_run_id

    cfg, spec = _setup(tmp_path, epsilon_budget=80.0)
    plus, underscore = "manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"
    assert Paths(tmp_path).run_dir(plus) != Paths(tmp_path).run_dir(underscore)
    a = privacy_finetune.reserve_privacy_budget(plus, cfg, spec, dataset_rev="rev1")
    b = privacy_finetune.reserve_privacy_budget(underscore, cfg, spec, dataset_rev="rev1")
    c = privacy_finetune.reserve_privacy_budget(
        "monthly-2026-01", cfg, spec, dataset_rev="rev1", dag_id="privacy_finetune"
    )
    d = privacy_finetune.reserve_privacy_budget(
        "monthly-2026-01", cfg, spec, dataset_rev="rev1", dag_id="monthly_refinetune"
    )
    assert len({a.run_id, b.run_id, c.run_id, d.run_id}) == 4 and ledger.spent("test-records").runs == 4
    assert a.run_id == f"privacy_finetune/{safe_run_id(plus)}"


def test_a_reused_run_key_with_other_settings_is_refused(tmp_path, ledger_url):
    """The second run under one key is not "its own retry" unless it trains the same thing on the same base."""
    cfg, spec = _setup(tmp_path)
    privacy_finetune.reserve_privacy_budget(
        "manual__one", cfg, {**spec, "base_model_sha256": "1" * 64}, dataset_rev="rev1"
    )
    for changed in (
        {**spec, "base_model_sha256": "2" * 64},
        {**spec, "base_model_sha256": "1" * 64, "train": {**spec["train"], "learning_rate": 0.01}},
        {**spec, "base_model_sha256": "1" * 64, "train": {**spec["train"], "lora_r": 16}},
    ):
        with pytest.raises(ledger.LedgerConflict, match="config_digest"):
            privacy_finetune.reserve_privacy_budget("manual__one", cfg, changed, dataset_rev="rev1")
    execution_only = {**spec, "base_model_sha256": "1" * 64, "train": {**spec["train"], "physical_batch_size": 5}}
    privacy_finetune.reserve_privacy_budget(
        "manual__one", cfg, execution_only, dataset_rev="rev1"
    )  # a retry on other hardware
    assert ledger.spent("test-records").runs == 1


def test_a_privacy_finetune_run_may_not_take_a_monthly_run_key(tmp_path, monkeypatch):
    from tasks.config import PolicyViolation

    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    with pytest.raises(PolicyViolation, match="reserved for monthly_refinetune"):
        privacy_finetune.stage_prepare("monthly-2026-01", {}, dag_id="privacy_finetune")
    assert not (tmp_path / "runs" / "monthly-2026-01").exists()


def test_a_subject_level_plan_counts_subjects_and_the_ledger_entry_says_subject(tmp_path, ledger_url):
    """privacy.unit: subject — N is the subjects (plus records without one), δ follows them, the entry's unit is
    'subject'; the record-level spec of the same config carries no unit keys (its ledger digest is unchanged)."""
    import json

    from tasks.config import train_settings

    cfg, _ = _setup(tmp_path)
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"unit": "subject"})})
    path = tmp_path / "subjects.jsonl"
    rows = [{"record_id": f"R-{i}", "subject": f"<MEMBER_ID_{i % 50:08x}>", "text": f"Record {i}."} for i in range(200)]
    rows += [{"record_id": f"P-{i}", "text": f"Plan text {i}."} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"train": train_settings(cfg), "data_path": str(path)}
    plan = privacy_finetune.privacy_plan(spec)
    assert plan["privacy_unit"] == "subject" and plan["units"] == 80 and plan["records"] == 230
    assert plan["sample_rate"] == pytest.approx(20 / 80) and plan["delta"] == pytest.approx(1 / 800)
    assert plan["unit_counts"]["records_per_subject"] == {"4": 50}
    entry = privacy_finetune.reserve_privacy_budget("run-subject", cfg, spec, dataset_rev="rev1", plan=plan)
    assert entry.unit == "subject"
    assert ledger.summary("test-records")["unit"] == "subject"
