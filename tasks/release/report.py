"""The run report: `runs/<run>/report.json` and a readable `report.md`.

Built from the per-stage result files (`runs/<run>/stages/*.json`), so it is the same
whether the pipeline ran under Airflow, `dag.test()` or `python -m tasks.stages.privacy_finetune`.
Stage results hold only counts, paths, revisions and metrics, never record text.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tasks.eval.split_figures import TABLE_HEADER, interval_text, table_rows, versus_base

STAGE_ORDER = [
    "prepare",
    "ingest",
    "validate",
    "mask",
    "dataset",
    "version",
    "train",
    "evaluate",
    "register",
    "gates",
    "decision",
]

# The fields every complete run must report (dotted paths into report.json).
REQUIRED_FIELDS = [
    "ingest.rows_in",
    "ingest.rows_valid",
    "ingest.rows_quarantined",
    "validate.success",
    "mask.entities",
    "version.dataset_rev",
    "train.method",
    "train.epsilon",
    "train.delta",
    "train.trainable_pct",
    "evaluate.base.exact_match",
    "evaluate.finetuned.exact_match",
    "evaluate.base.f1",
    "evaluate.finetuned.f1",
    "evaluate.toxicity_rate",
    "evaluate.base.relevance",
    "evaluate.finetuned.relevance",
    "evaluate.pii_leaks",
    "evaluate.mia_auc",
    "evaluate.helm_html",
    "register.model_name",
    "register.version",
    "gates.status",
    "decision.outcome",
]


def outcome(report: dict) -> str:
    """promoted | rejected | gated | awaiting approval | failed: how the run ended for its model."""
    decision = report.get("decision") or {}
    if decision.get("outcome"):
        return decision["outcome"]
    gates = report.get("gates") or {}
    if gates.get("status") == "gated":
        return "gated"
    if gates.get("status") == "passed" and gates.get("require_approval"):
        return "awaiting approval"
    return "failed"


def lookup(report: dict, dotted: str):
    node = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def build_report(run_dir: Path) -> dict:
    stages_dir = run_dir / "stages"
    report: dict = {"run_id": None, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}
    for stage in STAGE_ORDER:
        path = stages_dir / f"{stage}.json"
        if path.exists():
            report[stage] = json.loads(path.read_text())
            report["stages"][stage] = "completed"
        else:
            report["stages"][stage] = "not run"
    report["run_id"] = report.get("prepare", {}).get("run_id", run_dir.name)
    missing = []
    for field in REQUIRED_FIELDS:
        try:
            lookup(report, field)
        except KeyError:
            missing.append(field)
    report["complete"] = not missing
    report["missing_fields"] = missing
    report["outcome"] = outcome(report)
    return report


def summary_lines(report: dict) -> list[str]:
    def get(field, default="—"):
        try:
            value = lookup(report, field)
        except KeyError:
            return default
        return round(value, 3) if isinstance(value, float) and field.startswith("evaluate.") else value

    entities = get("mask.entities", {}) or {}
    ent = ", ".join(f"{k} {v}" for k, v in sorted(entities.items(), key=lambda kv: -kv[1])) or "—"
    eps, delta, unit = get("train.epsilon"), get("train.delta"), get("train.privacy_unit", "record")
    privacy = (
        "non-private (dp: false)"
        if get("train.dp", True) is False
        else f"ε = {eps} per {unit} (target {get('train.target_epsilon')}), δ = {delta:.2e}"
        if isinstance(delta, float)
        else f"ε = {eps} per {unit}, δ = {delta}"
    )
    return [
        f"run                 {report.get('run_id')}",
        *_refused_lines(get("prepare.params_refused", None)),
        f"rows in/valid/quar. {get('ingest.rows_in')} / {get('ingest.rows_valid')} / {get('ingest.rows_quarantined')}",
        f"duplicates removed  {get('ingest.duplicates_removed')} (exact text, by content hash)",
        f"hostile input       {get('ingest.files_refused', 0)} symlinked file(s) refused; "
        f"{get('ingest.invisible_chars_removed', 0)} invisible character(s) removed from "
        f"{get('ingest.rows_with_invisible_chars', 0)} row(s) before masking",
        f"validation          {'passed' if get('validate.success', False) else 'FAILED'} "
        f"({get('validate.evaluated_expectations')} expectations)",
        f"drift vs previous   {_drift(get('validate.drift', None))}",
        f"GX Data Docs        {get('validate.data_docs_path')}",
        f"entities masked     {get('mask.entities_total')}: {ent}",
        *_monthly_lines(report),
        f"dataset revision    {str(get('version.dataset_rev'))[:12]} (md5 {get('version.dvc_md5')})"
        f"{' — unchanged, no new commit' if get('version.reused', False) else ''}",
        f"training            {get('train.method')}, {get('train.trainable_pct')}% trainable, {get('train.steps')} steps, "
        f"{get('train.train_seconds')} s",
        f"privacy             {privacy}",
        *_subject_lines(get("train.subjects", None)),
        f"privacy ledger      {_ledger(get('train.privacy_ledger', None))}",
        *[
            f"domain QA {label:<13}base {get('evaluate.base.' + key)} → fine-tuned {get('evaluate.finetuned.' + key)}"
            f"{_champion(report, key)}"
            for label, key in (("exact match", "exact_match"), ("F1", "f1"), ("relevance", "relevance"))
        ],
        f"answer loss (nats)  {_answer_loss(get('evaluate.answer_loss', None))}",
        *_split_lines(report),
        f"toxicity            rate {get('evaluate.toxicity_rate')} (base {get('evaluate.base_toxicity_rate')}), "
        f"identity gap {get('evaluate.identity_gap')}",
        f"privacy attacks     PII leaks {get('evaluate.pii_leaks')}, canary exposure "
        f"{get('evaluate.canary_exposure_max')} bits, {_mia(report.get('evaluate') or {})}",
        f"HELM-style report   {get('evaluate.helm_html')}",
        f"HELM vs base        {_worse_than_base(get('evaluate.worse_than_base', None))}",
        f"registered model    {get('register.model_name')} v{get('register.version')} (alias {get('register.alias')}"
        f"{', now champion' if get('decision.outcome', None) == 'promoted' else ''})",
        f"gates               {_gates(report.get('gates'))}",
        f"outcome             {_outcome_line(report)}",
    ]


def _mia(evaluated: dict) -> str:
    """The membership-inference AUC with its 95 % CI and the score it comes from (tasks.eval.mia)."""
    auc, ci = evaluated.get("mia_auc"), evaluated.get("mia_auc_ci")
    if auc is None:
        return "MIA AUC —"
    text = f"MIA AUC {round(auc, 3)}" + (f" per {evaluated['mia_unit']}" if evaluated.get("mia_unit") else "")
    if ci:
        text += f" (95% CI {ci[0]:.3f}–{ci[1]:.3f}, {evaluated.get('mia_score') or 'loss'} score)"
    best = evaluated.get("mia_best_auc")
    if isinstance(best, dict) and best.get("score") != evaluated.get("mia_score"):
        text += f"; strongest score {best['score']} {best['auc']:.3f}"
    return text


def _refused_lines(refused: list | None) -> list[str]:
    """Trigger Params that asked to loosen policy: named, with the value kept."""
    if not refused:
        return []
    asked = ", ".join(f"{r['param']}={json.dumps(r['asked'])} (kept {json.dumps(r['kept'])})" for r in refused)
    return [f"Params not applied  {asked}: policy is the deployment's config; a trigger may only tighten it"]


def _answer_loss(loss: dict | None) -> str:
    """Held-out answer loss, base → fine-tuned, and the paired difference with its 95% CI."""
    if not isinstance(loss, dict) or "finetuned_minus_base" not in loss:
        return "—"
    d = loss["finetuned_minus_base"]
    return (
        f"base {loss['base']['mean']:.3f} → fine-tuned {loss['finetuned']['mean']:.3f} "
        f"(Δ {d['mean']:+.3f}, 95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], {d['n']} questions)"
    )


WORSE_THAN_BASE_FLAG = "⚠ worse than base beyond noise"


def _worse_than_base(flags: list | None) -> str:
    """The HELM metrics where fine-tuned is worse than base beyond the noise (paired 95% CI wholly on the worse side)."""
    if flags is None:
        return "— (no per-question intervals in this run)"
    if not flags:
        return "no scenario metric worse than base beyond noise (paired 95% bootstrap CI)"
    return f"{WORSE_THAN_BASE_FLAG}: " + "; ".join(_flag_text(f) for f in flags)


def _flag_text(flag: dict) -> str:
    return (
        f"{flag['scenario']}.{flag['metric']} Δ {flag['delta']:+.3f} "
        f"[{flag['ci_low']:+.3f}, {flag['ci_high']:+.3f}]{'' if flag.get('higher_is_better') else ' (lower is better)'}"
    )


def _worse_than_base_section(report: dict) -> list[str]:
    flags = (report.get("evaluate") or {}).get("worse_than_base") or []
    if not flags:
        return []
    lines = ["", f"## {WORSE_THAN_BASE_FLAG}", "", "| scenario | metric | better | Δ fine-tuned − base | 95% CI |"]
    lines.append("|---|---|---|---|---|")
    for f in flags:
        better = "higher" if f.get("higher_is_better") else "lower"
        lines.append(
            f"| {f['scenario']} | {f['metric']} | {better} | {f['delta']:+.3f} | [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}] |"
        )
    return lines


def _split_lines(report: dict) -> list[str]:
    """Domain QA on the test split (reported, never gated), per bucket, and the validation comparison
    with base that gate not_worse_than_base reads; figures cut, never rounded up."""
    splits = (report.get("evaluate") or {}).get("qa_splits")
    if not isinstance(splits, dict) or not {"validation", "test"} <= set(splits):
        return []
    test = splits["test"]

    def compared(base: dict, tuned: dict, gain: dict, metric: str) -> str:
        return (
            f"base {interval_text(base[metric])} → fine-tuned {interval_text(tuned[metric])}, "
            f"gain {interval_text(gain[metric], signed=True)}"
        )

    lines = [
        f"test split EM       {compared(test['base'], test['finetuned'], test['gain'], 'exact_match')} "
        f"({test['n']} questions, 95% CI; reported, never gated)",
        f"test split F1       {compared(test['base'], test['finetuned'], test['gain'], 'f1')}",
    ]
    for bucket, tuned in test["finetuned"]["buckets"].items():
        label = f"  EM {bucket} ({tuned['n']})"
        base, gain = test["base"]["buckets"][bucket], test["gain"]["buckets"][bucket]
        lines.append(f"{label:<20}{compared(base, tuned, gain, 'exact_match')}")
    return [*lines, f"vs base             {versus_base(splits['validation'])}{_below_base_gate(report)}"]


def _below_base_gate(report: dict) -> str:
    gate = next((g for g in (report.get("gates") or {}).get("gates", []) if g["name"] == "not_worse_than_base"), None)
    if gate is None:
        return ""
    if gate["status"] == "failed":
        return "; never promoted (gate not_worse_than_base)"
    return "; gate not_worse_than_base is off" if gate["status"] == "off" else ""


def _split_sections(report: dict) -> list[str]:
    """A table per QA split: EM and F1 with 95% CIs, overall and per fact-frequency bucket."""
    splits = (report.get("evaluate") or {}).get("qa_splits")
    if not isinstance(splits, dict):
        return []
    lines = []
    for split, what in (("test", "reported only, never gated or tuned on"), ("validation", "the gates read it")):
        if split in splits:
            lines += ["", f"## Domain QA, {split} split ({what})", "", "| " + " | ".join(TABLE_HEADER) + " |"]
            lines += [
                "|" + "---|" * len(TABLE_HEADER),
                *("| " + " | ".join(row) + " |" for row in table_rows(splits[split])),
            ]
    if "validation" in splits:
        lines += ["", f"Fine-tuned vs base: {versus_base(splits['validation'])}{_below_base_gate(report)}."]
    return lines


def _monthly_lines(report: dict) -> list[str]:
    """The monthly DAG's dataset build: what the month added, what erasure removed, what it retired."""
    built = report.get("dataset")
    if not isinstance(built, dict):
        return []
    erasure = built.get("erasure") or {}
    retired = built.get("retired_versions") or []
    warm = (report.get("train") or {}).get("warm_start") or {}
    prev = (
        f"{built.get('previous_month')} ({str(built.get('previous_rev'))[:12]})"
        if built.get("previous_month")
        else "none (first month)"
    )
    return [
        f"month               {built.get('month')}: previous version {prev}",
        f"dataset build       {built.get('previous_records')} previous + {built.get('new_records')} new "
        f"({built.get('replaced')} replaced) − {built.get('erased_records')} erased = {built.get('records')} records",
        f"right to erasure    {erasure.get('requests_this_month', 0)} request(s) this month, "
        f"{erasure.get('requests_earlier_months', 0)} earlier; {erasure.get('records_removed', 0)} records removed "
        f"({erasure.get('subjects_found', 0)} of {erasure.get('subjects', 0)} subjects found)",
        f"retired versions    {', '.join('v' + str(r['version']) + (' (champion)' if r.get('was_champion') else '') for r in retired) or 'none'}",
        f"warm start          {warm.get('source', '—')}{' (' + warm['reason'] + ')' if warm.get('reason') else ''}"
        f"{' — replayed, not retrained' if (report.get('train') or {}).get('reused') else ''}",
    ]


