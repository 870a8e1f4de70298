"""A run with nothing to ingest fails at once, visibly, with a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import random_llama

pytestmark = pytest.mark.slow  # a dag.test() run (and the session's `airflow db migrate`)

REPO = Path(__file__).resolve().parents[2]


def test_empty_landing_fails_the_run_at_once(tmp_path, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    model = random_llama(tmp_path / "model")
    monkeypatch.setenv("PFT_HOME", str(home))
    config = tmp_path / "pipeline.yaml"  # the base model is the deployment's choice, not a trigger's
    config.write_text(f"extends: {REPO / 'include' / 'config' / 'pipeline.yaml'}\nbase_model:\n  path: {model}\n")
    monkeypatch.setenv("PFT_CONFIG", str(config))
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["privacy_finetune"]
    dag_run = dag.test(run_conf={})

    assert "failed" in str(dag_run.state).lower()
    states = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert "success" in str(states["prepare"].state).lower()
    ingest = states["ingest"]
    assert "failed" in str(ingest.state).lower()
    assert ingest.try_number == 1  # no retry burnt on a permanent input error
    for task_id in ("mask_plan", "mask_shard", "mask", "version"):  # nothing masked, nothing published
        assert "upstream_failed" in str(states[task_id].state).lower(), task_id
    # The report is still written, and says where the run stopped.
    report = json.loads(next((home / "runs").glob("*/report.json")).read_text())
    assert report["stages"]["ingest"] == "not run" and report["complete"] is False
