"""Domain QA per split: exact match and F1 with 95 % bootstrap intervals, per fact-frequency bucket,
and the paired gain of the fine-tuned model over base.

The validation split feeds the promotion gates (`exact_match_below_base`, gate `not_worse_than_base`);
the test split is reported only (model card, run report), never gated or tuned on. A question's
bucket (common | mid | tail, tasks.demo.synth) comes from its row's `bucket` field; rows without one
count in the overall figures only.

Figure dicts are `tasks.eval.stats` intervals: {"mean", "ci_low", "ci_high", "n", "level"}. `claim`
and `interval_text` print them without rounding a claim up: a mean or a gain is cut (floored) at the
shown precision, an interval is widened outward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tasks.eval.stats import bootstrap_ci, paired_bootstrap, rounded

METRICS = ("exact_match", "f1")
BUCKET_ORDER = ("common", "mid", "tail")
Scores = dict[str, list[float]]  # metric -> one score per question, in the QA file's order


# ----------------------------------------------------------------------------- figures


def bucket_indices(rows: Sequence[dict]) -> dict[str, list[int]]:
    """bucket -> indices of its questions; common, mid, tail first, then any other bucket by name."""
    found: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("bucket"):
            found.setdefault(str(row["bucket"]), []).append(i)
    order = [b for b in BUCKET_ORDER if b in found] + sorted(set(found) - set(BUCKET_ORDER))
    return {b: found[b] for b in order}


def _pick(values: Sequence[float], idx: Sequence[int]) -> list[float]:
    return [values[i] for i in idx]


def model_figures(scores: Scores, buckets: dict[str, list[int]]) -> dict:
    """EM and F1 of one model with their intervals, overall and per bucket."""
    per_bucket = {
        b: {"n": len(idx), **{m: rounded(bootstrap_ci(_pick(scores[m], idx))) for m in METRICS}}
        for b, idx in buckets.items()
    }
    return {**{m: rounded(bootstrap_ci(scores[m])) for m in METRICS}, "buckets": per_bucket}


def gain_figures(scores: Scores, base: Scores, buckets: dict[str, list[int]]) -> dict:
    """Paired gain (model − base, same resampled questions) in EM and F1, overall and per bucket."""

    def gain(metric: str, idx: Sequence[int]) -> dict:
        return rounded(paired_bootstrap(_pick(scores[metric], idx), _pick(base[metric], idx)))

    everything = range(len(scores["exact_match"]))
    per_bucket = {b: {"n": len(idx), **{m: gain(m, idx) for m in METRICS}} for b, idx in buckets.items()}
    return {**{m: gain(m, everything) for m in METRICS}, "buckets": per_bucket}


def split_figures(rows: Sequence[dict], base: Scores, finetuned: Scores) -> dict:
    """{"n", "base", "finetuned", "gain", "below_base", "worse_beyond_noise"} for one QA split.

    `below_base`: the fine-tuned model answers fewer questions exactly than base (a point comparison);
    `worse_beyond_noise`: the paired 95 % interval of its EM gain lies wholly below zero."""
    for name, scores in (("base", base), ("finetuned", finetuned)):
        sizes = {len(scores[m]) for m in METRICS}
        if sizes != {len(rows)}:
            raise ValueError(f"split figures: {name} has {sorted(sizes)} scores for {len(rows)} questions")
    buckets = bucket_indices(rows)
    gain = gain_figures(finetuned, base, buckets)
    return {
        "n": len(rows),
        "base": model_figures(base, buckets),
        "finetuned": model_figures(finetuned, buckets),
        "gain": gain,
        "below_base": sum(finetuned["exact_match"]) < sum(base["exact_match"]),
        "worse_beyond_noise": gain["exact_match"]["ci_high"] < 0,
    }


# ----------------------------------------------------------------------------- scoring


def suite_scores(quality_dir: Path) -> Scores:
    """Per-question EM and F1 of the clean split that `tasks.eval.helm.evaluate_model_quality` scored
    (its lm-eval suite writes quality_dir/suite/results.json with every sample)."""
    from tasks.eval.qa import per_question_scores

    return per_question_scores(Path(quality_dir) / "suite" / "results.json")


def qa_scores(
    base_model_dir: Path, adapter_dir: Path | None, qa_path: Path, out_dir: Path, **evaluate_kwargs
) -> Scores:
    """Per-question EM and F1 of one model on one QA file: `tasks.eval.qa.evaluate_qa`, clean questions only."""
    from tasks.eval.qa import evaluate_qa, per_question_scores

    evaluate_qa(
        base_model_dir=base_model_dir, adapter_dir=adapter_dir, qa_path=qa_path, out_dir=out_dir, **evaluate_kwargs
    )
    return per_question_scores(Path(out_dir) / "results.json")


# ----------------------------------------------------------------------------- text


def _cut(value: float, digits: int, up: bool = False) -> float:
    """`value` floored (or, with up, ceiled) at `digits` decimals; the 1e-9 absorbs binary noise (0.1 → 0.1)."""
    scale = 10**digits
    return (math.ceil(value * scale - 1e-9) if up else math.floor(value * scale + 1e-9)) / scale


def claim(value: float, digits: int = 3, signed: bool = False) -> str:
    """A mean or gain as text, never rounded up (0.1438 → 0.143; a gain −0.0004 → −0.001)."""
    return f"{_cut(value, digits):{'+' if signed else ''}.{digits}f}"


def interval_text(ci: dict, digits: int = 3, signed: bool = False) -> str:
    """ "0.143 [0.106, 0.182]": the mean cut down, the interval widened outward."""
    low, high = _cut(ci["ci_low"], digits), _cut(ci["ci_high"], digits, up=True)
    fmt = f"{'+' if signed else ''}.{digits}f"
    return f"{claim(ci['mean'], digits, signed)} [{low:{fmt}}, {high:{fmt}}]"


TABLE_HEADER = ("questions", "n", "base EM", "fine-tuned EM", "EM gain", "base F1", "fine-tuned F1", "F1 gain")


def table_rows(figures: dict) -> list[tuple[str, ...]]:
    """One split's figures as text cells (TABLE_HEADER): overall, then one row per bucket; 95 % intervals."""
    groups = [("all", figures["n"], figures["base"], figures["finetuned"], figures["gain"])]
    for bucket, tuned in figures["finetuned"]["buckets"].items():
        groups.append(
            (bucket, tuned["n"], figures["base"]["buckets"][bucket], tuned, figures["gain"]["buckets"][bucket])
        )
    return [
        (
            label,
            str(n),
            interval_text(base["exact_match"]),
            interval_text(tuned["exact_match"]),
            interval_text(gain["exact_match"], signed=True),
            interval_text(base["f1"]),
            interval_text(tuned["f1"]),
            interval_text(gain["f1"], signed=True),
        )
        for label, n, base, tuned, gain in groups
    ]


def versus_base(validation: dict) -> str:
    """The validation comparison the `not_worse_than_base` gate reads, in words."""
    gain = f"EM gain {interval_text(validation['gain']['exact_match'], signed=True)}, {validation['n']} questions"
    if validation["worse_beyond_noise"]:
        return f"worse than base beyond noise on validation ({gain})"
    if validation["below_base"]:
        return f"below base on validation, within the noise ({gain})"
    return f"not below base on validation ({gain})"
