"""The HELM table's noise: a 95 % interval per figure, per paired difference, and the flags they raise.

Given the table (scenario -> metric -> model -> value) and each model's per-question specs
(tasks.eval.per_question), every figure that has a per-question sample gets a percentile-bootstrap
interval over its questions, every difference between two models a paired one (the same
resampled questions for both), and `worse_than_base` lists the metrics where the fine-tuned
model is worse than base beyond that noise: the paired interval lies wholly on the worse side of
zero (below it where higher is better; above it where lower is better, as for the fairness gaps).
"""

from __future__ import annotations

from tasks.eval.per_question import interval, paired_interval
from tasks.eval.stats import DEFAULT_RESAMPLES

LEVEL = 0.95
METHOD = (
    f"{LEVEL:.0%} percentile bootstrap over questions ({DEFAULT_RESAMPLES} resamples); "
    "differences between models are paired (the same resampled questions for both)"
)
FLAGGED_PAIR = ("finetuned", "base")
FLAG_TEXT = "⚠ worse than base beyond noise"
# Wall-clock timings vary with the machine's load, not with the questions: shown with an interval, never flagged.
UNFLAGGED_SCENARIOS = frozenset({"efficiency"})

PerQuestion = dict[str, dict[str, dict[str, dict]]]  # model -> scenario -> metric -> spec


def _spec(per_question: PerQuestion, model: str, scenario: str, metric: str) -> dict | None:
    return ((per_question.get(model) or {}).get(scenario) or {}).get(metric)


def metric_intervals(table: dict, per_question: PerQuestion) -> dict:
    """scenario -> metric -> model -> {"ci_low", "ci_high", "n"}, for every measured figure with a spec."""
    out: dict = {}
    for scenario, metrics in table.items():
        for metric, values in metrics.items():
            for model, value in values.items():
                spec = _spec(per_question, model, scenario, metric)
                if value is not None and spec is not None:
                    out.setdefault(scenario, {}).setdefault(metric, {})[model] = interval(spec)
    return out


def delta_intervals(deltas: dict, per_question: PerQuestion) -> dict:
    """ "<a>-<b>" -> scenario -> metric -> {"delta", "ci_low", "ci_high", "n"}: paired, for every delta with both specs."""
    out: dict = {}
    for pair, scenarios in deltas.items():
        a, b = pair.split("-", 1)
        for scenario, metrics in scenarios.items():
            for metric, delta in metrics.items():
                ci = _paired(per_question, (a, b), scenario, metric) if delta is not None else None
                if ci is not None:
                    out.setdefault(pair, {}).setdefault(scenario, {})[metric] = ci
    return out


def _paired(per_question: PerQuestion, pair: tuple[str, str], scenario: str, metric: str) -> dict | None:
    spec_a, spec_b = (_spec(per_question, model, scenario, metric) for model in pair)
    return paired_interval(spec_a, spec_b) if spec_a is not None and spec_b is not None else None


def beyond_noise_on_worse_side(ci: dict, higher_is_better: bool | None) -> bool:
    """True when the whole paired interval says worse: below 0 when higher is better, above 0 when lower is."""
    if higher_is_better is None:
        return False
    return ci["ci_high"] < 0 if higher_is_better else ci["ci_low"] > 0


def worse_than_base(delta_cis: dict, directions: dict[str, bool | None]) -> list[dict]:
    """[{"scenario", "metric", "delta", "ci_low", "ci_high", "n", "higher_is_better"}] for fine-tuned − base."""
    flagged = []
    for scenario, metrics in delta_cis.get("-".join(FLAGGED_PAIR), {}).items():
        if scenario in UNFLAGGED_SCENARIOS:
            continue
        for metric, ci in metrics.items():
            direction = directions.get(f"{scenario}.{metric}")
            if beyond_noise_on_worse_side(ci, direction):
                flagged.append({"scenario": scenario, "metric": metric, **ci, "higher_is_better": direction})
    return flagged
