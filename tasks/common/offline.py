"""Run-time settings that keep every library off the network.

Imported (and `apply()`d) by the DAG, every `python -m tasks.*` entrypoint and the
tests, before any library that might phone home is imported.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    # Hugging Face: never resolve a model, tokenizer or dataset from a hub.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_EVALUATE_OFFLINE": "1",
    # Telemetry: DVC, MLflow, Great Expectations (1.24 ships no analytics module,
    # the variable is kept for older 1.x), Airflow usage data, generic opt-out.
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    "SCARF_ANALYTICS": "false",
    "DO_NOT_TRACK": "true",
    # Quieter, deterministic subprocesses.
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_TERMINAL_PROMPT": "0",
}


def apply() -> None:
    """Set the offline variables unless the operator set them explicitly."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
