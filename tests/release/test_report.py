from __future__ import annotations

import json

from tasks.release.report import REQUIRED_FIELDS, build_report, summary_lines, write_report


def _stage(run_dir, name, payload):
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    (run_dir / "stages" / f"{name}.json").write_text(json.dumps(payload))


def test_incomplete_run_names_missing_fields(tmp_path):
    _stage(tmp_path, "ingest", {"rows_in": 3, "rows_valid": 2, "rows_quarantined": 1})
    report = build_report(tmp_path)
    assert report["complete"] is False
    assert "ingest.rows_in" not in report["missing_fields"]
    assert "train.epsilon" in report["missing_fields"]
    assert report["stages"]["ingest"] == "completed" and report["stages"]["train"] == "not run"


def _complete_run(run_dir, *, gates_status="passed", decision=None, worse_than_base=None):
    _stage(run_dir, "prepare", {"run_id": "r1"})
    _stage(run_dir, "ingest", {"rows_in": 3, "rows_valid": 2, "rows_quarantined": 1})
    _stage(run_dir, "validate", {"success": True, "evaluated_expectations": 13})
    _stage(run_dir, "mask", {"entities": {"PERSON": 2}, "entities_total": 2})
    _stage(run_dir, "version", {"dataset_rev": "abc", "dvc_md5": "d41d"})
    _stage(
        run_dir,
        "train",
        {"method": "lora", "dp": True, "epsilon": 7.9, "target_epsilon": 8.0, "delta": 1e-4, "trainable_pct": 1.5},
    )
    _stage(
        run_dir,
        "evaluate",
        {
            "base": {"exact_match": 0.1, "f1": 0.2, "relevance": 0.4},
            "finetuned": {"exact_match": 0.5, "f1": 0.6, "relevance": 0.7},
            "champion": {"exact_match": 0.45, "f1": 0.5, "relevance": 0.6},
            "champion_version": 3,
            "toxicity_rate": 0.0,
            "pii_leaks": 0,
            "mia_auc": 0.52,
            "mia_auc_ci": [0.48, 0.56],
            "mia_score": "reference",
            "mia_best_auc": {"score": "min_k", "auc": 0.54},
            "canary_exposure_max": 1.5,
            "helm_html": "/x/helm.html",
            **({"worse_than_base": worse_than_base} if worse_than_base is not None else {}),
        },
    )
    _stage(run_dir, "register", {"model_name": "m", "version": 4, "alias": "challenger"})
    gate_rows = [
        {"name": "pii_leaks", "value": 0, "threshold": 0, "status": "passed"},
        {"name": "canary_exposure", "value": None, "threshold": 6, "status": "not measured"},
    ]
    if gates_status == "gated":
        gate_rows.append({"name": "toxicity", "value": 0.3, "threshold": 0.05, "status": "failed"})
    _stage(
        run_dir,
        "gates",
        {
            "status": gates_status,
            "gates": gate_rows,
            "require_approval": True,
            "reasons": ["toxicity: share of toxic generations is 0.3, must be at most 0.05"]
            if gates_status == "gated"
            else [],
        },
    )
    if decision:
        _stage(run_dir, "decision", decision)


def test_complete_report_and_summary(tmp_path):
    _complete_run(
        tmp_path,
        decision={
            "outcome": "promoted",
            "approval": "approved",
            "by": "alice",
            "at": "2026-11-29T06:00:00Z",
            "comment": "looks good",
        },
    )
    result = write_report(tmp_path)
    assert result["complete"] is True and result["missing_fields"] == [] and result["outcome"] == "promoted"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["train"]["epsilon"] == 7.9
    text = "\n".join(summary_lines(report))
    assert "ε = 7.9" in text and "base 0.1 → fine-tuned 0.5 (champion v3 0.45)" in text and "m v4" in text
    assert "promoted by alice at 2026-11-29T06:00:00Z — “looks good”" in text
    assert (
        "PII leaks 0" in text
        and "not measured: canary_exposure" in text
        and "m v4 (alias challenger, now champion)" in text
    )
    assert "MIA AUC 0.52 (95% CI 0.480–0.560, reference score); strongest score min_k 0.540" in text
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# PrivateTune run report — r1") and "## Promotion gates: passed" in md


def test_gated_run_reports_its_reasons(tmp_path):
    _complete_run(tmp_path, gates_status="gated")
    report = build_report(tmp_path)
    assert report["outcome"] == "gated" and report["complete"] is False
    text = "\n".join(summary_lines(report))
    assert "GATED: toxicity" in text and "outcome             gated" in text


