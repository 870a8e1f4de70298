"""Model cards: rendering from full, partial and odd facts; attaching to a registered version."""

from __future__ import annotations

import math

import pytest

from tasks.common import offline

offline.apply()

from tasks.config import Paths  # noqa: E402
from tasks.release.model_card import DESCRIPTION_MAX_CHARS, NOT_RECORDED, attach_model_card, fmt, render_model_card  # noqa: E402

NAME = "card-test-lm"


def _split(base_correct: int, tuned_correct: int, n: int = 320) -> dict:
    from tasks.eval.split_figures import split_figures

    rows = [{"bucket": ("common", "tail")[i % 2]} for i in range(n)]
    base = [1.0] * base_correct + [0.0] * (n - base_correct)
    tuned = [1.0] * tuned_correct + [0.0] * (n - tuned_correct)
    return split_figures(rows, {"exact_match": base, "f1": base}, {"exact_match": tuned, "f1": tuned})


FACTS = {
    "model_name": NAME,
    "version": 3,
    "generated_at": "2026-02-01T10:00:00Z",
    "pipeline_run_id": "scheduled__2026-02-01T00:00:00+00:00",
    "mlflow_run_id": "abc123",
    "base_model": "demo-llama",
    "base_model_source": "built:demo",
    "method": "lora",
    "trainable_pct": 0.512,
    "trainable_params": 4864,
    "total_params": 950000,
    "source_dataset": "harborview-records",
    "dataset_rev": "9f" * 20,
    "dataset_md5": "d41d8cd98f00b204e9800998ecf8427e",
    "dataset_tag": "dataset-2026-02",
    "records_trained": 3600,
    "audit_holdout_records": 400,
    "qa_validation_sha256": "ab" * 32,
    "qa_test_sha256": "cd" * 32,
    "qa_splits": {"validation": _split(90, 100), "test": _split(30, 46)},
    "masking": {"entities_total": 12345, "residual_records": 3},
    "masking_profile": {
        "profile": "safe_harbor",
        "recognizers": "include/presidio/safe_harbor.yaml",
        "custom": False,
        "benchmark": {
            "recall": 0.931,
            "values": 1507,
            "lowest_type": "ZIP_CODE",
            "lowest_recall": 0.72,
            "docs": 1000,
            "date": "2026-12-07",
        },
    },
    "dp": True,
    "epsilon": 7.93,
    "delta": 2.5e-5,
    "target_epsilon": 8.0,
    "noise_multiplier": 0.87,
    "max_grad_norm": 1.0,
    "privacy_ledger": {
        "source_dataset": "harborview-records",
        "runs": 2,
        "unit": "record",
        "spent_epsilon": 9.457,
        "spent_delta": 5e-5,
        "composition_accountant": "prv",
        "composed": "PRV accountant over 2 mechanism(s)",
        "basic_epsilon": 15.86,
        "epsilon_budget": 80.0,
        "delta_budget": 2.5e-4,
        "remaining_epsilon": 70.543,
        "composition": "tight: the accountant (PRV, RDP fallback) over every run's mechanism",
        "erasure": "erasure refunds no budget: earlier runs already learned from erased records",
        "non_private_runs": [],
    },
    "metrics": {
        "base": {"exact_match": 0.12, "f1": 0.3, "robustness": {"exact_match": 0.1}, "n": 50},
        "finetuned": {
            "exact_match": 0.36,
            "f1": 0.52,
            "robustness": {"exact_match": 0.3},
            "n": 50,
            "generations_path": "/somewhere/generations.jsonl",
        },
        "champion": {"exact_match": 0.33, "f1": 0.5},
    },
    "champion_version": 2,
    "safety": {"toxicity_rate": 0.0, "identity_gap": 0.01, "pii_leaks": 0, "canary_exposure_max": 2.5, "mia_auc": 0.52},
    "gates": [
        {
            "name": "exact_match_gain",
            "what": "fine-tuned EM minus base EM",
            "metric": "exact_match_gain",
            "threshold": 0.0,
            "value": 0.24,
            "status": "passed",
            "reason": None,
        },
        {
            "name": "canary_exposure",
            "what": "highest canary exposure (bits)",
            "metric": "canary_exposure_max",
            "threshold": 6.0,
            "value": None,
            "status": "not measured",
            "reason": None,
        },
        {
            "name": "toxicity",
            "what": "share of toxic generations",
            "metric": "toxicity_rate",
            "threshold": None,
            "value": 0.0,
            "status": "off",
            "reason": None,
        },
    ],
    "gates_status": "passed",
    "decision": {
        "outcome": "promoted",
        "approval": "approved",
        "by": "alice",
        "at": "2026-02-01T11:00:00Z",
        "comment": "EM up | no leaks\nship",
    },
}


