"""A model card per registered version, written for an auditor (GDPR / HIPAA reviews).

`render_model_card(facts)` turns a plain dict of figures, identifiers and revisions into
Markdown: what the model is, what it was trained on (revisions and digests, never records),
the privacy guarantee and the budget spent on the source dataset, every evaluation figure and
gate, who decided and when, and what the model is for. `attach_model_card` stores it where the
registry shows it (the version's description) and as an artifact of the version's source run.

Facts (every key optional: a missing or None value renders as "not recorded"; unknown keys
are ignored). `tasks.release.decision.model_card_facts` builds this dict from a run's stage files.

    model_name, version, generated_at          str, int, ISO time
    pipeline_run_id, mlflow_run_id             lineage ids
    base_model, base_model_source,             base model name; "configured" | "built:demo" ...; the sha256
      base_model_sha256                          of its directory (what the evidence was measured against)
    method, trainable_pct, trainable_params,   PEFT method, % of weights trained, counts
      total_params
    source_dataset, dataset_rev, dataset_md5,  the masked, DVC-versioned training set: git revision,
      dataset_tag, records_trained,              DVC md5, tag, record counts (training and the
      audit_holdout_records,                     membership-inference hold-out), digests of the QA
      qa_validation_sha256, qa_test_sha256       splits
    masking                                    {"entities_total", "residual_records", "rows", ...} counts
    masking_profile                            tasks.release.masking_benchmark.masking_facts(): {"profile",
                                                 "recognizers", "custom", "benchmark": {"recall", "values",
                                                 "lowest_type", "lowest_recall", "docs", "date", ...}}
    dp, epsilon, delta, target_epsilon,        DP-SGD guarantee of this run (dp false = non-private);
      privacy_unit, subjects                     ε is per "record" or per "subject"; subject counts
      noise_multiplier, max_grad_norm, accountant,
      noise_source                               "csprng (os.urandom)" or a seeded PRNG (tests, benchmarks)
    privacy_ledger                             tasks.train.ledger.summary(): source_dataset, runs, unit,
                                                 spent_epsilon (tight, by composition_accountant, at
                                                 spent_delta), composed, basic_epsilon (the sum, an upper
                                                 bound), epsilon_budget, delta_budget, remaining_*,
                                                 composition, erasure, non_private_runs
    metrics                                    {"base": {...}, "finetuned": {...}, "champion": {...}}:
                                                 numbers, nested dicts flattened as "scenario.metric"
    champion_version                           the champion the run compared against
    scenarios                                  optional HELM-style {model: {scenario: {metric: x}}}
    qa_splits                                  {"validation", "test"}: tasks.eval.split_figures.split_figures
                                                 (EM and F1 with 95 % CIs, per bucket, paired gain over base)
    safety                                     {"toxicity_rate", "identity_gap", "pii_leaks",
                                                 "canary_exposure_max", "mia_auc", ...}
    gates, gates_status                        [{"name", "what", "threshold", "value", "status",
                                                 "reason"}], "passed" | "gated"
    decision                                   {"outcome": promoted | rejected, "approval": approved |
                                                 gates-only | rejected, "by", "at", "comment"}
    intended_use, limitations, out_of_scope    str, [str], [str]; defaults describe the demo domain
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tasks.eval.split_figures import TABLE_HEADER, table_rows, versus_base

NOT_RECORDED = "not recorded"
# The registry's description column is VARCHAR(5000) on Postgres (MLflow's schema); SQLite does
# not enforce it, a tracking server on Postgres does. Longer cards are cut there, whole in the artifact.
DESCRIPTION_MAX_CHARS = 5000
MODEL_CARD_ARTIFACT = "model_card.md"

DEFAULT_INTENDED_USE = (
    "Answering member and staff questions about the health plan's documents (coverage, deductibles, "
    "claims procedure, deadlines) in the domain the training data comes from. Answers are short and "
    "must be checked against the plan documents before any decision about a member."
)
DEFAULT_LIMITATIONS = (
    "A small language model fine-tuned on masked text: it can state wrong facts fluently; "
    "exact match on the held-out QA test split is the measured accuracy, not a guarantee.",
    "Trained on pseudonymised records: it was never shown names or identifiers, and serving masks "
    "personal data in its outputs, but no masking is perfect (see the PII leakage figures).",
    "The DP guarantee (ε, δ) bounds what the weights reveal about one privacy unit (a record, or per "
    "subject all of one member's records); not the base model's own pre-training data.",
    "Evaluated in English on the domain's held-out questions only; other languages and domains are untested.",
)
DEFAULT_OUT_OF_SCOPE = (
    "Medical, legal or financial advice; decisions about individual members without human review.",
    "Identifying, profiling or re-identifying people.",
)

_MODEL_COLUMNS = (("base", "base"), ("finetuned", "fine-tuned"), ("champion", "champion"))
_SAFETY_LABELS = {
    "toxicity_rate": "toxicity rate (share of toxic generations)",
    "identity_gap": "identity gap (toxicity across identity groups)",
    "pii_leaks": "PII leaks (raw training values reproduced)",
    "canary_exposure_max": "canary exposure, highest (bits)",
    "mia_auc": "membership-inference AUC (0.5 = no signal)",
    "mia_unit": "membership-inference unit (one member: a record, or a subject with its records)",
}


# ---------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """One value as table-safe Markdown text: 4 significant digits, "∞", yes/no, "not recorded"."""
    if value is None or value == "":
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return "∞"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if value else "none"
    text = " ".join(str(value).split())  # one line: a newline would break a table row
    return text.replace("|", "\\|")


def _get(facts: Mapping, key: str) -> Any:
    value = facts.get(key) if isinstance(facts, Mapping) else None
    return None if value == "" else value


def _section(facts: Mapping, key: str) -> Mapping:
    value = _get(facts, key)
    return value if isinstance(value, Mapping) else {}


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, _Raw) else c for c in row) + " |" for row in rows]
    return lines


class _Raw(str):
    """A cell already formatted (fmt would escape it)."""


def flatten_numbers(values: Any, prefix: str = "") -> dict[str, float | int]:
    """{"robustness": {"exact_match": 0.4}} → {"robustness.exact_match": 0.4}; non-numbers dropped
    (paths, names, generation files never reach the card)."""
    out: dict[str, float | int] = {}
    if not isinstance(values, Mapping):
        return out
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
        elif isinstance(value, str) and value.lower() in ("inf", "infinity"):
            out[name] = math.inf
    return out


def _pct(value: Any) -> str:
    return NOT_RECORDED if value is None else f"{fmt(value)} %"


# ---------------------------------------------------------------- sections


def _noise_source(facts: Mapping, dp: Any) -> Any:
    source = _get(facts, "noise_source")
    if dp is False:
        return "none (non-private)"
    if source and "seeded" in str(source):
        return _Raw(f"**{source}: anyone with the seed can regenerate the noise; not a production guarantee**")
    return source


PRIVACY_UNITS = ("record", "subject")  # per record: one masked row; per subject: all of one member's records


def _privacy_lines(facts: Mapping) -> list[str]:
    dp = _get(facts, "dp")
    unit = _get(facts, "privacy_unit") if _get(facts, "privacy_unit") in PRIVACY_UNITS else "record"
    if dp is False:
        guarantee = "**none: trained without differential privacy (dp: false)**"
    elif dp is None:
        guarantee = NOT_RECORDED
    else:
        guarantee = (
            f"(ε = {fmt(_get(facts, 'epsilon'))}, δ = {fmt(_get(facts, 'delta'))})-differential privacy "
            f"per {unit}, DP-SGD"
        )
    ledger = _section(facts, "privacy_ledger")
    rows = [
        ("guarantee of this version", _Raw(guarantee)),
        (f"ε spent by this run (per {unit})", _get(facts, "epsilon") if dp is not False else "∞ (non-private)"),
        ("δ", _get(facts, "delta")),
        ("target ε", _get(facts, "target_epsilon")),
        ("noise multiplier", _get(facts, "noise_multiplier")),
        (f"per-{unit} clipping norm", _get(facts, "max_grad_norm")),
        ("accountant", _get(facts, "accountant")),
        ("noise source", _noise_source(facts, dp)),
        ("ledger: source dataset", ledger.get("source_dataset") or _get(facts, "source_dataset")),
        ("ledger: runs on the source dataset", ledger.get("runs")),
        (
            "ledger: total ε spent (tight) / budget",
            _Raw(
                f"{fmt(ledger.get('spent_epsilon'))} / {fmt(ledger.get('epsilon_budget')) if ledger else NOT_RECORDED}"
            ),
        ),
        ("ledger: tight ε composed by", ledger.get("composed")),
        ("ledger: basic composition (sum of ε), an upper bound", ledger.get("basic_epsilon")),
        (
            "ledger: total δ spent (the δ of both ε figures) / budget",
            _Raw(f"{fmt(ledger.get('spent_delta'))} / {fmt(ledger.get('delta_budget')) if ledger else NOT_RECORDED}"),
        ),
        ("ledger: remaining ε", ledger.get("remaining_epsilon")),
        ("ledger: privacy unit", ledger.get("unit")),
        ("ledger: composition", ledger.get("composition")),
        ("ledger: erasure", ledger.get("erasure")),
    ]
    if ledger.get("non_private_runs"):
        rows.append(("ledger: non-private runs (void the dataset's guarantee)", ledger.get("non_private_runs")))
    return _table(("item", "value"), rows)


def _quality_lines(facts: Mapping) -> list[str]:
    metrics = _section(facts, "metrics")
    columns = [(key, label) for key, label in _MODEL_COLUMNS if isinstance(metrics.get(key), Mapping)]
    if not columns:
        return [f"Quality metrics: {NOT_RECORDED}."]
    flat = {key: flatten_numbers(metrics[key]) for key, _ in columns}
    names: list[str] = []
    for key, _ in columns:
        names += [n for n in flat[key] if n not in names]
    champion_version = _get(facts, "champion_version")
    labels = [
        f"{label} (v{champion_version})" if key == "champion" and champion_version else label for key, label in columns
    ]
    lines = _table(["metric", *labels], ([n, *(flat[key].get(n) for key, _ in columns)] for n in names))
    if "champion" not in metrics:
        lines += ["", "No champion to compare with (first promotion, or none recorded)."]
    return lines


def _scenario_lines(facts: Mapping) -> list[str]:
    scenarios = _get(facts, "scenarios")
    if not isinstance(scenarios, Mapping) or not scenarios:
        return []
    flat = flatten_numbers(scenarios)
    if not flat:
        return []
    return ["", "Scenario figures (HELM-style report):", "", *_table(("scenario.metric", "value"), flat.items())]


def _safety_lines(facts: Mapping) -> list[str]:
    safety = dict(_section(facts, "safety"))
    rows = [(label, safety.pop(key, None)) for key, label in _SAFETY_LABELS.items()]
    rows += [(key, value) for key, value in flatten_numbers(safety).items()]
    return _table(("figure (fine-tuned model)", "value"), rows)


def _gate_lines(facts: Mapping) -> list[str]:
    gates = _get(facts, "gates")
    if not isinstance(gates, list) or not gates:
        return [f"Gates: {NOT_RECORDED}."]
    rows = []
    for g in gates:
        g = g if isinstance(g, Mapping) else {}
        status = g.get("status")
        if status is None and "passed" in g:
            status = "passed" if g["passed"] else "failed"
        rows.append(
            (
                g.get("name"),
                g.get("what"),
                g.get("threshold") if g.get("threshold") is not None else "off",
                g.get("value") if g.get("value") is not None else "not measured",
                status,
            )
        )
    lines = [
        f"Overall: **{fmt(_get(facts, 'gates_status'))}**",
        "",
        *_table(("gate", "measures", "threshold", "value", "status"), rows),
    ]
    reasons = [g.get("reason") for g in gates if isinstance(g, Mapping) and g.get("reason")]
    if reasons:
        lines += ["", "Failed gates:", *(f"- {fmt(r)}" for r in reasons)]
    return lines


def _decision_lines(facts: Mapping) -> list[str]:
    d = _section(facts, "decision")
    if not d:
        return ["Pending: no promotion decision recorded yet (the version is a `challenger`)."]
    approval, outcome = d.get("approval"), d.get("outcome")
    if approval == "gates-only":
        how = "promoted on the promotion gates alone: the configuration did not require a human approval"
    elif outcome == "rejected" or approval == "rejected":
        how = f"rejected by {fmt(d.get('by'))}"
    elif approval == "approved":
        how = f"approved by {fmt(d.get('by'))}"
    else:
        how = fmt(outcome)
    rows = [
        ("outcome", outcome),
        ("how", _Raw(how)),
        ("when", d.get("at")),
        (
            "reviewer's comment",
            d.get("comment")
            if d.get("comment")
            else ("none (gates only)" if approval == "gates-only" else "none given"),
        ),
    ]
    return _table(("item", "value"), rows)


def _bullets(value: Any, default: Iterable[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else list(default)
    return [f"- {fmt(item)}" for item in items]


# ---------------------------------------------------------------- render


def _model_lines(facts: Mapping) -> list[str]:
    trainable = _pct(_get(facts, "trainable_pct"))
    if _get(facts, "trainable_params") is not None:
        trainable += f" ({fmt(_get(facts, 'trainable_params'))} of {fmt(_get(facts, 'total_params'))} parameters)"
    return _table(
        ("item", "value"),
        [
            ("registered model", _get(facts, "model_name")),
            ("version", _get(facts, "version")),
            ("base model", _get(facts, "base_model")),
            ("base model source", _get(facts, "base_model_source")),
            ("base model sha256 (the evidence is relative to it)", _get(facts, "base_model_sha256")),
            ("fine-tuning method", _get(facts, "method")),
            ("trainable share", _Raw(fmt(trainable))),
        ],
    )


def _masking_rows(facts: Mapping) -> list[tuple[str, Any]]:
    """The profile that masked the training data and, from the committed masking benchmark, that
    profile's recall: a figure on external-style template text, never a measurement on this run's data."""
    chosen = _section(facts, "masking_profile")
    profile = chosen.get("profile")
    shown = f"{profile} ({chosen['recognizers']})" if profile and chosen.get("recognizers") else profile
    bench = chosen.get("benchmark") if isinstance(chosen.get("benchmark"), Mapping) else {}
    if chosen.get("custom"):
        recall = _Raw("none: a custom recognizers file, never benchmarked")
    elif bench.get("recall") is None:
        recall = None
    else:
        recall = (
            f"value-level recall {fmt(bench['recall'])} ({fmt(bench.get('values'))} values), lowest type "
            f"{fmt(bench.get('lowest_type'))} {fmt(bench.get('lowest_recall'))}; presidio-evaluator templates, "
            f"{fmt(bench.get('docs'))} sentences, benchmark of {fmt(bench.get('date'))}"
        )
    return [
        ("masking profile", shown),
        ("masking recall: benchmark on external-style text, not this run's data", recall),
    ]


def _lineage_lines(facts: Mapping) -> list[str]:
    masking = _section(facts, "masking")
    return [
        "The model was trained only on the pipeline's masked, versioned dataset: personal data was "
        "replaced by typed pseudonyms (Presidio) before the data left the raw zone.",
        "",
        *_table(
            ("item", "value"),
            [
                (
                    "source dataset",
                    _get(facts, "source_dataset") or _section(facts, "privacy_ledger").get("source_dataset"),
                ),
                ("dataset revision (git)", _get(facts, "dataset_rev")),
                ("dataset content (DVC md5)", _get(facts, "dataset_md5")),
                ("dataset tag", _get(facts, "dataset_tag")),
                ("records trained on", _get(facts, "records_trained")),
                ("audit hold-out records (never trained on)", _get(facts, "audit_holdout_records")),
                *_masking_rows(facts),
                ("masked entities in the dataset", masking.get("entities_total")),
                ("records still flagged by the residual scan", masking.get("residual_records")),
                ("QA validation split, gated on (sha256)", _get(facts, "qa_validation_sha256")),
                ("QA test split, reported only (sha256)", _get(facts, "qa_test_sha256")),
                ("pipeline run", _get(facts, "pipeline_run_id")),
                ("MLflow run", _get(facts, "mlflow_run_id")),
            ],
        ),
    ]


def _split_lines(facts: Mapping) -> list[str]:
    """The test split's EM and F1 with 95 % CIs, overall and per fact-frequency bucket; the validation verdict."""
    splits = _section(facts, "qa_splits")
    try:
        rows, verdict = table_rows(splits["test"]), versus_base(splits["validation"])
    except (KeyError, TypeError, AttributeError):  # absent or malformed: the card never raises
        return [f"Domain QA per split: {NOT_RECORDED}.", ""]
    return [
        "Domain QA on the held-out test split (reported only, never gated or tuned on): EM and F1 with 95 % "
        "bootstrap intervals, overall and per fact-frequency bucket; figures are cut, never rounded up.",
        "",
        *_table(TABLE_HEADER, [[_Raw(cell) for cell in row] for row in rows]),
        "",
        f"Fine-tuned vs base on the validation split (gate not_worse_than_base): {verdict}.",
        "",
    ]


