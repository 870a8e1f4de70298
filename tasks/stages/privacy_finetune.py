"""Stage glue: what each Airflow task (or `python -m tasks.stages.privacy_finetune`) runs.

Each `stage_*` function takes the run id plus the small dicts its upstream stages
returned, calls the stage's pure function with values from the resolved config, saves
its own result as `runs/<run>/stages/<stage>.json` (the report is built from those
files, not from XCom) and returns a small JSON-able dict: paths, counts, revisions,
metrics — never record text.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.common import offline
from tasks.common.rawzone import private_dir
from tasks.config import (
    Paths,
    PipelineConfig,
    PolicyViolation,
    expected_base_sha256,
    load_config,
    resolve_params,
    safe_run_id,
    save_resolved,
    train_settings,
)
from tasks.stages.run import cli_params, cli_parser, mask_key, repo_path, run_config, save_stage, timed
from tasks.train.budget import ledger_summary, privacy_plan, reserve_privacy_budget
from tasks.train.launch import launch_torchrun

log = logging.getLogger(__name__)

STAGES = ["prepare", "ingest", "validate", "mask", "version", "train", "evaluate", "register", "gates", "decision"]


# ---------------------------------------------------------------- stages

RESERVED_RUN_KEYS = {"monthly-": "monthly_refinetune"}  # run-key prefix → the only DAG whose runs may use it


def check_run_key(dag_id: str, key: str) -> None:
    """A run folder, ledger entry and dataset tag named like another DAG's would be taken for its."""
    for prefix, owner in RESERVED_RUN_KEYS.items():
        if key.startswith(prefix) and dag_id != owner:
            raise PolicyViolation(
                f"run id {key!r}: the prefix {prefix!r} is reserved for {owner}'s runs; "
                f"trigger {dag_id} under another run id"
            )


def stage_prepare(run_id: str, params: dict[str, Any] | None = None, *, dag_id: str = "privacy_finetune") -> dict:
    """Resolve config (+ DAG Params, stricter only), save it with the run, and resolve the base model."""
    offline.apply()

    def prepare() -> dict:
        paths = Paths()
        key = safe_run_id(run_id)
        check_run_key(dag_id, key)
        cfg, refused = resolve_params(load_config(), params or {})
        for r in refused:
            log.warning("Param %s=%s not applied: %s (kept %s)", r["param"], r["asked"], r["reason"], r["kept"])
        run_dir = paths.run_dir(run_id)
        save_resolved(cfg, run_dir)
        base = resolve_base_model(cfg, paths)
        return {
            "run_id": run_id,
            "dag_id": dag_id,
            "safe_run_id": key,
            "run_dir": str(run_dir),
            "pft_home": str(paths.home),
            "params_refused": refused,
            **base,
        }

    return timed(run_id, "prepare", prepare)


def resolve_base_model(cfg: PipelineConfig, paths: Paths) -> dict:
    """A configured local HF directory (checked against its pinned digest), or the demo model built (once)
    from the general corpus. Either way the result names the base's sha256, which the evidence cites."""
    from tasks.demo.base_model import build_base_model, model_dir_sha256

    if cfg.base_model.path:
        model_dir = Path(cfg.base_model.path)
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"base_model.path: {model_dir} is not a Hugging Face model directory "
                f"(no config.json); point it at a local causal-LM directory"
            )
        arch = json.loads(config_file.read_text()).get("architectures") or []
        if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
            raise ValueError(f"base_model.path: {model_dir} holds {arch or 'no architecture'}, not a causal LM")
        digest, expected = model_dir_sha256(model_dir), expected_base_sha256(cfg)
        if expected and digest != expected:
            raise PolicyViolation(
                f"base_model.path: {model_dir} has sha256 {digest[:12]}…, not the pinned "
                f"{expected[:12]}…; the directory changed since it was allowed"
            )
        return {
            "base_model_dir": str(model_dir),
            "base_model_source": "configured",
            "base_model_sha256": digest,
            "base_model_pinned": expected is not None,
        }

    corpus = paths.synth / "general_corpus.txt"
    if not corpus.exists():
        raise FileNotFoundError(
            f"{corpus}: no general corpus to build the demo base model; run "
            f"`python -m tasks.demo.synth --home {paths.home}` (make demo does) or set base_model.path"
        )
    built = build_base_model(corpus_path=corpus, models_root=paths.models, size=cfg.base_model.size)
    return {
        "base_model_dir": built["model_dir"],
        "base_model_source": f"built:{cfg.base_model.size}",
        "base_model_params": built["parameters"],
        "base_model_sha256": model_dir_sha256(Path(built["model_dir"])),
        "base_model_pinned": False,
    }


