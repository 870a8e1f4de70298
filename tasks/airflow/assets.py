"""Airflow Assets PrivateTune publishes, defined once so that downstream DAGs can schedule on them.

    from tasks.airflow.assets import MASKED_DATASET

    @dag(schedule=[MASKED_DATASET], ...)      # runs after each new dataset version event

Each successful `version` task of `privacy_finetune` emits an event on MASKED_DATASET whose
`extra` holds the DVC revision, md5, tag, run id and counts (see `dataset_event_extra`): never
record text. A consumer reads it from `triggering_asset_events` and checks the revision out of
the data registry (`tasks.data.version.checkout_dataset`).
"""

from __future__ import annotations

from airflow.sdk import Asset

MASKED_DATASET = Asset(
    name="privatetune-masked-dataset",
    uri="privatetune://datasets/masked",
    group="privatetune",
)


def dataset_event_extra(run_id: str, versioned: dict, masked: dict) -> dict:
    """The event's extra: where to find the version and how large it is (ids and counts only)."""
    return {
        "dataset_rev": versioned["dataset_rev"],
        "dvc_md5": versioned["dvc_md5"],
        "tag": versioned.get("tag"),
        "dataset_path": versioned.get("dataset_path"),
        "created": bool(versioned.get("created")),
        "pipeline_run_id": run_id,
        "rows": masked["rows"],
        "entities_total": masked["entities_total"],
        "shards": masked.get("shards"),
    }