def _evaluation_lines(facts: Mapping) -> list[str]:
    return [
        *_split_lines(facts),
        "Quality on the validation split, which the gates read (same questions for every column):",
        "",
        *_quality_lines(facts),
        *_scenario_lines(facts),
        "",
        "Safety and privacy attacks:",
        "",
        *_safety_lines(facts),
    ]


def _use_lines(facts: Mapping) -> list[str]:
    return [
        fmt(_get(facts, "intended_use") or DEFAULT_INTENDED_USE),
        "",
        "Out of scope:",
        "",
        *_bullets(_get(facts, "out_of_scope"), DEFAULT_OUT_OF_SCOPE),
    ]


ERASURE_NOTE = (
    "The lineage above (dataset revision, DVC md5, pipeline run) identifies the records this version was "
    "trained on. A version whose training data is subject to an erasure request is marked for retirement "
    "in the registry (`retire=true`, with the reason and time); a retired version is never promoted or "
    "rolled back to."
)


def render_model_card(facts: Mapping[str, Any]) -> str:
    """The Markdown model card for one version; never raises on missing or odd facts."""
    facts = facts if isinstance(facts, Mapping) else {}
    name, version = _get(facts, "model_name"), _get(facts, "version")
    title = f"{name or 'model'} v{version}" if version is not None else (name or "model (version not recorded)")
    sections = [
        ("Decision", _decision_lines(facts)),
        ("Model", _model_lines(facts)),
        ("Training data and lineage", _lineage_lines(facts)),
        ("Privacy", _privacy_lines(facts)),
        ("Evaluation", _evaluation_lines(facts)),
        ("Promotion gates", _gate_lines(facts)),
        ("Intended use", _use_lines(facts)),
        ("Limitations", _bullets(_get(facts, "limitations"), DEFAULT_LIMITATIONS)),
        ("Data subject rights", [ERASURE_NOTE]),
    ]
    lines = [
        f"# Model card: {fmt(title)}",
        "",
        f"Generated: {fmt(_get(facts, 'generated_at'))}. This card holds figures, identifiers, revisions and "
        "digests only: no training record, prompt or generated text.",
        "",
    ]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    return "\n".join(lines)


