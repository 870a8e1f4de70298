"""MLflow setup shared by the stages: one tracking store and artifact root under PFT_HOME."""

from __future__ import annotations

import os

from tasks.common import offline
from tasks.config import Paths

EXPERIMENT = "privacy_finetune"


def mlflow_experiment(paths: Paths, name: str = EXPERIMENT) -> str:
    """Point MLflow at the embedded store and return the experiment id (created on first use)."""
    offline.apply()
    import mlflow

    paths.mlflow.mkdir(parents=True, exist_ok=True)
    deployment_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.set_registry_uri(paths.mlflow_tracking_uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which Paths reads as "the deployment names a
    # server": left there, the first data root's store would win for every later Paths in this process.
    if deployment_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = deployment_uri
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if paths.mlflow_tracking_uri.startswith(("http://", "https://")):
        # A tracking server (compose) keeps artifacts in its own store (MinIO), reachable by every service.
        return mlflow.create_experiment(name)
    return mlflow.create_experiment(name, artifact_location=paths.mlflow_artifacts.as_uri())


def pipeline_mlflow_run(paths: Paths, run_id: str) -> str:
    """The one MLflow run of a pipeline run: found by tag, created on first use.

    Every stage (validation Data Docs, masking counts, dataset revision, training
    curves, evaluation) logs into it, and a retried task finds the same run instead of
    starting a second one.
    """
    from mlflow import MlflowClient

    from tasks.config import safe_run_id

    experiment_id = mlflow_experiment(paths)
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.pipeline_run_id = '{safe_run_id(run_id)}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=safe_run_id(run_id), tags={"pipeline_run_id": safe_run_id(run_id)})
    return run.info.run_id
