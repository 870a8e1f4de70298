"""Per-question outcomes behind the HELM table, and the 95 % intervals computed from them.

Every HELM figure with a per-question sample is a statistic of per-question columns, kept as a
spec: {"statistic": name, "columns": {column: [one number per question]}, **options}. Statistics:

- "mean": the mean of the column "score" (exact match, F1, a worst case, a toxic flag);
- "gap": max − min over the columns' means, one column per group (the fairness gaps);
- "ece": expected calibration error of the columns "confidence" and "correct" (option "n_bins");
- "ratio": sum of "numerator" / sum of "denominator" (tokens per second).

`interval` bootstraps one model's spec over its questions; `paired_interval` resamples the same
questions for two models, so the interval of their difference carries the per-question noise once.
Specs hold numbers only, never a question id, question, answer or generation: they are written
next to the model's evaluation files (`per_question.json`) and never logged or returned as XCom.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tasks.eval.stats import bootstrap_statistic

Spec = dict
PER_QUESTION_FILE = "per_question.json"


# ----------------------------------------------------------------------------- statistics


def expected_calibration_error(confidences: list[float], correct: list[bool | float], n_bins: int = 10) -> float:
    """ECE over `n_bins` equal-width confidence bins (Guo et al. 2017).

    ECE = Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)|. Bin b holds confidences
    in [b/n_bins, (b+1)/n_bins); 1.0 goes into the last bin. Empty bins add nothing.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"ECE: {len(confidences)} confidences but {len(correct)} correctness labels")
    if not confidences:
        raise ValueError("ECE: no predictions to calibrate")
    if n_bins < 1:
        raise ValueError(f"ECE: n_bins must be >= 1, got {n_bins}")
    bad = [c for c in confidences if not 0.0 <= c <= 1.0]
    if bad:
        raise ValueError(f"ECE: confidences must lie in [0, 1]; got {bad[:3]}")
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for conf, ok in zip(confidences, correct):
        bins[min(int(conf * n_bins), n_bins - 1)].append((conf, float(ok)))
    n = len(confidences)
    return sum(len(b) / n * abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b)) for b in bins if b)


def _pick(column: Sequence[float], idx: Sequence[int]) -> list[float]:
    return [column[i] for i in idx]


def _mean_of(column: Sequence[float], idx: Sequence[int]) -> float:
    picked = _pick(column, idx)
    return sum(picked) / len(picked)


def _gap_of(spec: Spec, idx: Sequence[int]) -> float:
    means = [_mean_of(column, idx) for column in spec["columns"].values()]
    return max(means) - min(means)


def _ece_of(spec: Spec, idx: Sequence[int]) -> float:
    cols = spec["columns"]
    return expected_calibration_error(_pick(cols["confidence"], idx), _pick(cols["correct"], idx), spec["n_bins"])


def _ratio_of(spec: Spec, idx: Sequence[int]) -> float:
    return sum(_pick(spec["columns"]["numerator"], idx)) / sum(_pick(spec["columns"]["denominator"], idx))


_STATISTICS = {
    "mean": lambda spec, idx: _mean_of(spec["columns"]["score"], idx),
    "gap": _gap_of,
    "ece": _ece_of,
    "ratio": _ratio_of,
}


def statistic_value(spec: Spec, idx: Sequence[int] | None = None) -> float:
    """The spec's statistic over the questions `idx` (with repeats); all questions when None."""
    return _STATISTICS[spec["statistic"]](spec, range(question_count(spec)) if idx is None else idx)


def question_count(spec: Spec) -> int:
    sizes = {len(column) for column in spec["columns"].values()}
    if len(sizes) != 1:
        raise ValueError(f"per-question spec: columns of different lengths {sorted(sizes)}")
    return sizes.pop()


# ----------------------------------------------------------------------------- specs


def mean_spec(scores: Sequence[float]) -> Spec:
    return {"statistic": "mean", "columns": {"score": [float(s) for s in scores]}}


def gap_spec(groups: dict[str, Sequence[float]]) -> Spec:
    return {"statistic": "gap", "columns": {g: [float(s) for s in scores] for g, scores in groups.items()}}


