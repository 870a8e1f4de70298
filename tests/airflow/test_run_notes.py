"""The run's note in the Airflow UI: built from the report, short, never record text."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tasks.airflow import run_notes


def _stage(run_dir: Path, name: str, data: dict) -> None:
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    (run_dir / "stages" / f"{name}.json").write_text(json.dumps(data))


def test_a_gated_run_says_why_and_links_the_report(tmp_path):
    run_dir = tmp_path / "runs" / "monthly-2026-03"
    _stage(run_dir, "prepare", {"run_id": "monthly-2026-03"})
    _stage(run_dir, "register", {"model_name": "m", "version": 7})
    _stage(
        run_dir,
        "evaluate",
        {"finetuned": {"exact_match": 0.25}, "base": {"exact_match": 0.2}, "pii_leaks": 3, "mia_auc": 0.51},
    )
    _stage(run_dir, "gates", {"status": "gated", "reasons": ["pii_leaks 3 > 0"]})
    _stage(
        run_dir,
        "dataset",
        {
            "month": "2026-03",
            "records": 447,
            "new_records": 150,
            "erased_records": 3,
            "retired_versions": [{"version": 1}, {"version": 2}],
        },
    )
    note = run_notes.note_for(run_dir, "monthly_refinetune", "backfill__2026-03-01T03:00:00+00:00", "failed")
    lines = note.splitlines()
    assert lines[0] == "PrivateTune: GATED — m v7"
    assert "gates: pii_leaks 3 > 0" in note and "exact match 0.250 (base 0.200); PII leaks 3" in note
    assert "month 2026-03: 447 records (+150 new, −3 erased); retired: v1, v2" in note
    assert "not run: " in note and "decision" in note
    assert lines[-1] == "report: /privatetune/reports/monthly_refinetune/backfill__2026-03-01T03%3A00%3A00%2B00%3A00"
    assert len(note) <= run_notes.NOTE_LIMIT


def test_the_listener_fills_an_empty_note_only_for_privatetune_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    _stage(tmp_path / "runs" / "manual_1", "prepare", {"run_id": "manual_1"})
    mine = SimpleNamespace(dag_id="privacy_finetune", run_id="manual_1", note=None)
    run_notes.on_dag_run_failed(dag_run=mine, msg="task_failure")
    assert mine.note.startswith("PrivateTune: FAILED")
    kept = SimpleNamespace(dag_id="privacy_finetune", run_id="manual_1", note="investigating — alice")
    run_notes.on_dag_run_success(dag_run=kept, msg="success")
    assert kept.note == "investigating — alice"  # a person's note wins
    other = SimpleNamespace(dag_id="someone_elses_dag", run_id="manual_1", note=None)
    run_notes.on_dag_run_success(dag_run=other, msg="success")
    assert other.note is None
