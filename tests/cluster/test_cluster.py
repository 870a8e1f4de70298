"""`make cluster` for real: Postgres, Redis, the S3 server, the MLflow server, Airflow on the
CeleryExecutor and two Celery workers, as native processes on a temporary PFT_HOME.

One run of `privacy_finetune` (the tiny model) goes through the real scheduler under two faults:
Redis stopped for a few seconds while the masking shards run, and the `gpu` worker SIGKILLed
mid-training and started again. Every assertion is about that run. Timings and what happened go to
test-artifacts/cluster/ (PFT_TEST_ARTIFACTS overrides) with the component and task logs; on a
failure the cluster's home is kept and named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tasks.cluster import control
from tasks.cluster import services as svc
from tasks.cluster.topology import Cluster
from tests.airflow_live import AirflowClient
from tests.helpers import write_pipeline_config

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "privacy_finetune"
RECORDS = 300
# The browser test's shrunk config, plus: four shards, so both workers get some, and a training long
# enough (checkpoints every 2 of ~28 steps) to be killed in the middle of.
CLUSTER_CONFIG = {
    "mask": {"workers": 1, "shard_rows": 75},
    "synth": {"n_records": RECORDS},
    "train": {
        "target_delta": 1e-5,
        "batch_size": 16,
        "physical_batch_size": 16,
        "epochs": 1.5,
        "checkpoint_every": 2,  # noise from the CSPRNG, as configured: the gates refuse seeded noise
    },
    "evaluate": {"canary_candidates": 50, "mia_records": 20, "toxicity_max_new_tokens": 8, "leakage_max_new_tokens": 8},
    "gates": {
        "max_mia_auc": None,
        "max_canary_exposure": None,
        "min_exact_match_gain": None,
        "not_worse_than_base": False,
    },
    "registry": {"require_approval": False},
}
# A dead worker's task is found by its missing heartbeat; the default (300 s) would idle the test.
AIRFLOW_OVERRIDES = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
}
RUN_TIMEOUT_S = 1200
CONF = {"qa_limit": 8}  # the trigger form's field (a Param): 8 questions per split, as the browser test
REDIS_OUTAGE_S = 5

MISSING = [name for name in ("redis-server",) if shutil.which(name) is None]
try:
    svc.pg_tool("initdb")
except FileNotFoundError:
    MISSING.append("initdb (postgresql)")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{', '.join(MISSING)} not installed: apt-get install postgresql redis-server "
        "(Debian's packages; .ci/run installs them when apt works)",
    ),
]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("PFT_TEST_ARTIFACTS") or REPO / "test-artifacts") / "cluster"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _synth(home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.demo.synth", "--home", str(home), "--records", str(RECORDS)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PFT_HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def cluster(request, tiny_base_model):
    # Postgres runs as its own OS user when the tests run as root: the home must be reachable by it
    # (pytest's tmp folders are owner-only).
    home = Path(tempfile.mkdtemp(prefix="pft-cluster-"))
    home.chmod(0o711)
    _synth(home)
    c = Cluster.at(home)
    c.settings.pft_config = str(write_pipeline_config(home / "cluster-pipeline.yaml", tiny_base_model, CLUSTER_CONFIG))
    c.settings.airflow_overrides = AIRFLOW_OVERRIDES
    c.settings.save(c.state)
    said: list[str] = []
    failed_before = request.session.testsfailed
    started = time.monotonic()
    try:
        control.up(c, say=said.append)
        up_s = time.monotonic() - started
        again = time.monotonic()
        control.up(c, say=said.append)  # idempotent: everything is found up
        client = AirflowClient(c.api_url, {"admin": c.settings.admin_password}, c.airflow_env(), home, c.airflow_home)
        client.wait_for_dag(DAG_ID)
        client.unpause(DAG_ID)
        yield {"cluster": c, "client": client, "said": said, "up_s": up_s, "second_up_s": time.monotonic() - again}
    finally:
        control.down(c, say=said.append)
        out = artifacts_dir()
        (out / "up.txt").write_text("\n".join(said) + "\n")
        for logs, name in ((c.state / "logs", "logs"), (c.airflow_home / "logs", "task-logs")):
            shutil.rmtree(out / name, ignore_errors=True)
            if logs.is_dir():
                shutil.copytree(logs, out / name)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"cluster home kept for inspection: {home}")


def _task_instances(client: AirflowClient, run_id: str) -> list[dict]:
    return client.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})["task_instances"]


def _report(c: Cluster, run_id: str) -> dict:
    from tasks.config import Paths

    return json.loads((Paths(c.home).run_dir(run_id) / "report.json").read_text())


def test_every_service_came_up_healthy_and_a_second_up_found_them_up(cluster):
    assert all(control.status(cluster["cluster"]).values()), control.status(cluster["cluster"])
    said = cluster["said"]
    assert sum("already up" in line for line in said) == 7, said  # the second `up` started nothing
    assert any("no CUDA device" in line or "CUDA device(s)" in line for line in said), said


def test_masking_shards_ran_on_both_workers(faulted_run):
    shards = [ti for ti in faulted_run["tis"] if ti["task_id"] == "mask_shard"]
    assert len(shards) >= 4, [ti["map_index"] for ti in shards]
    assert {ti["hostname"] for ti in shards} == {"cpu-worker", "gpu-worker"}, [ti["hostname"] for ti in shards]
    assert {ti["queue"] for ti in shards} == {"default"}


def test_training_ran_on_the_gpu_queue_worker(faulted_run):
    (train,) = [ti for ti in faulted_run["tis"] if ti["task_id"] == "train"]
    assert (train["queue"], train["hostname"], train["state"]) == ("gpu", "gpu-worker", "success")


def test_the_model_version_is_in_the_mlflow_servers_registry_with_artifacts_in_the_bucket(cluster, faulted_run):
    from mlflow import MlflowClient

    c: Cluster = cluster["cluster"]
    registry = MlflowClient(tracking_uri=c.mlflow_url, registry_uri=c.mlflow_url)
    name = _report(c, faulted_run["run_id"])["register"]["model_name"]
    versions = registry.search_model_versions(f"name = '{name}'")
    assert versions, "no model version on the MLflow server"
    keys = [o["Key"] for o in svc.s3_client(c).list_objects_v2(Bucket=c.settings.mlflow_bucket).get("Contents", [])]
    assert keys and all(k.startswith("artifacts/") for k in keys), keys[:5]
    model_ids = {v.model_id for v in versions if getattr(v, "model_id", None)} | {v.run_id for v in versions}
    assert any(mid and mid in key for key in keys for mid in model_ids), (model_ids, keys[:20])
    # Nothing fell back to a local file store: the home holds no mlruns/ or MLflow SQLite DB.
    assert not list(c.home.glob("mlflow/*.db")) and not list(c.home.rglob("mlruns"))


def test_a_fresh_clone_pulls_the_dataset_from_the_s3_remote(cluster, faulted_run, tmp_path, monkeypatch):
    from tasks.data.version import DATASET_PATH, checkout_dataset

    c: Cluster = cluster["cluster"]
    for name, value in c.dvc_remote_env().items():
        monkeypatch.setenv(name, value)
    tag = _report(c, faulted_run["run_id"])["version"]["tag"]
    # The test's own copy of the cache is not consulted: the clone has none, and the local remote folder is empty.
    pulled = checkout_dataset(registry_dir=c.home / "datasets", remote_dir=tmp_path / "no-local-remote", rev=tag,
                              out_dir=tmp_path / "clone")  # fmt: skip
    pinned = yaml.safe_load((tmp_path / "clone" / f"{DATASET_PATH}.dvc").read_text())["outs"][0]["md5"]
    assert hashlib.md5(pulled.read_bytes()).hexdigest() == pinned
    keys = [o["Key"] for o in svc.s3_client(c).list_objects_v2(Bucket=c.settings.dvc_bucket).get("Contents", [])]
    assert any(k.endswith(pinned[2:]) for k in keys), keys


def test_the_ledger_entry_is_in_postgres(cluster, faulted_run):
    from tasks.train.ledger import entries

    c: Cluster = cluster["cluster"]
    mine = [e for e in entries(url=c.postgres_url(c.settings.ledger_db)) if e.run_id.endswith(faulted_run["run_id"])]
    assert len(mine) == 1 and mine[0].private and mine[0].epsilon > 0, mine


def _pg_dumps(c: Cluster, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    dumps = []
    for db in (c.settings.postgres_db, c.settings.mlflow_db, c.settings.ledger_db):
        path = out / f"{db}.sql"
        url = c.postgres_url(db, "postgresql")
        subprocess.run([svc.pg_tool("pg_dump"), "--dbname", url, "--file", str(path)], check=True, timeout=300)
        dumps.append(path)
    return dumps


def _bucket_copy(c: Cluster, out: Path) -> int:
    s3, n = svc.s3_client(c), 0
    for bucket in (c.settings.mlflow_bucket, c.settings.dvc_bucket):
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            target = out / bucket / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            n += 1
    return n


def test_no_raw_pii_value_in_the_postgres_dumps_the_buckets_or_the_logs(cluster, faulted_run):
    from tasks.eval.pii_scan import load_values, scan

    c: Cluster = cluster["cluster"]
    scanned = c.home / "scanned"  # outside the raw zone: the scan reads it like everything else
    dumps = _pg_dumps(c, scanned / "postgres")
    assert all(p.stat().st_size > 1000 for p in dumps)
    assert _bucket_copy(c, scanned / "s3") > 0
    result = scan(c.home, load_values(c.home / "synth" / "pii_key.json"))
    assert result["files_scanned"] > 100 and result["hits"] == {}, result["hits"]


# --- faults --------------------------------------------------------------------------------------------------


def _wait_for(check, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not seen in {timeout_s:.0f} s")


def _states(client: AirflowClient, run_id: str, task_id: str) -> list[str | None]:
    return [ti["state"] for ti in _task_instances(client, run_id) if ti["task_id"] == task_id]


def _restart_redis_after(c: Cluster, outage_s: float) -> dict:
    stopped = time.monotonic()
    svc.daemon(c, "redis").stop(grace_s=10)
    time.sleep(outage_s)
    svc.start_redis(c)
    return {"redis_down_s": round(time.monotonic() - stopped, 1)}


def _kill_gpu_worker_mid_training(c: Cluster, client: AirflowClient, run_id: str) -> dict:
    from tasks.config import Paths

    run_dir = Paths(c.home).run_dir(run_id)
    _wait_for(lambda: "running" in _states(client, run_id, "train"), 600, "train running")
    latest = run_dir / "train" / "checkpoints" / "latest"  # the checkpointer's commit point
    _wait_for(latest.is_file, 300, "a training checkpoint")
    checkpoint = latest.read_text().strip()
    killed = time.monotonic()
    # As a dead host or container would: the worker and everything below it, torchrun's own session included.
    svc.daemon(c, "gpu-worker").stop(grace_s=0, sig=signal.SIGKILL)
    time.sleep(2)
    control.start_worker(c, "gpu")
    restarted = time.monotonic()
    _wait_for(lambda: client.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train")["try_number"] >= 2,
              300, "train retried")  # fmt: skip
    return {
        "checkpoint_at_kill": checkpoint,
        "worker_restart_s": round(restarted - killed, 1),
        "retry_started_after_kill_s": round(time.monotonic() - killed, 1),
    }


@pytest.fixture(scope="module")
def faulted_run(cluster):
    """The run: triggered through the REST API, Redis stopped while masking shards run, the gpu
    worker SIGKILLed after a training checkpoint and started again; waits until the run ends."""
    c: Cluster = cluster["cluster"]
    client: AirflowClient = cluster["client"]
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, conf=CONF, run_id="cluster-faults")["dag_run_id"]
    _wait_for(lambda: "running" in _states(client, run_id, "mask_shard"), 600, "a masking shard running")
    events = _restart_redis_after(c, REDIS_OUTAGE_S)
    events |= _kill_gpu_worker_mid_training(c, client, run_id)
    final = client.wait_for_dag_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    events |= {"state": final["state"], "run_s": round(time.monotonic() - started, 1)}
    events |= {"cluster_up_s": round(cluster["up_s"], 1), "second_up_s": round(cluster["second_up_s"], 1)}
    (artifacts_dir() / "faults.json").write_text(json.dumps(events, indent=2))
    print(f"cluster run under faults: {json.dumps(events)}")
    assert final["state"] == "success", client.task_states(DAG_ID, run_id)
    return {"run_id": run_id, "events": events, "tis": _task_instances(client, run_id)}


def test_a_killed_gpu_worker_resumes_training_from_its_checkpoint_with_an_uninterrupted_runs_epsilon(
    cluster, faulted_run
):
    from tasks.train.dp import epsilon_after
    from tasks.train.ledger import entries

    c: Cluster = cluster["cluster"]
    (train,) = [ti for ti in faulted_run["tis"] if ti["task_id"] == "train"]
    assert train["try_number"] == 2 and train["hostname"] == "gpu-worker", train
    trained = _report(c, faulted_run["run_id"])["train"]
    assert 0 < trained["resumed_from_step"] < trained["steps"] == trained["planned_steps"], trained
    (entry,) = [
        e for e in entries(url=c.postgres_url(c.settings.ledger_db)) if e.run_id.endswith(faulted_run["run_id"])
    ]
    assert entry.steps == trained["steps"] and entry.private, entry
    # What the same mechanism spends over the same steps without an interruption: the resumed run
    # neither re-counts the steps before the kill nor drops them (the report rounds ε to 4 places).
    uninterrupted = epsilon_after(
        entry.steps, noise=entry.noise_multiplier, sample_rate=entry.sample_rate, delta=entry.delta,
        accountant=entry.accountant,
    )  # fmt: skip
    assert entry.epsilon == pytest.approx(uninterrupted, rel=1e-9)
    assert trained["epsilon"] == round(uninterrupted, 4)


def test_the_run_finished_through_a_redis_outage(faulted_run):
    assert faulted_run["events"]["redis_down_s"] >= REDIS_OUTAGE_S
    assert faulted_run["events"]["state"] == "success"
