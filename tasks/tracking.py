"""MLflow setup shared by the stages: one tracking store and artifact root under PFT_HOME."""

from __future__ import annotations

from tasks import offline
from tasks.config import Paths

EXPERIMENT = "privacy_finetune"


def mlflow_experiment(paths: Paths, name: str = EXPERIMENT) -> str:
    """Point MLflow at the embedded store and return the experiment id (created on first use)."""
    offline.apply()
    import mlflow

    paths.mlflow.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.set_registry_uri(paths.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=paths.mlflow_artifacts.as_uri())