def stage_ingest(run_id: str, partition: str | None = None) -> dict:
    """All of landing/, or only the month partition landing/<partition>/ (the monthly DAG)."""
    from tasks.data.ingest import ingest

    cfg, paths = run_config(run_id), Paths()
    for raw in (paths.staging, paths.staging_dir(run_id), paths.quarantine, paths.quarantine_dir(run_id)):
        private_dir(raw)  # raw zone: owner-only before the first raw row is written
    return timed(
        run_id,
        "ingest",
        ingest,
        landing_dir=paths.landing,
        staging_dir=paths.staging_dir(run_id),
        quarantine_dir=paths.quarantine_dir(run_id),
        required_fields=tuple(cfg.data.required_fields),
        optional_fields=(cfg.privacy.subject_field,) if cfg.privacy.subject_field else (),
        min_text_chars=cfg.data.min_text_chars,
        max_text_chars=cfg.data.max_text_chars,
        glob=cfg.data.landing_glob,
        max_quarantine_share=cfg.data.max_quarantine_share,
        partition=partition,
        max_line_bytes=cfg.data.max_line_bytes,
        follow_symlinks=cfg.data.follow_symlinks,
    )


def stage_validate(run_id: str, ingested: dict) -> dict:
    """The GX suite plus drift checks against the previous dataset version; Data Docs and counts to MLflow."""
    from tasks.data.validate import ValidationFailed, log_to_mlflow, validate
    from tasks.data.version import previous_profile

    cfg, paths = run_config(run_id), Paths()
    out_dir = paths.run_dir(run_id) / "validation"

    def run() -> dict:
        # Reads git objects only (no registry lock); this run's own version, on a rerun, is never its baseline.
        previous = previous_profile(paths.datasets, exclude_run_id=run_id)
        try:
            result = validate(
                rows_path=Path(ingested["staged_path"]),
                suite_path=repo_path(cfg.data.gx_suite),
                out_dir=out_dir,
                previous=previous,
                data=cfg.data,
                run_name=safe_run_id(run_id),
            )
        except ValidationFailed:
            try:  # a failed validation's Data Docs are the ones worth reading
                log_to_mlflow(paths, run_id, out_dir)
            except Exception as exc:  # never hide the validation failure behind a tracking error
                log.warning("validation results not logged to MLflow: %s", exc)
            raise
        return {**result, "mlflow_run_id": log_to_mlflow(paths, run_id, out_dir)}

    return timed(run_id, "validate", run)


def _shard_out_dir(run_id: str, shard: dict) -> Path:
    return Paths().run_dir(run_id) / "mask_shards" / shard["shard_id"]


def stage_mask_plan(run_id: str, ingested: dict) -> list[dict]:
    """Split the staged rows into masking shards (one per landing partition, at most
    mask.shard_rows rows each); returns one small dict per shard: ids, paths, counts."""
    from tasks.data.shards import plan_shards

    cfg, paths = run_config(run_id), Paths()
    mask_key(cfg)  # a missing key fails here, once, not in every shard
    shutil.rmtree(paths.run_dir(run_id) / "mask_shards", ignore_errors=True)  # a re-plan drops old outputs
    # Shard inputs hold raw text: they stay in the raw zone, next to the staged rows.
    return plan_shards(Path(ingested["staged_path"]), paths.staging_dir(run_id) / "mask_shards", cfg.mask.shard_rows)