def test_awaiting_approval_and_rejection(tmp_path):
    _complete_run(tmp_path)
    assert build_report(tmp_path)["outcome"] == "awaiting approval"
    _stage(
        tmp_path,
        "decision",
        {"outcome": "rejected", "approval": "rejected", "by": "bob", "at": None, "comment": "not enough gain"},
    )
    report = build_report(tmp_path)
    assert report["outcome"] == "rejected" and report["complete"] is True
    assert "rejected by bob — “not enough gain”" in "\n".join(summary_lines(report))
    assert "decision.outcome" in REQUIRED_FIELDS


TYPO_FLAG = {
    "scenario": "robustness",
    "metric": "exact_match_typo",
    "delta": -0.375,
    "ci_low": -0.525,
    "ci_high": -0.225,
    "n": 40,
    "higher_is_better": True,
}
GAP_FLAG = {
    "scenario": "fairness",
    "metric": "exact_match_gap",
    "delta": 0.375,
    "ci_low": 0.225,
    "ci_high": 0.525,
    "n": 40,
    "higher_is_better": False,
}


def test_metrics_worse_than_base_beyond_noise_are_flagged(tmp_path):
    _complete_run(tmp_path, worse_than_base=[TYPO_FLAG, GAP_FLAG])
    write_report(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["evaluate"]["worse_than_base"] == [TYPO_FLAG, GAP_FLAG]  # machine-readable
    line = next(x for x in summary_lines(report) if x.startswith("HELM vs base"))
    assert "⚠ worse than base beyond noise" in line
    assert "robustness.exact_match_typo Δ -0.375 [-0.525, -0.225]" in line
    assert "fairness.exact_match_gap Δ +0.375 [+0.225, +0.525] (lower is better)" in line
    md = (tmp_path / "report.md").read_text()
    assert "## ⚠ worse than base beyond noise" in md
    assert "| robustness | exact_match_typo | higher | -0.375 | [-0.525, -0.225] |" in md


def test_no_flag_when_nothing_is_worse_beyond_noise(tmp_path):
    _complete_run(tmp_path, worse_than_base=[])
    write_report(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    line = next(x for x in summary_lines(report) if x.startswith("HELM vs base"))
    assert "no scenario metric worse than base beyond noise" in line and "⚠" not in line
    assert "⚠" not in (tmp_path / "report.md").read_text()


def test_the_ledger_line_shows_the_tight_figure_with_its_accountant_and_the_basic_sum():
    ledger = {
        "source_dataset": "harborview-records",
        "runs": 10,
        "unit": "record",
        "spent_epsilon": 15.391,
        "spent_delta": 7.143e-5,
        "composition_accountant": "prv",
        "composed": "PRV accountant over 10 mechanism(s)",
        "basic_epsilon": 79.92,
        "epsilon_budget": 80.0,
    }
    [line] = [x for x in summary_lines({"train": {"privacy_ledger": ledger}}) if x.startswith("privacy ledger")]
    assert line.endswith(
        "harborview-records: ε spent 15.39 (PRV accountant over 10 mechanism(s), at δ 7.143e-05; basic sum 79.92) "
        "of 80 over 10 run(s), unit record; erasure refunds no budget"
    )
    # a report.json written before the ledger composed tightly keeps saying what it was
    old = {"source_dataset": "h", "runs": 1, "spent_epsilon": 7.993, "spent_delta": 7e-6, "epsilon_budget": 80.0}
    [line] = [x for x in summary_lines({"train": {"privacy_ledger": old}}) if x.startswith("privacy ledger")]
    assert line.endswith("h: ε spent 7.993 of 80 over 1 run(s), δ spent 7e-06 (basic composition)")


def test_a_report_from_before_the_calibrated_mia_still_shows_its_auc(tmp_path):
    _complete_run(tmp_path)
    evaluate = json.loads((tmp_path / "stages" / "evaluate.json").read_text())
    for key in ("mia_auc_ci", "mia_score", "mia_best_auc"):
        del evaluate[key]
    _stage(tmp_path, "evaluate", evaluate)
    text = "\n".join(summary_lines(build_report(tmp_path)))
    assert "canary exposure 1.5 bits, MIA AUC 0.52\n" in text + "\n"


def test_the_privacy_line_says_its_unit_and_subject_counts_are_shown():
    train = {"dp": True, "epsilon": 7.9, "delta": 2.5e-5, "target_epsilon": 8.0}
    [line] = [x for x in summary_lines({"train": train}) if x.startswith("privacy  ")]
    assert "ε = 7.9 per record" in line  # a result from before units existed is record-level
    subjects = {
        "records": 60,
        "subjects": 20,
        "records_without_subject": 10,
        "records_per_subject": {"1": 12, "13": 3, "2": 5},  # as JSON sorts them: shown by count
        "subject_max_records": 2,
        "records_beyond_k": 36,
    }
    text = "\n".join(summary_lines({"train": {**train, "privacy_unit": "subject", "subjects": subjects}}))
    assert "ε = 7.9 per subject" in text
    assert "20 subjects + 10 record(s) without a subject" in text and "{1: 12, 2: 5, 13: 3}" in text
