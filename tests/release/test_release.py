"""Release steps: the reviewer's summary, the decision record, the model card facts."""

from __future__ import annotations

import json

from tasks.config import PipelineConfig
from tasks.release.decision import approval_body, decision_from_approval, model_card_facts, report_url

EVALUATED = {
    "base": {"exact_match": 0.1, "f1": 0.2, "relevance": 0.5},
    "finetuned": {"exact_match": 0.2, "f1": 0.3, "relevance": 0.6},
    "champion": None,
    "toxicity_rate": 0.0,
    "identity_gap": 0.01,
    "pii_leaks": 0,
    "canary_exposure_max": 2.5,
    "mia_auc": 0.51,
}
GATES = {
    "status": "passed",
    "gates": [
        {"name": "pii_leaks", "value": 0.0, "threshold": 0.0, "status": "passed"},
        {"name": "champion_regression", "value": None, "threshold": 0.05, "status": "not measured"},
    ],
}
TRAINED = {
    "dp": True,
    "epsilon": 7.9,
    "delta": 2.5e-5,
    "method": "lora",
    "trainable_pct": 2.4,
    "privacy_ledger": {"spent_epsilon": 7.99, "epsilon_budget": 80.0},
}


def test_report_url_escapes_the_run_id():
    url = report_url("privacy_finetune", "manual__2026-11-29T05:50:53+00:00", base_url="http://airflow:8080/")
    assert url == "http://airflow:8080/privatetune/reports/privacy_finetune/manual__2026-11-29T05%3A50%3A53%2B00%3A00"


def test_approval_body_holds_figures_gates_and_the_link():
    body = approval_body(
        evaluated=EVALUATED,
        gates=GATES,
        registered={"model_name": "m", "version": 7},
        trained=TRAINED,
        report_link="http://x/report",
    )
    assert body.startswith("**m v7**") and "(http://x/report)" in body
    assert "| exact match | 0.100 | 0.200 | — |" in body
    assert "| champion_regression | — | 0.050 | not measured |" in body
    # every ε and the MIA name their unit; results from before units are per record
    assert "ε = 7.900 per record" in body and "PII leaks 0" in body and "MIA AUC 0.510 per record\n" in body
    assert "ledger ε spent 7.990 of 80.000" in body  # a ledger summary from before tight composition


def test_approval_body_shows_the_mia_auc_with_its_ci():
    evaluated = {**EVALUATED, "mia_auc": 0.52, "mia_auc_ci": [0.48, 0.56], "mia_score": "min_k"}
    body = approval_body(
        evaluated=evaluated, gates=GATES, registered={"model_name": "m", "version": 7}, trained=TRAINED, report_link="x"
    )
    assert "MIA AUC 0.520 (95% CI 0.480–0.560)" in body


def test_approval_body_shows_the_tight_ledger_figure_beside_the_basic_sum():
    ledger = {
        "spent_epsilon": 15.391,
        "basic_epsilon": 79.92,
        "composed": "PRV accountant over 10 mechanism(s)",
        "epsilon_budget": 80.0,
    }
    body = approval_body(
        evaluated=EVALUATED,
        gates=GATES,
        registered={"model_name": "m", "version": 7},
        trained={**TRAINED, "privacy_ledger": ledger},
        report_link="http://x/report",
    )
    assert "ledger ε spent 15.391 (PRV accountant over 10 mechanism(s); basic sum 79.920) of 80.000" in body


def test_approval_body_shows_the_test_split_and_the_verdict_against_base():
    from tasks.eval.split_figures import split_figures

    rows = [{"bucket": "common"}] * 320

    def scores(correct: int) -> dict:
        em = [1.0] * correct + [0.0] * (320 - correct)
        return {"exact_match": em, "f1": em}

    splits = {
        "validation": split_figures(rows, scores(90), scores(60)),
        "test": split_figures(rows, scores(30), scores(46)),
    }
    body = approval_body(
        evaluated={**EVALUATED, "qa_splits": splits},
        gates=GATES,
        registered={"model_name": "m", "version": 7},
        trained=TRAINED,
        report_link="http://x/report",
    )
    assert "- test split, reported only (320 questions, 95% CI): EM base 0.093 [" in body
    assert "- fine-tuned vs base: worse than base beyond noise on validation" in body


def test_decision_from_approval_and_rejection():
    assert decision_from_approval(None) == {
        "outcome": "promoted",
        "approval": "gates-only",
        "by": None,
        "at": None,
        "comment": None,
    }
    approved = decision_from_approval(
        {
            "chosen_options": ["Approve"],
            "params_input": {"comment": "ok"},
            "responded_at": "2026-11-29T06:00:00+00:00",
            "responded_by_user": {"id": "u1", "name": "alice"},
        }
    )
    assert approved == {
        "outcome": "promoted",
        "approval": "approved",
        "by": "alice",
        "at": "2026-11-29T06:00:00+00:00",
        "comment": "ok",
    }
    rejected = decision_from_approval(
        {"chosen_options": ["Reject"], "params_input": {"comment": ""}, "responded_by_user": {"id": "bob"}}
    )
    assert rejected["outcome"] == "rejected" and rejected["by"] == "bob" and rejected["comment"] is None


def test_model_card_facts_read_the_stage_files(tmp_path):
    stages = tmp_path / "stages"
    stages.mkdir()
    for name, payload in {
        "prepare": {"run_id": "r1", "base_model_dir": "/m/base-demo"},
        "version": {"dataset_rev": "abc123", "dvc_md5": "d41d"},
        "train": {**TRAINED, "split": {"train_records": 95, "holdout_records": 5}},
        "evaluate": EVALUATED,
        "gates": GATES,
        "register": {"model_name": "m", "version": 7},
    }.items():
        (stages / f"{name}.json").write_text(json.dumps(payload))
    facts = model_card_facts(tmp_path, PipelineConfig())
    assert facts["version"] == 7 and facts["base_model"] == "base-demo" and facts["dataset_rev"] == "abc123"
    assert facts["records_trained"] == 95 and facts["gates_status"] == "passed" and facts["decision"] is None
    assert facts["metrics"]["finetuned"]["exact_match"] == 0.2 and "champion" not in facts["metrics"]

    from tasks.release.model_card import render_model_card

    card = render_model_card(facts)
    assert "abc123" in card and "not recorded" in card  # no decision yet
    assert facts["masking_profile"]["profile"] == PipelineConfig().mask.profile and "| masking profile |" in card
