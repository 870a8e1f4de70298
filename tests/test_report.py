from __future__ import annotations

import json

from tasks.report import REQUIRED_FIELDS, build_report, summary_lines, write_report


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


def test_complete_report_and_summary(tmp_path):
    _stage(tmp_path, "prepare", {"run_id": "r1"})
    _stage(tmp_path, "ingest", {"rows_in": 3, "rows_valid": 2, "rows_quarantined": 1})
    _stage(tmp_path, "validate", {"success": True, "evaluated_expectations": 13})
    _stage(tmp_path, "mask", {"entities": {"PERSON": 2}, "entities_total": 2})
    _stage(tmp_path, "version", {"dataset_rev": "abc", "dvc_md5": "d41d"})
    _stage(tmp_path, "train", {"method": "lora", "dp": True, "epsilon": 7.9, "target_epsilon": 8.0, "delta": 1e-4,
                               "trainable_pct": 1.5})
    _stage(tmp_path, "evaluate", {"base": {"exact_match": 0.1, "f1": 0.2}, "finetuned": {"exact_match": 0.5, "f1": 0.6},
                                  "toxicity_rate": 0.0})
    _stage(tmp_path, "register", {"model_name": "m", "version": 1, "alias": "challenger"})
    result = write_report(tmp_path)
    assert result["complete"] is True and result["missing_fields"] == []
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(REQUIRED_FIELDS) == 17 and report["train"]["epsilon"] == 7.9
    text = "\n".join(summary_lines(report))
    assert "ε = 7.9" in text and "base 0.1 → fine-tuned 0.5" in text and "m v1" in text
    assert (tmp_path / "report.md").read_text().startswith("# PrivateTune run report — r1")