def _champion(report: dict, key: str) -> str:
    champ = (report.get("evaluate") or {}).get("champion")
    if not champ:
        return ""
    value = champ.get(key)
    version = (report.get("evaluate") or {}).get("champion_version")
    return f" (champion v{version} {round(value, 3) if isinstance(value, float) else value})"


def _gates(gates: dict | None) -> str:
    if not isinstance(gates, dict):
        return "—"
    if gates.get("status") == "gated":
        return "GATED: " + "; ".join(gates.get("reasons") or [])
    rows = gates.get("gates", [])
    measured = sum(g["status"] == "passed" for g in rows)
    notes = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("not measured", [g["name"] for g in rows if g["status"] == "not measured"]),
            ("off", [g["name"] for g in rows if g["status"] == "off"]),
        )
        if names
    ]
    return f"passed ({measured} checked" + "".join(f"; {n}" for n in notes) + ")"


def _outcome_line(report: dict) -> str:
    out = report.get("outcome") or outcome(report)
    decision = report.get("decision") or {}
    if out in ("promoted", "rejected"):
        who = decision.get("by") or "gates only (approval not required)"
        comment = f" — “{decision['comment']}”" if decision.get("comment") else ""
        return f"{out} by {who}{' at ' + decision['at'] if decision.get('at') else ''}{comment}"
    return out


