"""Release steps after evaluation: gates, the reviewer's summary, promotion, the decision record.

A registered version starts as `challenger`. The gates read the evaluation evidence; a
failing gate ends the run as "gated". When the run requires approval, a person decides
in Airflow's Required Actions view (HITL) from `approval_body`; approval (or the gates
alone when approval is off) moves `champion`; a rejection is recorded on the version
with the reviewer's name and comment. Each step refreshes the version's model card.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

from tasks.config import Paths, PipelineConfig

log = logging.getLogger("tasks.release.decision")

REPORTS_URL_PREFIX = "/privatetune/reports"  # served by plugins/privatetune_reports.py inside the Airflow api-server


def report_url(dag_id: str, run_id: str, *, base_url: str = "") -> str:
    return f"{base_url.rstrip('/')}{REPORTS_URL_PREFIX}/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def _ci(ci: list | None) -> str:
    """' (95% CI lo–hi)' for an interval, nothing for a run evaluated before intervals existed."""
    return f" (95% CI {_num(ci[0])}–{_num(ci[1])})" if ci else ""


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def approval_body(*, evaluated: dict, gates: dict, registered: dict, trained: dict, report_link: str) -> str:
    """The Markdown a reviewer reads in the Required Actions view: figures only, no record text."""
    champ = evaluated.get("champion") or {}
    rows = [
        ("exact match", "exact_match"),
        ("token F1", "f1"),
        ("relevance", "relevance"),
    ]
    lines = [
        f"**{registered['model_name']} v{registered['version']}** (alias `challenger`) asks to become `champion`.",
        "",
        f"[Full evaluation report (HELM-style table, plots, gates)]({report_link})",
        "",
        "| metric | base | fine-tuned | champion |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        lines.append(
            f"| {label} | {_num(evaluated['base'].get(key))} | {_num(evaluated['finetuned'].get(key))} | "
            f"{_num(champ.get(key)) if champ else '—'} |"
        )
    privacy = (
        "non-private (dp: false)"
        if not trained.get("dp")
        else f"ε = {_num(trained.get('epsilon'))} per {trained.get('privacy_unit') or 'record'}, "
        f"δ = {trained.get('delta'):.2e}"
    )
    ledger = trained.get("privacy_ledger") or {}
    composed = f" ({ledger['composed']}; basic sum {_num(ledger.get('basic_epsilon'))})" if "composed" in ledger else ""
    lines += [
        "",
        f"- training: {trained.get('method')}, {trained.get('trainable_pct')} % trainable, {privacy}; "
        f"ledger ε spent {_num(ledger.get('spent_epsilon'))}{composed} of {_num(ledger.get('epsilon_budget'))}",
        *_split_lines(evaluated.get("qa_splits")),
        f"- toxicity rate {_num(evaluated.get('toxicity_rate'))}, identity gap {_num(evaluated.get('identity_gap'))}",
        f"- PII leaks {_num(evaluated.get('pii_leaks'))}, canary exposure {_num(evaluated.get('canary_exposure_max'), 2)} bits, "
        f"MIA AUC {_num(evaluated.get('mia_auc'))}{_ci(evaluated.get('mia_auc_ci'))} per {evaluated.get('mia_unit') or 'record'}",
        "",
        "| gate | value | threshold | status |",
        "|---|---|---|---|",
    ]
    for g in gates["gates"]:
        lines.append(f"| {g['name']} | {_num(g['value'])} | {_num(g['threshold'])} | {g['status']} |")
    lines += [
        "",
        "Approve to promote it to `champion`; Reject keeps the current champion. "
        "Your comment is recorded on the model version and in its model card.",
    ]
    return "\n".join(lines)


def _split_lines(splits: dict | None) -> list[str]:
    """The reviewer's view of the QA splits: the test split's EM (reported only) and the validation verdict."""
    if not isinstance(splits, dict) or not {"validation", "test"} <= set(splits):
        return []
    from tasks.eval.split_figures import interval_text, versus_base

    test = splits["test"]
    return [
        f"- test split, reported only ({test['n']} questions, 95% CI): EM base {interval_text(test['base']['exact_match'])}"
        f" → fine-tuned {interval_text(test['finetuned']['exact_match'])}, "
        f"gain {interval_text(test['gain']['exact_match'], signed=True)}",
        f"- fine-tuned vs base: {versus_base(splits['validation'])}",
    ]


def decision_from_approval(approval: dict | None) -> dict:
    """Normalise the ApprovalOperator's XCom (or None: approval not required) into the recorded decision."""
    if not approval:
        return {"outcome": "promoted", "approval": "gates-only", "by": None, "at": None, "comment": None}
    chosen = (approval.get("chosen_options") or [None])[0]
    user = approval.get("responded_by_user") or {}
    at = approval.get("responded_at")
    return {
        "outcome": "promoted" if chosen == "Approve" else "rejected",
        "approval": "approved" if chosen == "Approve" else "rejected",
        "by": user.get("name") or user.get("id"),
        "at": str(at) if at is not None else None,
        "comment": ((approval.get("params_input") or {}).get("comment") or None),
    }


