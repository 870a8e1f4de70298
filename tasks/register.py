"""Register a fine-tuned model in the MLflow model registry.

Logs an MLflow pyfunc (`tasks/pyfunc_model.py`, a model from code) whose
artifacts are the base model directory and the PEFT adapter, registers it as a
new version of `model_name`, tags the version (dataset revision, privacy
budget, metrics: whatever the caller passes) and points an alias at it
(`challenger` by default; promotion to `champion` happens after approval).

Offline by construction: pip requirements are pinned explicitly from the
installed versions, so MLflow never resolves packages, and the tracking store
is the local one from `tasks.tracking.mlflow_experiment`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from tasks import offline
from tasks.config import Paths
from tasks.tracking import mlflow_experiment

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT_NAME = "model"
# What the pyfunc imports at load time; pinned to what this environment runs.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "peft", "safetensors", "pandas")


def pip_requirements(packages: Sequence[str] = SERVING_PACKAGES) -> list[str]:
    """Exact pins from importlib.metadata; a local label (torch "+cpu") is dropped so a CUDA build also satisfies it."""
    return [f"{name}=={metadata.version(name).split('+', 1)[0]}" for name in packages]


def _check_dir(path: Path, what: str, must_hold: str) -> Path:
    path = Path(path)
    if not (path / must_hold).is_file():
        raise FileNotFoundError(
            f"{what} directory {path} has no {must_hold}; pass the folder written by save_pretrained"
        )
    return path


def _quiet_mlflow() -> None:
    # MLflow logs INFO lines (alembic migrations) and progress bars per call; keep task logs readable.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def register_model(
    *,
    paths: Paths,
    model_name: str,
    alias: str = "challenger",
    base_model_dir: Path,
    adapter_dir: Path | None,
    mlflow_run_id: str | None,
    tags: Mapping[str, object],
    metrics: Mapping[str, float],
) -> dict:
    """Log the pyfunc in the run (or a new run), register a version, tag it, set the alias.

    `metrics` are logged on the run and linked to the logged model; `tags` are
    set on the model version with values as strings. Returns plain JSON-able
    identifiers only.
    """
    offline.apply()
    _quiet_mlflow()
    base_model_dir = _check_dir(base_model_dir, "base model", "config.json")
    # full / freeze fine-tuning save whole weights: base_model_dir is then the tuned model, no adapter
    adapter_dir = _check_dir(adapter_dir, "adapter", "adapter_config.json") if adapter_dir else None
    experiment_id = mlflow_experiment(paths)

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "question")]), outputs=Schema([ColSpec("string")]))
    input_example = pd.DataFrame({"question": ["What is the out-of-network deductible?"]})

    active = mlflow.active_run()
    if mlflow_run_id is not None and active is not None and active.info.run_id == mlflow_run_id:
        run_ctx = _NoEnd(active)  # already inside the caller's run: log there, leave it open
    elif mlflow_run_id is not None:
        run_ctx = mlflow.start_run(run_id=mlflow_run_id, nested=active is not None)
    else:
        run_ctx = mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{model_name}",
                                   nested=active is not None)

    with run_ctx as run:
        run_id = run.info.run_id
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={"base_model": str(base_model_dir), **({"adapter": str(adapter_dir)} if adapter_dir else {})},
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)

    str_tags = {str(k): str(v) for k, v in tags.items()}
    version = mlflow.register_model(info.model_uri, model_name, tags=str_tags)
    MlflowClient().set_registered_model_alias(model_name, alias, version.version)
    return {
        "model_name": model_name,
        "version": int(version.version),
        "alias": alias,
        "run_id": run_id,
        "model_uri": f"models:/{model_name}/{version.version}",
    }


class _NoEnd:
    """Context manager yielding an already-active run without ending it on exit."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        return self.run

    def __exit__(self, *exc) -> bool:
        return False


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--{what} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.register", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="data root (default: $PFT_HOME or .local)")
    parser.add_argument("--model-name", default="privatetune-domain-lm")
    parser.add_argument("--alias", default="challenger")
    parser.add_argument("--base-model", type=Path, required=True, help="HF causal-LM directory")
    parser.add_argument("--adapter", type=Path, required=True, help="PEFT LoRA adapter directory")
    parser.add_argument("--mlflow-run-id", default=None, help="log into this run (default: a new run)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="model version tag")
    parser.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE", help="numeric metric")
    args = parser.parse_args(argv)
    metrics = {k: float(v) for k, v in _parse_pairs(args.metric, "metric").items()}
    result = register_model(
        paths=Paths(args.home), model_name=args.model_name, alias=args.alias,
        base_model_dir=args.base_model, adapter_dir=args.adapter, mlflow_run_id=args.mlflow_run_id,
        tags=_parse_pairs(args.tag, "tag"), metrics=metrics,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