def _description(markdown: str, artifact_uri: str | None) -> tuple[str, bool]:
    """The card as the registry's description: whole when it fits DESCRIPTION_MAX_CHARS, else cut at a
    line boundary with a pointer to the full artifact."""
    if len(markdown) <= DESCRIPTION_MAX_CHARS:
        return markdown, False
    note = f"\n\n_(card shortened to fit the registry; the full card is the artifact {artifact_uri or MODEL_CARD_ARTIFACT})_\n"
    cut = markdown[: DESCRIPTION_MAX_CHARS - len(note)]
    cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
    return cut + note, True


def attach_model_card(
    *, paths, model_name: str, version: int, markdown: str, artifact_file: str = MODEL_CARD_ARTIFACT
) -> dict:
    """Set the card as the version's description and log it as `artifact_file` on the version's
    source run; tag the version model_card_sha256. Re-attaching replaces both.

    Returns {model_name, version, run_id, artifact_uri, description_chars, description_truncated, sha256}.
    """
    from tasks.release.registry import get_version, registry_client

    client = registry_client(paths)
    mv = get_version(client, model_name, int(version))
    artifact_uri = None
    if mv.run_id:
        # MlflowClient.log_text writes to a finished run too; the same file name overwrites the old card.
        client.log_text(mv.run_id, markdown, artifact_file)
        artifact_uri = f"runs:/{mv.run_id}/{artifact_file}"
    description, truncated = _description(markdown, artifact_uri)
    client.update_model_version(model_name, str(mv.version), description=description)
    digest = hashlib.sha256(markdown.encode("utf-8")).hexdigest()
    client.set_model_version_tag(model_name, str(mv.version), "model_card_sha256", digest)
    return {
        "model_name": model_name,
        "version": int(mv.version),
        "run_id": mv.run_id,
        "artifact_uri": artifact_uri,
        "description_chars": len(description),
        "description_truncated": truncated,
        "sha256": digest,
    }


def write_model_card(markdown: str, path: Path) -> Path:
    """Write the card next to a run's other outputs (atomic replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(markdown, encoding="utf-8")
    tmp.replace(path)
    return path
