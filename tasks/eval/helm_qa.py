"""The HELM page's "Domain QA by fact frequency" section: per QA split, base and fine-tuned exact match,
the paired EM gain and fine-tuned F1, each with its 95 % bootstrap interval, overall and per bucket.

Input is `tasks.eval.split_figures.split_figures` per split ({"validation", "test"}); `qa_by_bucket`
keeps its numbers for helm.json (no question text), `section_html` shows them, cut at the shown
precision and never rounded up (`split_figures.interval_text`). A gain whose interval lies wholly
below zero carries the HELM table's worse-than-base flag; one wholly above zero says so too.
"""

from __future__ import annotations

import html

from tasks.eval.helm_intervals import FLAG_TEXT
from tasks.eval.split_figures import interval_text

ABOVE_TEXT = "above base beyond noise"
SPLITS = (("validation", "used by the gates"), ("test", "reported only, never tuned on"))
COLUMNS = ("base EM", "fine-tuned EM", "EM gain", "fine-tuned F1")
_CELLS = (("base", "exact_match"), ("finetuned", "exact_match"), ("gain", "exact_match"), ("finetuned", "f1"))


def verdict(gain: dict) -> str | None:
    """ "worse" when the paired interval lies wholly below 0, "above" when wholly above it, else None."""
    if gain["ci_high"] < 0:
        return "worse"
    return "above" if gain["ci_low"] > 0 else None


def _row(group: str, n: int, figures: dict) -> dict:
    """One table row: {"group", "n", "<model>_<metric>": interval, ..., "em_gain_verdict"}."""
    cells = {f"{model}_{metric}": figures[model][metric] for model, metric in _CELLS}
    return {"group": group, "n": n, **cells, "em_gain_verdict": verdict(figures["gain"]["exact_match"])}


def _split_rows(split: dict) -> list[dict]:
    rows = [_row("all", split["n"], split)]
    for bucket, tuned in split["finetuned"]["buckets"].items():
        per_bucket = {"base": split["base"]["buckets"][bucket], "finetuned": tuned}
        rows.append(_row(bucket, tuned["n"], per_bucket | {"gain": split["gain"]["buckets"][bucket]}))
    return rows


def qa_by_bucket(qa_splits: dict | None) -> dict:
    """split -> {"role", "n", "sha256", "rows"}: helm.json's numbers for each split present."""
    out = {}
    for name, role in SPLITS:
        split = (qa_splits or {}).get(name)
        if split is not None:
            out[name] = {"role": role, "n": split["n"], "sha256": split.get("sha256"), "rows": _split_rows(split)}
    return out


def _flag(row: dict) -> str:
    text = {"worse": FLAG_TEXT, "above": ABOVE_TEXT}.get(row["em_gain_verdict"])
    cls = "flag" if row["em_gain_verdict"] == "worse" else "above"
    return f' <span class="{cls}">{html.escape(text)}</span>' if text else ""


def _cell(row: dict, model: str, metric: str) -> str:
    text = html.escape(interval_text(row[f"{model}_{metric}"], signed=model == "gain"))
    return f"<td>{text}{_flag(row) if model == 'gain' else ''}</td>"


def _row_html(row: dict) -> str:
    cells = "".join(_cell(row, model, metric) for model, metric in _CELLS)
    return f'<tr><td class="l">{html.escape(row["group"])}</td><td>{row["n"]}</td>{cells}</tr>'


def section_html(by_bucket: dict) -> str:
    """The section's heading, one table per split and a line on how to read it; "" with no split."""
    if not by_bucket:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("questions", "n", *COLUMNS))
    tables = "".join(
        f"<h3>{html.escape(name)} split ({html.escape(split['role'])}), {split['n']} questions</h3>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(_row_html(r) for r in split['rows'])}</tbody></table>"
        for name, split in by_bucket.items()
    )
    return (
        "<h2>Domain QA by fact frequency</h2><p>Exact match and F1 with 95% bootstrap intervals over questions "
        "[low, high]; the EM gain is paired (fine-tuned − base on the same resampled questions). Figures are cut, "
        f"never rounded up; intervals are widened outward.</p>{tables}"
    )
