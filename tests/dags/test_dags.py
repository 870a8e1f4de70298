"""DAG integrity: the folder imports cleanly and every DAG is documented, tagged and retried."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"privacy_finetune", "monthly_refinetune"} <= set(dagbag.dags)


def test_every_dag_has_tags_docs_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no doc_md for the UI"
        for t in dag.tasks:
            if t.task_id not in ("report", "previous_month_done"):  # the sensor's timeout is its retry
                assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"


def test_privacy_finetune_flow(dagbag):
    dag = dagbag.dags["privacy_finetune"]
    order = [
        "prepare",
        "ingest",
        "validate",
        "mask_plan",
        "mask_shard",
        "mask",
        "version",
        "train",
        "evaluate",
        "register",
        "gates",
        "approval_route",
        "approve",
        "decide",
        "report",
    ]
    assert set(order) | {"gates_only"} == set(dag.task_ids)
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).get_flat_relative_ids(upstream=False)
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")


def test_monthly_refinetune_is_a_sequential_monthly_cron(dagbag):
    """1st of the month (config monthly.schedule), one run at a time, each month's dataset built before training."""
    from airflow.timetables.trigger import CronTriggerTimetable

    from tasks.config import load_config

    dag = dagbag.dags["monthly_refinetune"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.summary == load_config().monthly.schedule == "0 3 1 * *"
    assert dag.max_active_runs == 1 and dag.catchup is False
    order = [
        "previous_month_done",
        "prepare",
        "ingest",
        "validate",
        "mask_plan",
        "mask_shard",
        "mask",
        "dataset",
        "version",
        "train",
        "evaluate",
        "register",
        "gates",
        "approval_route",
        "approve",
        "decide",
        "report",
    ]
    assert set(order) | {"gates_only"} == set(dag.task_ids)
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).get_flat_relative_ids(upstream=False)
    train = dag.get_task("train")
    assert (train.queue, train.pool) == ("gpu", "gpu")
    assert "month" in dag.params and "require_approval" in dag.params


def test_approval_waits_for_the_reviewer_not_the_task_timeout(dagbag):
    """The HITL task's deadline is its response_timeout (days); a 2-hour execution_timeout would expire it."""
    for dag_id in ("privacy_finetune", "monthly_refinetune"):
        approve = dagbag.dags[dag_id].get_task("approve")
        assert approve.execution_timeout is None and approve.response_timeout.days >= 1
        assert dagbag.dags[dag_id].get_task("train").execution_timeout.total_seconds() >= 6 * 3600


def test_promotion_waits_for_gates_and_an_approval_when_required(dagbag):
    """gates → branch: approve (HITL) or gates_only → decide (champion); a rejection skips decide and the
    report task (all_done) still runs and records it."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags["privacy_finetune"]
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)  # RecordedApprovalOperator keeps rejections too
    assert "comment" in approve.params and "approval_body" in approve.body
    assert dag.get_task("approval_route").downstream_task_ids == {"approve", "gates_only"}
    decide = dag.get_task("decide")
    assert {"approve", "gates_only"} <= decide.upstream_task_ids
    assert decide.trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("report").trigger_rule == "all_done"
    assert "require_approval" in dag.params


def test_masking_is_mapped_over_the_planned_shards(dagbag):
    """One mask_shard task instance per shard (dynamic task mapping), so Celery workers share the masking."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dagbag.dags["privacy_finetune"]
    shard = dag.get_task("mask_shard")
    assert isinstance(shard, MappedOperator)
    expanded = shard.op_kwargs_expand_input.value  # expanded over the plan; the run config is partial
    assert set(expanded) == {"shard"} and expanded["shard"].operator.task_id == "mask_plan"
    assert set(shard.partial_kwargs["op_kwargs"]) == {"prepared"}
    assert shard.retries >= 1 and shard.map_index_template
    merge = dag.get_task("mask")
    assert {"mask_plan", "mask_shard"} <= merge.upstream_task_ids
    assert not isinstance(merge, MappedOperator)


def test_version_publishes_the_dataset_asset(dagbag):
    from airflow.sdk import Asset

    from tasks.airflow.assets import MASKED_DATASET

    dag = dagbag.dags["privacy_finetune"]
    assert dag.get_task("version").outlets == [MASKED_DATASET]
    assert isinstance(MASKED_DATASET, Asset)
    assert (MASKED_DATASET.name, MASKED_DATASET.uri) == ("privatetune-masked-dataset", "privatetune://datasets/masked")
    for task_id in set(dag.task_ids) - {"version"}:
        assert not dag.get_task(task_id).outlets, task_id


@pytest.mark.parametrize("dag_file", ["privacy_finetune.py", "monthly_refinetune.py"])
def test_dag_file_parses_fast(dag_file):
    """Heavy libraries (torch, transformers, presidio, GX) are imported inside tasks, not at parse time."""
    import subprocess
    import sys

    code = (
        f"import sys, time; t = time.time(); import runpy; runpy.run_path('dags/{dag_file}'); "
        "heavy = [m for m in ('torch', 'transformers', 'presidio_analyzer', 'great_expectations', 'mlflow', 'opacus')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=DAGS.parent, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