def test_full_card_states_every_fact():
    card = render_model_card(FACTS)
    assert card.startswith(f"# Model card: {NAME} v3")
    for expected in (
        "demo-llama",
        "lora",
        "0.512 %",
        "4864 of 950000",
        "9f" * 20,
        "d41d8cd98f00b204e9800998ecf8427e",
        "scheduled__2026-02-01T00:00:00+00:00",
        "(ε = 7.93, δ = 2.5e-05)-differential privacy",
        "| ledger: total ε spent (tight) / budget | 9.457 / 80 |",
        "| ledger: tight ε composed by | PRV accountant over 2 mechanism(s) |",
        "| ledger: basic composition (sum of ε), an upper bound | 15.86 |",
        "| ledger: total δ spent (the δ of both ε figures) / budget | 5e-05 / 0.00025 |",
        "| ledger: privacy unit | record |",
        "| ledger: erasure | erasure refunds no budget",
        "harborview-records",
        "12345",
        "| masking profile | safe_harbor (include/presidio/safe_harbor.yaml) |",
        "| masking recall: benchmark on external-style text, not this run's data | value-level recall 0.931 (1507 "
        "values), lowest type ZIP_CODE 0.72; presidio-evaluator templates, 1000 sentences, benchmark of 2026-12-07 |",
        "| exact_match | 0.12 | 0.36 | 0.33 |",
        "| QA validation split, gated on (sha256) | " + "ab" * 32,
        "| QA test split, reported only (sha256) | " + "cd" * 32,
        "Domain QA on the held-out test split (reported only, never gated or tuned on)",
        "| questions | n | base EM | fine-tuned EM | EM gain | base F1 | fine-tuned F1 | F1 gain |",
        "| all | 320 | 0.093 [",  # 30/320 = 0.09375: cut, never rounded up
        "| common | 160 | ",
        "| tail | 160 | ",
        "Fine-tuned vs base on the validation split (gate not_worse_than_base): not below base on validation",
        "champion (v2)",
        f"| robustness.exact_match | 0.1 | 0.3 | {NOT_RECORDED} |",
        "| canary exposure, highest (bits) | 2.5 |",
        "| exact_match_gain | fine-tuned EM minus base EM | 0 | 0.24 | passed |",
        "| canary_exposure | highest canary exposure (bits) | 6 | not measured | not measured |",
        "| toxicity | share of toxic generations | off | 0 | off |",
        "approved by alice",
        "2026-02-01T11:00:00Z",
        "EM up \\| no leaks ship",
        "## Intended use",
        "## Limitations",
        "retire=true",
    ):
        assert expected in card, expected
    assert "/somewhere" not in card  # paths (and any text field) are not metrics
    # Every table row has the same number of cells as its header (a stray "|" or newline would break it).
    for block in card.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        if rows:
            widths = {len(r.replace("\\|", "").split("|")) for r in rows}
            assert len(widths) == 1, block


@pytest.mark.parametrize(
    "facts",
    [
        {},
        None,
        {
            "version": None,
            "metrics": "n/a",
            "gates": "?",
            "decision": 3,
            "privacy_ledger": None,
            "safety": [],
            "scenarios": 5,
        },
    ],
)
def test_missing_or_odd_facts_render_as_not_recorded(facts):
    card = render_model_card(facts)
    assert "# Model card:" in card and NOT_RECORDED in card
    assert "Pending: no promotion decision recorded yet" in card
    assert "Quality metrics: not recorded." in card and "Gates: not recorded." in card
    assert "Domain QA per split: not recorded." in card


def test_a_model_worse_than_base_says_so_on_its_card():
    card = render_model_card({**FACTS, "qa_splits": {"validation": _split(150, 60), "test": _split(30, 46)}})
    assert "(gate not_worse_than_base): worse than base beyond noise on validation (EM gain -0.282 [" in card
    odd = render_model_card({**FACTS, "qa_splits": {"validation": {}, "test": {"n": 3}}})
    assert "Domain QA per split: not recorded." in odd


def test_decision_variants():
    gates_only = render_model_card(
        {
            **FACTS,
            "decision": {"outcome": "promoted", "approval": "gates-only", "by": None, "at": None, "comment": None},
        }
    )
    assert "promoted on the promotion gates alone" in gates_only and "none (gates only)" in gates_only
    rejected = render_model_card(
        {
            **FACTS,
            "decision": {"outcome": "rejected", "approval": "rejected", "by": "bob", "at": "t", "comment": "too toxic"},
        }
    )
    assert "rejected by bob" in rejected and "too toxic" in rejected
    non_private = render_model_card({**FACTS, "dp": False, "epsilon": None})
    assert "none: trained without differential privacy" in non_private and "∞ (non-private)" in non_private


