"""Promotion gates: the evidence a fine-tuned model must show before it may become champion.

Each gate compares one measured figure with a threshold from `gates:` in the pipeline
config. A gate whose threshold is None is off; a gate whose figure could not be measured
(no champion yet, no canaries in the data) is reported as "not measured" and does not
block, so a first run can promote on the gates that apply. Any failing gate ends the run
as "gated": the model stays `challenger`, and the reasons go to the report and the log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tasks.config import GatesConfig


class PromotionGated(Exception):
    """One or more promotion gates failed; the message lists each reason."""


@dataclass(frozen=True)
class GateSpec:
    name: str
    metric: str  # key in the metrics dict passed to check_gates
    threshold_field: str  # GatesConfig field
    kind: str  # "min" (value >= threshold), "max" (value <= threshold), or "flag" (a bool switch: on = value 0)
    what: str


GATES = (
    GateSpec(
        "exact_match_gain",
        "exact_match_gain",
        "min_exact_match_gain",
        "min",
        "fine-tuned EM minus base EM (validation)",
    ),
    GateSpec(
        "not_worse_than_base",
        "exact_match_below_base",
        "not_worse_than_base",
        "flag",
        "fine-tuned validation EM below base's (1) or not (0)",
    ),
    GateSpec(
        "champion_regression",
        "regression_vs_champion",
        "max_regression_vs_champion",
        "max",
        "champion EM minus fine-tuned EM",
    ),
    GateSpec("toxicity", "toxicity_rate", "max_toxicity_rate", "max", "share of toxic generations"),
    GateSpec("pii_leaks", "pii_leaks", "max_pii_leaks", "max", "raw PII values reproduced in generations"),
    GateSpec("canary_exposure", "canary_exposure_max", "max_canary_exposure", "max", "highest canary exposure (bits)"),
    GateSpec("membership_inference", "mia_auc", "max_mia_auc", "max", "membership-inference AUC (min-k % score)"),
    GateSpec(
        "secure_noise",
        "reproducible_noise",
        "allow_reproducible_noise",
        "max",
        "DP noise from a seeded, reproducible PRNG (1) rather than the OS CSPRNG (0)",
    ),
)


def reproducible_noise(trained: dict) -> float | None:
    """1 when a DP model's noise can be regenerated from its seed, 0 when it came from the CSPRNG; None
    without DP (nothing to regenerate). A result that does not say is treated as seeded."""
    from tasks.train.noise import NOISE_SOURCE_CSPRNG

    if not trained.get("dp"):
        return None
    return 0.0 if trained.get("noise_source") == NOISE_SOURCE_CSPRNG else 1.0


@dataclass
class GateResult:
    name: str
    what: str
    metric: str
    threshold: float | None
    value: float | None
    status: str  # passed | failed | not measured | off
    reason: str | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _threshold(spec: GateSpec, gates: GatesConfig) -> float | None:
    """The gate's threshold; a "flag" gate's switch turns into 0 (on: the figure must be 0) or None (off)."""
    setting = getattr(gates, spec.threshold_field)
    if spec.kind == "flag":
        return 0.0 if setting else None
    return setting


def _reason(spec: GateSpec, value: float, threshold: float) -> str:
    if spec.kind == "flag":
        return f"{spec.name}: {spec.what} is {_fmt(value)}; the gate refuses it (gates.{spec.threshold_field})"
    bound = "at least" if spec.kind == "min" else "at most"
    return (
        f"{spec.name}: {spec.what} is {_fmt(value)}, must be {bound} {_fmt(threshold)} (gates.{spec.threshold_field})"
    )


def check_gates(metrics: dict[str, Any], gates: GatesConfig) -> dict:
    """Compare `metrics` with the thresholds. Returns {"status": "passed" | "gated", "failed": [...names],
    "reasons": [...], "gates": [GateResult as dict, ...]}; never raises."""
    results: list[GateResult] = []
    for spec in GATES:
        threshold = _threshold(spec, gates)
        value = metrics.get(spec.metric)
        value = None if value is None else float(value)
        if threshold is None:
            results.append(GateResult(spec.name, spec.what, spec.metric, None, value, "off"))
            continue
        if value is None:
            results.append(GateResult(spec.name, spec.what, spec.metric, float(threshold), None, "not measured"))
            continue
        ok = value >= threshold if spec.kind == "min" else value <= threshold
        reason = None if ok else _reason(spec, value, threshold)
        results.append(
            GateResult(spec.name, spec.what, spec.metric, float(threshold), value, "passed" if ok else "failed", reason)
        )
    failed = [r for r in results if r.status == "failed"]
    return {
        "status": "gated" if failed else "passed",
        "failed": [r.name for r in failed],
        "reasons": [r.reason for r in failed],
        "gates": [asdict(r) for r in results],
    }


def enforce(outcome: dict) -> dict:
    """Raise PromotionGated naming every failed gate; return the outcome when all passed."""
    if outcome["status"] == "gated":
        raise PromotionGated("run gated, model not promoted: " + "; ".join(outcome["reasons"]))
    return outcome
