"""MLflow for a training run (rank 0 only, and only when the spec names an MLflow home): the run with its
privacy tags, the hyperparameters, a metric line per step, and the final figures and curves."""

from __future__ import annotations

from pathlib import Path

from tasks.train.dp import noise_source
from tasks.train.methods import resolve_targets, uses_targets


def start_run(spec: dict):
    """The pipeline's MLflow run (spec.mlflow.run_id), or a new one in the project experiment; None without MLflow."""
    if not spec.get("mlflow"):
        return None
    import mlflow

    from tasks.common.tracking import mlflow_experiment
    from tasks.config import Paths

    experiment_id = mlflow_experiment(Paths(Path(spec["mlflow"]["home"])))
    dp = spec["train"]["dp"]
    tags = {
        "dataset_rev": spec.get("dataset_rev", ""),
        "dp": str(dp).lower(),
        "privacy": "DP" if dp else "NON-PRIVATE",
        "train_method": spec["train"]["method"],
        "dp_noise": noise_source(spec["train"]) or "none",
        "base_model_sha256": spec.get("base_model_sha256") or "",
    }
    if spec["mlflow"].get("run_id"):  # the pipeline's run, shared with the data and evaluation stages
        run = mlflow.start_run(run_id=spec["mlflow"]["run_id"])
        mlflow.set_tags(tags)
        return run
    return mlflow.start_run(
        experiment_id=experiment_id,
        run_name=spec["mlflow"].get("run_name"),
        tags={"pipeline_run_id": spec["mlflow"].get("run_name", ""), **tags},
    )


def log_params(
    spec: dict,
    *,
    n: int,
    delta: float,
    noise: float,
    trainable: int,
    total: int,
    accountant: str | None,
    mode: str | None,
    model_type: str,
) -> None:
    """The method's hyperparameters (only those that apply to it) and the mechanism actually run."""
    import mlflow

    t = spec["train"]
    params = {
        k: t[k]
        for k in (
            "method",
            "epochs",
            "batch_size",
            "physical_batch_size",
            "learning_rate",
            "max_seq_len",
            "dp",
            "target_epsilon",
            "max_grad_norm",
            "seed",
            "secure_noise",
        )
    }
    if uses_targets(t):
        targets = resolve_targets(t["target_modules"], model_type, t["method"])
        params["target_modules"] = targets if isinstance(targets, str) else ",".join(targets)
    if t["method"] == "lora" or (t["method"] == "freeze" and t["freeze_with_lora"]):
        params.update({k: t[k] for k in ("lora_r", "lora_alpha", "lora_dropout")})
    if t["method"] == "lora":
        params["lora_train_a"] = t.get("lora_train_a", True)
    if t["method"] == "prefix":
        params["num_virtual_tokens"] = t["num_virtual_tokens"]
    if t["method"] == "freeze":
        params.update({"trainable_layers": t["trainable_layers"], "freeze_with_lora": t["freeze_with_lora"]})
    params.update(
        {
            "optimizer": t.get("optimizer", "adamw"),
            "records": n,
            "delta": delta,
            "accountant": accountant or "none",
            "grad_sample_mode": mode or "none",
            "noise_multiplier": round(noise, 5),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_pct": round(100 * trainable / total, 3),
            "base_model": Path(spec["base_model_dir"]).name,
            "dataset_rev": spec.get("dataset_rev", ""),
        }
    )
    mlflow.log_params(params)


def log_step(run, step: int, **metrics: float) -> None:
    """One step's metrics (loss, ε, tokens/s, lr); nothing without a run."""
    if run is None:
        return
    import mlflow

    mlflow.log_metrics(metrics, step=step)


def finish_run(run, result: dict, plots: list[Path], *, epsilon: float) -> None:
    """Final ε (unrounded) and trainable share, the curves as artifacts, and the run's end; nothing without a run."""
    if run is None:
        return
    import mlflow

    mlflow.log_metrics(
        {
            "final_epsilon": epsilon,
            "trainable_pct": result["trainable_pct"],
            "trainable_params": result["trainable_params"],
        }
    )
    for plot in plots:
        mlflow.log_artifact(str(plot), artifact_path="training")
    mlflow.end_run()