def ece_spec(confidences: Sequence[float], correct: Sequence[bool | float], n_bins: int) -> Spec:
    columns = {"confidence": [float(c) for c in confidences], "correct": [float(ok) for ok in correct]}
    return {"statistic": "ece", "columns": columns, "n_bins": n_bins}


def ratio_spec(numerator: Sequence[float], denominator: Sequence[float]) -> Spec:
    columns = {"numerator": [float(x) for x in numerator], "denominator": [float(x) for x in denominator]}
    return {"statistic": "ratio", "columns": columns}


def suite_specs(results: dict, task_name: str, perturbations: Sequence[str]) -> dict[str, dict[str, Spec]]:
    """accuracy / robustness / fairness specs from lm-eval's results (with samples) of the QA suite.

    Mirrors tasks.eval.qa.evaluate_qa_suite: `<task>` is the clean split, `<task>_<p>` a perturbation,
    `<task>_fair_<group>` a demographic variant; every split lists the same questions by doc_id.
    """
    samples = results["samples"]
    robust = [f"{task_name}_{p}" for p in perturbations]
    groups = {t.removeprefix(f"{task_name}_fair_"): t for t in samples if t.startswith(f"{task_name}_fair_")}
    column = {t: _doc_scores(samples[t]) for t in [task_name, *robust, *groups.values()]}
    accuracy = {m: mean_spec(scores) for m, scores in column[task_name].items()}
    robustness: dict[str, Spec] = {}
    for p, task in zip(perturbations, robust):
        robustness |= {f"{m}_{p}": mean_spec(column[task][m]) for m in ("exact_match", "f1")}
    for m in ("exact_match", "f1"):
        versions = [column[t][m] for t in [task_name, *robust]]
        robustness[f"{m}_worst"] = mean_spec([min(scores) for scores in zip(*versions)])
    fairness: dict[str, Spec] = {}
    for g, task in groups.items():
        fairness |= {f"{m}_{g}": mean_spec(column[task][m]) for m in ("exact_match", "f1")}
    for m in ("exact_match", "f1") if groups else ():
        fairness[f"{m}_gap"] = gap_spec({g: column[task][m] for g, task in groups.items()})
    return {"accuracy": accuracy, "robustness": robustness, "fairness": fairness}


def _doc_scores(samples: list[dict]) -> dict[str, list[float]]:
    """metric -> per-question scores in doc_id order, for the metrics lm-eval logged per sample."""
    ordered = sorted(samples, key=lambda s: int(s["doc_id"]))
    return {m: [float(s[m]) for s in ordered] for m in ("exact_match", "f1", "relevance") if m in ordered[0]}


def toxicity_specs(toxicity_json: Path) -> dict[str, Spec]:
    """{"toxicity_rate": spec} from tasks.eval.safety's toxicity.json (per prompt: score and toxic flag)."""
    prompts = json.loads(Path(toxicity_json).read_text(encoding="utf-8"))["prompts"]
    return {"toxicity_rate": mean_spec([float(bool(p["toxic"])) for p in prompts])}


def write_specs(path: Path, specs: dict[str, dict[str, Spec]]) -> Path:
    Path(path).write_text(json.dumps(specs), encoding="utf-8")
    return Path(path)


def read_specs(path: Path) -> dict[str, dict[str, Spec]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- intervals


def interval(spec: Spec) -> dict:
    """{"ci_low", "ci_high", "n"}: the 95 % percentile-bootstrap interval of one model's figure."""
    ci = bootstrap_statistic(question_count(spec), lambda idx: statistic_value(spec, idx))
    return {"ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": ci["n"]}


def paired_interval(spec: Spec, baseline: Spec) -> dict | None:
    """{"delta", "ci_low", "ci_high", "n"} of spec − baseline on the same resampled questions.

    None when the two were not scored on the same number of questions (then they cannot be paired).
    """
    n = question_count(spec)
    if question_count(baseline) != n or spec["statistic"] != baseline["statistic"]:
        return None
    ci = bootstrap_statistic(n, lambda idx: statistic_value(spec, idx) - statistic_value(baseline, idx))
    return {"delta": ci["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": n}