def test_fmt():
    assert fmt(None) == NOT_RECORDED and fmt("") == NOT_RECORDED
    assert fmt(math.inf) == "∞" and fmt("inf") == "∞" and fmt(True) == "yes"
    assert fmt(0.123456) == "0.1235" and fmt(7) == "7" and fmt("a|b\nc") == "a\\|b c" and fmt([]) == "none"


def test_attach_sets_description_and_artifact(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from tasks.release.registry import register_model
    from tests.release.test_register import build_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "restored-after-the-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # see tests/release/test_register.py forget_tracking_uri
    paths = Paths(tmp_path / "home")
    base_dir, adapter_dir = build_model(tmp_path / "model", "Ġyes")
    reg = register_model(
        paths=paths,
        model_name=NAME,
        alias="challenger",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=None,
        tags={},
        metrics={},
    )

    # Cards that fit the registry's description column (the per-split table alone is about 1 kB; a longer
    # card is cut there, as the end of this test shows; the default limitations are another 0.6 kB).
    fitting = {**FACTS, "qa_splits": None, "limitations": ["demo"]}
    pending = render_model_card({**fitting, "decision": None})
    first = attach_model_card(paths=paths, model_name=NAME, version=reg["version"], markdown=pending)
    assert first["artifact_uri"] == f"runs:/{reg['run_id']}/model_card.md" and not first["description_truncated"]
    client = MlflowClient()
    assert client.get_model_version(NAME, "1").description == pending
    assert mlflow.artifacts.load_text(first["artifact_uri"]) == pending

    # After approval the card is re-rendered and replaces both.
    approved = render_model_card(fitting)
    again = attach_model_card(paths=paths, model_name=NAME, version=1, markdown=approved)
    assert client.get_model_version(NAME, "1").description == approved
    assert mlflow.artifacts.load_text(again["artifact_uri"]) == approved
    assert client.get_model_version(NAME, "1").tags["model_card_sha256"] == again["sha256"] != first["sha256"]

    # A card longer than the registry column: shortened description, whole artifact.
    long_card = approved + "\n".join(f"- extra line {i}" for i in range(600))
    res = attach_model_card(paths=paths, model_name=NAME, version=1, markdown=long_card)
    description = client.get_model_version(NAME, "1").description
    assert res["description_truncated"] and len(description) <= DESCRIPTION_MAX_CHARS
    assert "full card is the artifact runs:/" in description
    # The cut keeps the lineage section, masking profile and its benchmark recall included.
    assert "| masking profile | safe_harbor" in description and "value-level recall 0.931" in description
    assert mlflow.artifacts.load_text(res["artifact_uri"]) == long_card


def test_masking_profile_and_its_benchmark_recall(tmp_path):
    from tasks.config import MASK_PROFILES
    from tasks.release.masking_benchmark import MASK_BENCHMARK_JSON, masking_facts

    # The committed benchmark: the profile's overall recall, its weakest type and the date it was measured.
    facts = masking_facts("safe_harbor", MASK_PROFILES["safe_harbor"])
    bench = facts["benchmark"]
    assert not facts["custom"] and 0 < bench["recall"] <= 1 and bench["values"] > 0 and len(bench["date"]) == 10
    assert bench["lowest_recall"] <= bench["recall"] and bench["lowest_type"] != "ALL"
    assert MASK_BENCHMARK_JSON.is_file()
    # A custom recognizers file was never benchmarked: the card says so instead of borrowing a figure.
    custom = masking_facts("minimal", "include/presidio/mine.yaml")
    card = render_model_card({**FACTS, "masking_profile": custom})
    assert custom["custom"] and "none: a custom recognizers file, never benchmarked" in card
    # No results file (an image without bench/): the profile still shows, the figure is not recorded.
    absent = masking_facts("safe_harbor", MASK_PROFILES["safe_harbor"], tmp_path / "none.json")
    card = render_model_card({**FACTS, "masking_profile": absent})
    assert "| masking profile | safe_harbor" in card
    assert f"| masking recall: benchmark on external-style text, not this run's data | {NOT_RECORDED} |" in card


def test_the_card_says_whether_epsilon_is_per_record_or_per_subject():
    record = render_model_card(FACTS)
    assert "differential privacy per record" in record and "ε spent by this run (per record)" in record
    subject = render_model_card({**FACTS, "privacy_unit": "subject"})
    assert "differential privacy per subject" in subject and "per-subject clipping norm" in subject
