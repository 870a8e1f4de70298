"""What a training run may spend: its DP mechanism planned exactly as the recipe runs it, charged to the
privacy ledger before the first step, and the ledger's totals for the report."""

from __future__ import annotations

import logging
import math

from tasks.config import Paths, PipelineConfig, safe_run_id

log = logging.getLogger(__name__)


def privacy_plan(spec: dict) -> dict:
    """The DP mechanism the recipe will run, computed the same way it does (same functions, same inputs):
    the privacy unit and how many units (records, or subjects plus records without one: the accountant's N),
    δ, sample rate, noise, accountant, steps after the ε cap, and the ε those steps spend."""
    from tasks.train.data import load_units, privacy_unit
    from tasks.train.dp import dp_mechanism, planned_steps_for

    t = spec["train"]
    unit, counts = privacy_unit(t), {}
    if unit == "record":
        with open(spec["data_path"], "rb") as f:
            n = records = sum(1 for line in f if line.strip())
    else:  # grouping reads the masked file once more: pseudonyms and counts, no text is kept
        units, counts = load_units(spec["data_path"], t)
        n, records = len(units), counts["records"]
    if t["batch_size"] > n:  # the recipe's preflight says the same; the accountant would fail obscurely first
        raise ValueError(
            f"train.batch_size ({t['batch_size']}) is larger than the dataset ({n} {unit} units in "
            f"{spec['data_path']}); lower train.batch_size (and physical_batch_size) or add data"
        )
    base = {"privacy_unit": unit, "records": records, "units": n, "unit_counts": counts}
    if not t["dp"]:
        return {**base, "private": False, "epsilon": math.inf, "delta": 0.0, "steps": planned_steps_for(t, n)}
    mech = dp_mechanism(t, n)
    return {
        **base,
        "private": True,
        "delta": mech["delta"],
        "sample_rate": mech["sample_rate"],
        "noise_multiplier": mech["noise"],
        "accountant": mech["accountant"],
        "steps": mech["steps"],
        "epsilon": mech["epsilon"],
        "mechanism": mech,
    }


def reserve_privacy_budget(
    run_id: str,
    cfg: PipelineConfig,
    spec: dict,
    *,
    dataset_rev: str,
    plan: dict | None = None,
    dag_id: str = "privacy_finetune",
):
    """Write this run's ledger entry before any training step, at the ε its capped steps can spend at most.
    Refused (PrivacyBudgetExceeded) when it would take the source dataset past its budget. A retried or
    resumed run computes the same mechanism with the same settings and finds its own entry: it is not
    counted twice. The same run key with other settings is refused (LedgerConflict)."""
    from tasks.train import ledger
    from tasks.train.checkpoint import EXECUTION_ONLY

    plan = plan or privacy_plan(spec)  # the caller's, when it also hands the mechanism to the recipe
    dataset = cfg.privacy.source_dataset
    lineage = ledger.lineage_of(spec["data_path"])
    settings = {
        "train": {k: v for k, v in spec["train"].items() if k not in EXECUTION_ONLY},
        "base_model_sha256": spec.get("base_model_sha256"),
    }
    entry = ledger.record_run(
        run_id=ledger.ledger_key(dag_id, safe_run_id(run_id)),
        dataset=dataset,
        dataset_revisions=dataset_rev,
        config_digest=ledger.config_digest(settings),
        record_count=lineage.record_count,
        lineage_digest=lineage.digest,
        epsilon=plan["epsilon"],
        delta=plan["delta"],
        private=plan["private"],
        accountant=plan.get("accountant"),
        noise_multiplier=plan.get("noise_multiplier"),
        sample_rate=plan.get("sample_rate"),
        steps=plan["steps"],
        max_grad_norm=spec["train"]["max_grad_norm"],
        unit=plan.get("privacy_unit", "record"),
        budget=ledger.budget_for(cfg.privacy, dataset),
    )
    log.info(
        "privacy ledger: run %s on %s reserved ε=%s δ=%s per %s",
        entry.run_id,
        dataset,
        "inf" if not plan["private"] else f"{plan['epsilon']:.4f}",
        plan["delta"],
        plan.get("privacy_unit", "record"),
    )
    return entry


def ledger_summary(cfg: PipelineConfig, entry, mlflow_run_id: str | None) -> dict:
    from tasks.train import ledger

    dataset = cfg.privacy.source_dataset
    summary = {
        **ledger.summary(dataset, ledger.budget_for(cfg.privacy, dataset)),
        "run_epsilon": entry.epsilon if math.isfinite(entry.epsilon) else "inf",
        "run_delta": entry.delta,
    }
    if mlflow_run_id:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=Paths().mlflow_tracking_uri)
        for key in ("spent_epsilon", "basic_epsilon", "spent_delta", "runs"):  # tight ε and the basic sum beside it
            if isinstance(summary[key], (int, float)):
                client.log_metric(mlflow_run_id, f"ledger_{key}", float(summary[key]))
        client.set_tag(mlflow_run_id, "privacy_ledger_dataset", dataset)
        client.set_tag(mlflow_run_id, "privacy_ledger_accountant", summary.get("composition_accountant") or "basic")
    return summary