def stage_mask_shard(run_id: str, shard: dict) -> dict:
    """Mask one shard into runs/<run>/mask_shards/<shard_id>/ (counts only: the residual threshold
    applies to the merged totals). A retry overwrites the shard's own output."""
    from tasks.data.mask import date_shift_option, mask_dataset

    cfg = run_config(run_id)
    out_dir = _shard_out_dir(run_id, shard)
    start = time.perf_counter()
    result = mask_dataset(
        rows_path=Path(shard["path"]),
        out_dir=out_dir,
        key=mask_key(cfg),
        recognizers_path=repo_path(cfg.mask.recognizers),
        score_threshold=cfg.mask.score_threshold,
        language=cfg.mask.language,
        workers=cfg.mask.workers,
        max_residual_share=None,
        date_shift=date_shift_option(cfg.mask),
        subject_field=cfg.privacy.subject_field,
        subject_entity=cfg.privacy.subject_entity,
    )
    result = {
        "shard_id": shard["shard_id"],
        "partition": shard["partition"],
        "rows": result["rows"],
        "entities_total": result["entities_total"],
        "residual_records": len(_residual_ids(out_dir)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info(
        "mask shard %s (%s) done in %.1fs: %d rows, %d entities",
        shard["shard_id"],
        shard["label"],
        result["seconds"],
        result["rows"],
        result["entities_total"],
    )
    return result


def _residual_ids(shard_dir: Path) -> list[str]:
    return json.loads((shard_dir / "residual.json").read_text())["record_ids"]


def stage_mask_merge(run_id: str, shards: list[dict], shard_results: list[dict] | None = None) -> dict:
    """Concatenate the masked shards in order into runs/<run>/masked/ (the layout the version
    stage reads), sum the counts, apply mask.max_residual_share to the totals; saves stages/mask.json."""
    from tasks.data.shards import merge_shards

    if shard_results is not None and len(shard_results) != len(shards):
        raise RuntimeError(f"{len(shard_results)} mask_shard results for {len(shards)} planned shards")
    cfg, paths = run_config(run_id), Paths()
    out_dirs = [_shard_out_dir(run_id, s) for s in shards]

    def merge() -> dict:
        merged = merge_shards(shards, out_dirs, paths.run_dir(run_id) / "masked", cfg.mask.max_residual_share)
        seconds = [json.loads((d / "result.json").read_text())["seconds"] for d in out_dirs]
        return {
            **merged,
            "shard_rows": cfg.mask.shard_rows,
            "workers": cfg.mask.workers,
            "shard_seconds_total": round(sum(seconds), 1),
            "shard_seconds_max": max(seconds, default=0.0),
        }

    return timed(run_id, "mask", merge)


def stage_mask(run_id: str, ingested: dict) -> dict:
    """The mapped masking of the DAG, one shard after another in this process (no Airflow)."""
    from tasks.pii import mask_workers

    cfg = run_config(run_id)
    shards = stage_mask_plan(run_id, ingested)
    # One warm pool of workers for all shards: the engines load once, not once per shard.
    with mask_workers(cfg.mask.workers, recognizers_path=repo_path(cfg.mask.recognizers), language=cfg.mask.language):
        results = [stage_mask_shard(run_id, shard) for shard in shards]
    return stage_mask_merge(run_id, shards, results)


def version_inputs(run_id: str) -> tuple[dict | None, dict[str, Path]]:
    """What a dataset version carries besides the data: validate's counts-only profile of the staged rows
    (the next run's drift baseline) and the QA splits, {"validation": path, "test": path} (a split whose
    default file is absent is left out; a configured one must exist)."""
    paths = Paths()
    profile_path = paths.run_dir(run_id) / "validation" / "profile.json"
    profile = json.loads(profile_path.read_text(encoding="utf-8")) if profile_path.is_file() else None
    if profile is None:
        log.warning(
            "%s not found: this dataset version carries no profile for the next run's drift check", profile_path
        )
    ev = run_config(run_id).evaluate
    qa_paths = {}
    for split, configured in (("validation", ev.qa_validation_path), ("test", ev.qa_test_path)):
        path = Path(configured) if configured else paths.synth / f"qa_{split}.jsonl"
        if path.is_file():
            qa_paths[split] = path
        elif configured:
            raise FileNotFoundError(f"evaluate.qa_{split}_path: {path} does not exist")
        else:  # versioning does not need it; the evaluate stage then fails, naming the missing split
            log.warning("%s not found: this dataset version carries no %s QA split", path, split)
    return profile, qa_paths


def stage_version(run_id: str, masked: dict) -> dict:
    from tasks.data.version import version_dataset

    paths = Paths()
    profile, qa_paths = version_inputs(run_id)
    return timed(
        run_id,
        "version",
        version_dataset,
        masked_dir=Path(masked["masked_path"]).parent,
        registry_dir=paths.datasets,
        remote_dir=paths.dvc_remote,
        run_id=run_id,
        profile=profile,
        qa_paths=qa_paths,
    )


def completed_training(run_id: str, prepared: dict, versioned: dict) -> dict | None:
    """The run's saved train result when it trained this dataset revision with this config and base model."""
    cfg, run_dir = run_config(run_id), Paths().run_dir(run_id)
    try:
        saved = json.loads((run_dir / "stages" / "train.json").read_text())
        spec = json.loads((run_dir / "train_spec.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (
        spec.get("dataset_rev") == versioned["dataset_rev"]
        and spec.get("train") == json.loads(json.dumps(train_settings(cfg)))
        and spec.get("base_model_dir") == prepared["base_model_dir"]
        and spec.get("base_model_sha256") == prepared.get("base_model_sha256")
    )
    outputs = [saved.get("adapter_dir") or saved.get("model_dir")]
    return saved if same and all(p and Path(p).exists() for p in outputs) else None


def stage_train(run_id: str, prepared: dict, versioned: dict, *, warm_start: dict | None = None) -> dict:
    """Check out the versioned dataset (what a GPU worker does) and launch the recipe under torchrun.

    `warm_start` ({"source", "adapter_dir"?, "reason"?}) is recorded in the result; with an
    "adapter_dir" training starts from that adapter's weights."""

    def train() -> dict:
        from tasks.common.tracking import pipeline_mlflow_run
        from tasks.data.version import checkout_dataset

        cfg, paths = run_config(run_id), Paths()
        run_dir = paths.run_dir(run_id)
        checkout = run_dir / "dataset"
        if checkout.exists():  # a retried task starts from a clean checkout
            import shutil

            shutil.rmtree(checkout)
        from tasks.data.splits import split_audit_holdout

        data_path = checkout_dataset(
            registry_dir=paths.datasets, remote_dir=paths.dvc_remote, rev=versioned["dataset_rev"], out_dir=checkout
        )
        # Records kept out of training, so the membership-inference test has true non-members.
        subject_entity = cfg.privacy.subject_entity if cfg.privacy.unit == "subject" else None
        split = split_audit_holdout(
            data_path, run_dir / "split", cfg.train.audit_holdout_share, subject_entity=subject_entity
        )
        spec = {
            "train": train_settings(cfg),  # with the privacy unit's settings under privacy.unit: subject
            "base_model_dir": prepared["base_model_dir"],
            "base_model_sha256": prepared.get("base_model_sha256"),
            "data_path": split["train_path"],
            "out_dir": str(run_dir / "train"),
            "dataset_rev": versioned["dataset_rev"],
            "init_adapter_dir": (warm_start or {}).get("adapter_dir"),
            "mlflow": {
                "home": str(paths.home),
                "run_name": safe_run_id(run_id),
                "run_id": pipeline_mlflow_run(paths, run_id),
            },
        }
        plan = privacy_plan(spec)
        entry = reserve_privacy_budget(
            run_id,
            cfg,
            spec,
            dataset_rev=versioned["dataset_rev"],
            plan=plan,
            dag_id=prepared.get("dag_id", "privacy_finetune"),
        )
        if plan.get("mechanism"):  # the recipe runs exactly what the ledger was charged for, without searching again
            from tasks.train.dp import DP_INPUTS

            spec["dp_mechanism"] = {
                "units": plan["units"],
                "mechanism": plan["mechanism"],
                "inputs": {k: spec["train"].get(k) for k in DP_INPUTS},
            }
        spec_path = run_dir / "train_spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        launch_torchrun(spec_path, train_cfg=spec["train"], run_id=run_id, log_path=run_dir / "train" / "torchrun.log")
        result = json.loads((run_dir / "train" / "train_result.json").read_text())
        result["privacy_ledger"] = ledger_summary(cfg, entry, result.get("mlflow_run_id"))
        result["split"] = split
        if warm_start:
            result["warm_start"] = {**(result.get("warm_start") or {}), **warm_start}
        return result

    return timed(run_id, "train", train)


def stage_evaluate(run_id: str, prepared: dict, trained: dict) -> dict:
    """Quality for base, fine-tuned and champion side by side; toxicity; PII leakage, canary exposure and
    membership inference on the fine-tuned model; the HELM-style report (tasks/eval/evidence.py)."""
    from tasks.eval.evidence import gather
    from tasks.release.registry import download_champion

    def evaluate() -> dict:
        cfg, paths = run_config(run_id), Paths()
        champion_dir = paths.run_dir(run_id) / "eval" / "champion_model"
        shutil.rmtree(champion_dir, ignore_errors=True)
        champion = download_champion(paths, cfg.registry.model_name, champion_dir)
        metrics = gather(run_id, cfg, paths, prepared, trained, champion)
        if trained.get("mlflow_run_id"):
            _log_eval_metrics(paths, trained["mlflow_run_id"], metrics)
        return metrics

    return timed(run_id, "evaluate", evaluate)


def _adapter(trained: dict) -> Path | None:
    return Path(trained["adapter_dir"]) if trained.get("adapter_dir") else None


EVAL_METRICS = (
    "exact_match_gain",
    "exact_match_below_base",
    "regression_vs_champion",
    "toxicity_rate",
    "identity_gap",
    "pii_leaks",
    "canary_exposure_max",
    "mia_auc",
)


def _log_eval_metrics(paths: Paths, mlflow_run_id: str, metrics: dict) -> None:
    import mlflow

    from tasks.common.tracking import mlflow_experiment

    mlflow_experiment(paths)
    flat = {
        f"{model}_{k}": v
        for model in ("base", "finetuned", "champion")
        for k, v in (metrics.get(model) or {}).items()
        if isinstance(v, (int, float)) and k != "n"
    }
    flat.update({k: metrics[k] for k in EVAL_METRICS if isinstance(metrics.get(k), (int, float))})
    for split, figures in (metrics.get("qa_splits") or {}).items():  # validation and test EM, base and fine-tuned
        flat.update(
            {f"{split}_{model}_exact_match": figures[model]["exact_match"]["mean"] for model in ("base", "finetuned")}
        )
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({k: float(v) for k, v in flat.items()})


def stage_register(run_id: str, prepared: dict, versioned: dict, trained: dict, evaluated: dict) -> dict:
    """A new registry version with alias `challenger`, tagged with lineage and evidence, with its model card."""
    from tasks.release.decision import refresh_model_card
    from tasks.release.registry import register_model

    cfg, paths = run_config(run_id), Paths()
    tags = {
        "pipeline_run_id": run_id,
        "dataset_rev": versioned["dataset_rev"],
        "dataset_md5": versioned["dvc_md5"],
        "method": trained["method"],
        "dp": str(trained["dp"]).lower(),
        "privacy": trained.get("privacy"),
        "ledger_spent_epsilon": (trained.get("privacy_ledger") or {}).get("spent_epsilon"),  # tight
        "ledger_basic_epsilon": (trained.get("privacy_ledger") or {}).get("basic_epsilon"),  # the sum, upper bound
        "epsilon": trained["epsilon"],
        "delta": trained["delta"],
        "trainable_pct": trained["trainable_pct"],
        "base_model": Path(prepared["base_model_dir"]).name,
        "base_model_sha256": prepared.get("base_model_sha256"),
        "dp_noise": trained.get("noise_source"),
        "exact_match": evaluated["finetuned"]["exact_match"],
        "f1": evaluated["finetuned"]["f1"],
        "base_exact_match": evaluated["base"]["exact_match"],
        "toxicity_rate": evaluated["toxicity_rate"],
        **{k: evaluated.get(k) for k in ("pii_leaks", "canary_exposure_max", "mia_auc")},
    }
    metrics = {
        "exact_match": evaluated["finetuned"]["exact_match"],
        "f1": evaluated["finetuned"]["f1"],
        "toxicity_rate": evaluated["toxicity_rate"],
    }
    result = timed(
        run_id,
        "register",
        register_model,
        paths=paths,
        model_name=cfg.registry.model_name,
        alias=cfg.registry.alias,
        base_model_dir=Path(trained.get("model_dir") or prepared["base_model_dir"]),
        adapter_dir=_adapter(trained),
        mlflow_run_id=trained.get("mlflow_run_id"),
        tags={k: "" if v is None else str(v) for k, v in tags.items()},
        metrics=metrics,
    )
    refresh_model_card(paths, paths.run_dir(run_id), cfg)
    return result


def stage_gates(
    run_id: str,
    evaluated: dict,
    registered: dict,
    trained: dict,
    *,
    dag_id: str = "privacy_finetune",
    base_url: str = "",
) -> dict:
    """Check the promotion gates; save the outcome (and the reviewer's summary) before failing a gated run."""
    from mlflow import MlflowClient

    from tasks.common.tracking import mlflow_experiment
    from tasks.release.decision import approval_body, report_url
    from tasks.release.gates import check_gates, enforce, reproducible_noise

    cfg, paths = run_config(run_id), Paths()
    outcome = check_gates({**evaluated, "reproducible_noise": reproducible_noise(trained)}, cfg.gates)
    for g in outcome["gates"]:
        log.info("gate %-22s %-13s value %s threshold %s", g["name"], g["status"], g["value"], g["threshold"])
    link = report_url(dag_id, run_id, base_url=base_url)
    result = {
        **outcome,
        "require_approval": cfg.registry.require_approval,
        "report_url": link,
        "approval_body": approval_body(
            evaluated=evaluated, gates=outcome, registered=registered, trained=trained, report_link=link
        ),
    }
    save_stage(run_id, "gates", result)
    mlflow_experiment(paths)
    MlflowClient().set_model_version_tag(
        registered["model_name"], str(registered["version"]), "gates", outcome["status"]
    )
    if outcome["status"] == "gated":
        from tasks.release.decision import refresh_model_card

        refresh_model_card(paths, paths.run_dir(run_id), cfg)
    enforce(outcome)  # raises PromotionGated, naming every failed gate
    return result


def stage_decide(run_id: str, registered: dict, approval: dict | None) -> dict:
    """Apply the decision: promote to champion (approved, or gates only) or record the rejection."""
    from tasks.release.decision import decision_from_approval, refresh_model_card
    from tasks.release.registry import promote, record_rejection

    cfg, paths = run_config(run_id), Paths()
    decision = decision_from_approval(approval)
    if decision["outcome"] == "promoted":
        registry = promote(
            paths=paths,
            model_name=registered["model_name"],
            version=int(registered["version"]),
            champion_alias=cfg.registry.champion_alias,
            approved_by=decision["by"],
            approval=decision["approval"],
            comment=decision["comment"],
        )
    else:
        registry = record_rejection(
            paths=paths,
            model_name=registered["model_name"],
            version=int(registered["version"]),
            rejected_by=decision["by"] or "unknown",
            comment=decision["comment"],
        )
    log.info(
        "decision: %s v%s %s (%s)",
        registered["model_name"],
        registered["version"],
        decision["outcome"],
        decision["approval"],
    )
    result = save_stage(
        run_id,
        "decision",
        {**decision, "model_name": registered["model_name"], "version": registered["version"], "registry": registry},
    )
    refresh_model_card(paths, paths.run_dir(run_id), cfg)
    return result


def stage_report(run_id: str, *, strict: bool = True) -> dict:
    """Write the report; with `strict`, then fail if a stage did not complete, so the run shows as failed."""
    from tasks.release.report import write_report

    result = write_report(Paths().run_dir(run_id))
    if strict and result["outcome"] == "gated":
        raise RuntimeError(f"run gated: the model was not promoted (reasons in {result['report_path']})")
    if strict and not result["complete"]:
        raise RuntimeError(
            f"run incomplete ({result['outcome']}), report written to {result['report_path']}; "
            f"missing: {', '.join(result['missing_fields'])}"
        )
    return result


def run_all(run_id: str, params: dict[str, Any] | None = None) -> dict:
    """The whole pipeline in one process, without Airflow (debugging, containers)."""
    prepared = stage_prepare(run_id, params)
    ingested = stage_ingest(run_id)
    stage_validate(run_id, ingested)
    masked = stage_mask(run_id, ingested)
    versioned = stage_version(run_id, masked)
    trained = stage_train(run_id, prepared, versioned)
    evaluated = stage_evaluate(run_id, prepared, trained)
    registered = stage_register(run_id, prepared, versioned, trained, evaluated)
    stage_gates(run_id, evaluated, registered, trained)
    if run_config(run_id).registry.require_approval:
        log.info(
            "approval required: v%s stays challenger; approve in Airflow, or promote with "
            "`python -m tasks.release.registry promote`",
            registered["version"],
        )
    else:
        stage_decide(run_id, registered, None)
    return stage_report(run_id)


def main() -> None:
    parser = cli_parser("Run the PrivateTune pipeline in one process (no Airflow).")
    parser.add_argument("--run-id", default=f"cli_{time.strftime('%Y%m%dT%H%M%S')}")
    args = parser.parse_args()
    print(json.dumps(run_all(args.run_id, cli_params(args)), indent=2))


if __name__ == "__main__":
    main()