def _subject_lines(subjects: dict | None) -> list[str]:
    """Under privacy.unit: subject, who the units are (counts only): subjects, records without one, records
    per subject (how many subjects have n records), and the records past k in any one example (they train when
    a later sampling of their subject draws them)."""
    if not isinstance(subjects, dict):
        return []
    per_subject = subjects.get("records_per_subject") or {}
    # by record count: the keys are strings after JSON, and "10" would sort before "2"
    spread = ", ".join(f"{n}: {per_subject[n]}" for n in sorted(per_subject, key=int))
    return [
        f"privacy units       {subjects.get('subjects')} subjects + {subjects.get('records_without_subject')} "
        f"record(s) without a subject (their own unit), from {subjects.get('records')} records",
        f"records per subject {{{spread}}} (records: subjects); k = {subjects.get('subject_max_records')}, "
        f"{subjects.get('records_beyond_k')} record(s) beyond k in one example (k drawn afresh per sampling)",
    ]


def _ledger(ledger: dict | None) -> str:
    if not isinstance(ledger, dict):
        return "—"
    budget = ledger.get("epsilon_budget")

    def num(x):
        return f"{x:.4g}" if isinstance(x, float) else x

    limit = "no limit" if budget is None else num(budget)
    if "basic_epsilon" not in ledger:  # a report.json from before the ledger composed tightly
        return (
            f"{ledger.get('source_dataset')}: ε spent {num(ledger.get('spent_epsilon'))} of {limit} over "
            f"{ledger.get('runs')} run(s), δ spent {num(ledger.get('spent_delta'))} (basic composition)"
        )
    # the tight figure is what the budget is charged; the basic sum beside it is an upper bound
    return (
        f"{ledger.get('source_dataset')}: ε spent {num(ledger.get('spent_epsilon'))} "
        f"({ledger.get('composed')}, at δ {num(ledger.get('spent_delta'))}; basic sum "
        f"{num(ledger.get('basic_epsilon'))}) of {limit} over {ledger.get('runs')} run(s), unit "
        f"{ledger.get('unit')}; erasure refunds no budget"
    )