def model_card_facts(run_dir: Path, cfg: PipelineConfig) -> dict:
    """Everything the model card states, read from the run's stage files (figures, ids, revisions)."""
    from tasks.release.masking_benchmark import masking_facts

    stages = run_dir / "stages"

    def stage(name: str) -> dict:
        path = stages / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    prepared, versioned, trained, masked = stage("prepare"), stage("version"), stage("train"), stage("mask")
    evaluated, gates, decision, registered = stage("evaluate"), stage("gates"), stage("decision"), stage("register")
    return {
        "model_name": registered.get("model_name"),
        "version": registered.get("version"),
        "pipeline_run_id": prepared.get("run_id"),
        "mlflow_run_id": trained.get("mlflow_run_id"),
        "source_dataset": cfg.privacy.source_dataset,
        "max_grad_norm": cfg.train.max_grad_norm,
        "accountant": (trained.get("privacy_ledger") or {}).get("accountant") or trained.get("accountant"),
        "masking": {k: masked.get(k) for k in ("entities_total", "residual_records")} if masked else None,
        "masking_profile": masking_facts(cfg.mask.profile, cfg.mask.recognizers),
        "base_model": prepared.get("base_model_dir") and Path(prepared["base_model_dir"]).name,
        "base_model_source": prepared.get("base_model_source"),
        "base_model_sha256": prepared.get("base_model_sha256"),
        "noise_source": trained.get("noise_source"),
        "method": trained.get("method"),
        "trainable_pct": trained.get("trainable_pct"),
        "trainable_params": trained.get("trainable_params"),
        "total_params": trained.get("total_params"),
        "dataset_rev": versioned.get("dataset_rev"),
        "dataset_md5": versioned.get("dvc_md5"),
        "dataset_tag": versioned.get("tag"),
        "records_trained": (trained.get("split") or {}).get("train_records"),
        "audit_holdout_records": (trained.get("split") or {}).get("holdout_records"),
        "qa_validation_sha256": evaluated.get("qa_validation_sha256"),
        "qa_test_sha256": evaluated.get("qa_test_sha256"),
        "qa_splits": evaluated.get("qa_splits"),
        "dp": trained.get("dp"),
        "epsilon": trained.get("epsilon"),
        "privacy_unit": trained.get("privacy_unit") or "record",  # what ε is per (train results before units: record)
        "subjects": trained.get("subjects"),  # counts only: subjects, records per subject, records without one
        "target_epsilon": cfg.train.target_epsilon,
        "noise_multiplier": trained.get("noise_multiplier"),
        "privacy_ledger": trained.get("privacy_ledger"),
        "metrics": {name: evaluated.get(name) for name in ("base", "finetuned", "champion") if evaluated.get(name)},
        "scenarios": evaluated.get("scenarios"),
        "safety": {
            k: evaluated.get(k)
            for k in ("toxicity_rate", "identity_gap", "pii_leaks", "canary_exposure_max", "mia_auc", "mia_unit")
        },
        "champion_version": evaluated.get("champion_version"),
        "gates": gates.get("gates"),
        "gates_status": gates.get("status"),
        "decision": decision or None,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def refresh_model_card(paths: Paths, run_dir: Path, cfg: PipelineConfig) -> dict | None:
    """Render the card from the run's facts and attach it to the registered version (description + artifact)."""
    from tasks.release.model_card import attach_model_card, render_model_card

    facts = model_card_facts(run_dir, cfg)
    if facts["version"] is None:
        return None
    markdown = render_model_card(facts)
    (run_dir / "model_card.md").write_text(markdown, encoding="utf-8")
    return attach_model_card(
        paths=paths, model_name=facts["model_name"], version=int(facts["version"]), markdown=markdown
    )
