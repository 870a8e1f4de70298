"""The run's note in the Airflow UI: the report's summary, set when a PrivateTune DAG run ends.

An Airflow listener (registered by plugins/privatetune_reports.py). It runs in the scheduler
(or `dag.test()`) inside the session that records the run's final state, so the note is
written in the same transaction; it never fails the run. The note holds ids, counts and
metrics from the report, never record text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.listeners import hookimpl

log = logging.getLogger("tasks.airflow.run_notes")

DAG_IDS = ("privacy_finetune", "monthly_refinetune")
NOTE_LIMIT = 1000  # dag_run_note.content is a String(1000)


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("—" if value is None else str(value))


def note_for(run_dir: Path, dag_id: str, run_id: str, state: str) -> str:
    """A few lines for the run's Notes panel: outcome, model, quality, privacy, month, report link."""
    from tasks.release.decision import report_url
    from tasks.release.report import build_report

    report = build_report(run_dir)
    ev, tr, reg = report.get("evaluate") or {}, report.get("train") or {}, report.get("register") or {}
    failed = [s for s, status in report["stages"].items() if status == "not run"]
    lines = [
        f"PrivateTune: {report['outcome'].upper()}"
        + (f" — {reg.get('model_name')} v{reg.get('version')}" if reg else "")
        + (" is champion" if report["outcome"] == "promoted" else "")
    ]
    if report["outcome"] == "gated":
        lines.append("gates: " + "; ".join((report.get("gates") or {}).get("reasons") or [])[:300])
    if ev:
        lines.append(
            f"exact match {_fmt((ev.get('finetuned') or {}).get('exact_match'))} "
            f"(base {_fmt((ev.get('base') or {}).get('exact_match'))}); PII leaks {_fmt(ev.get('pii_leaks'))}; "
            f"MIA AUC {_fmt(ev.get('mia_auc'))}"
        )
    if tr:
        lines.append(
            f"privacy: ε {_fmt(tr.get('epsilon'))}, δ {_fmt(tr.get('delta'), 6) if isinstance(tr.get('delta'), float) else '—'}"
            f"{'; replayed, not retrained' if tr.get('reused') else ''}"
        )
    built = report.get("dataset")
    if isinstance(built, dict):
        retired = ", ".join(f"v{r['version']}" for r in built.get("retired_versions") or []) or "none"
        lines.append(
            f"month {built.get('month')}: {built.get('records')} records "
            f"(+{built.get('new_records')} new, −{built.get('erased_records')} erased); retired: {retired}"
        )
    if state != "success" and failed:
        lines.append("not run: " + ", ".join(failed))
    lines.append(f"report: {report_url(dag_id, run_id)}")
    note = "\n".join(lines)
    return note if len(note) <= NOTE_LIMIT else note[: NOTE_LIMIT - 1] + "…"


def _set_note(dag_run, state: str) -> None:
    if dag_run.dag_id not in DAG_IDS:
        return
    try:
        from tasks.config import Paths

        run_dir = Paths().run_dir(dag_run.run_id)
        if not (run_dir / "stages").is_dir():
            return  # nothing ran far enough to say anything
        if dag_run.note:  # a person's note wins
            return
        dag_run.note = note_for(run_dir, dag_run.dag_id, dag_run.run_id, state)
    except Exception as exc:  # a note must never disturb the scheduler
        log.warning("run note for %s %s not set: %s", dag_run.dag_id, dag_run.run_id, type(exc).__name__)


@hookimpl
def on_dag_run_success(dag_run, msg: str):
    _set_note(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run, msg: str):
    _set_note(dag_run, "failed")