def _drift(drift: dict | None) -> str:
    if not isinstance(drift, dict):
        return "—"
    if drift.get("status") == "skipped":
        return f"skipped: {drift.get('reason')}"
    kl = ", ".join(
        f"{n} KL {'inf' if drift.get(n + '_kl') is None else round(drift[n + '_kl'], 4)}"
        for n in ("text_chars", "record_type")
    )
    return f"{drift.get('status')} ({kl}; max {drift.get('max_kl')}, {drift.get('severity')}) vs {str(drift.get('previous_rev'))[:12]}"


def render_markdown(report: dict) -> str:
    lines = [
        f"# PrivateTune run report — {report.get('run_id')}",
        "",
        "```",
        *summary_lines(report),
        "```",
        "",
        "## Stages",
        "",
        "| stage | status | seconds |",
        "|---|---|---|",
    ]
    for stage in STAGE_ORDER:
        lines.append(f"| {stage} | {report['stages'][stage]} | {report.get(stage, {}).get('seconds', '')} |")
    lines += _worse_than_base_section(report)
    quarantine = (report.get("ingest") or {}).get("quarantine_reasons") or {}
    if quarantine:
        lines += ["", "## Quarantine reasons", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(quarantine.items())]
    gates = report.get("gates") or {}
    if gates.get("gates"):
        lines += [
            "",
            f"## Promotion gates: {gates.get('status')}",
            "",
            "| gate | value | threshold | status |",
            "|---|---|---|---|",
        ]
        lines += [f"| {g['name']} | {g['value']} | {g['threshold']} | {g['status']} |" for g in gates["gates"]]
    lines += _split_sections(report)
    if report.get("missing_fields"):
        lines += ["", "## Missing fields", "", *[f"- {f}" for f in report["missing_fields"]]]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    (run_dir / "report.md").write_text(render_markdown(report))
    return {
        "report_path": str(run_dir / "report.json"),
        "complete": report["complete"],
        "missing_fields": report["missing_fields"],
        "outcome": report["outcome"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Print (or rebuild) a run report summary.")
    parser.add_argument("run_dir", type=Path, nargs="?", help="runs/<run>; default: the latest run")
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()
    run_dir = args.run_dir
    if run_dir is None:
        from tasks.config import Paths

        runs = sorted(Paths(args.home).runs.glob("*/report.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SystemExit("no run report yet: run `make demo` first")
        run_dir = runs[-1].parent
    write_report(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    print(
        "\n".join(["PrivateTune run summary", f"report              {run_dir / 'report.json'}", *summary_lines(report)])
    )


if __name__ == "__main__":
    main()
