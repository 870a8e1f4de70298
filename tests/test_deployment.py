"""The compose file and Dockerfile agree with the code: names the code reads are the ones deployed."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.config import MaskConfig

REPO = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_has_the_airflow_3_services_on_postgres_and_celery():
    services = _compose()["services"]
    for name in ("postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "mlflow"):
        assert name in services, name
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")


def test_compose_passes_the_secrets_the_code_reads_without_defaults():
    services = _compose()["services"]
    env = services["airflow-worker"]["environment"]
    assert MaskConfig().key_env in env and env[MaskConfig().key_env].startswith("${")
    example = (REPO / ".env.example").read_text()
    assert f"{MaskConfig().key_env}=\n" in example  # documented, and empty: no default secret
    assert "POSTGRES_PASSWORD=\n" in example


def test_dockerfile_builds_from_the_pinned_airflow_image():
    dockerfile = (REPO / "Dockerfile").read_text()
    pinned = [l for l in (REPO / "requirements.txt").read_text().splitlines() if l.startswith("apache-airflow==")]
    version = pinned[0].split("==")[1]
    assert f"FROM apache/airflow:{version}-python3.11" in dockerfile


def test_every_dag_queue_has_a_worker_and_the_gpu_pool_is_created():
    """A task on a queue no worker consumes would wait forever; so would one in a pool nobody created."""
    import ast

    services = _compose()["services"]
    consumed = {"default"}
    for svc in services.values():
        cmd = svc.get("command") or []
        if isinstance(cmd, list) and cmd[:3] == ["airflow", "celery", "worker"]:
            consumed |= set(cmd[cmd.index("--queues") + 1].split(",")) if "--queues" in cmd else {"default"}
    tree = ast.parse((REPO / "dags" / "privacy_finetune.py").read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}
    assert consts["TRAIN_QUEUE"] in consumed
    gpu = services["airflow-worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    init = " ".join(services["airflow-init"]["command"])
    assert f"airflow pools set {consts['TRAIN_POOL']}" in init
    assert f"airflow pools set {consts['TRAIN_POOL']}" in (REPO / "Makefile").read_text()


def test_compose_points_the_ledger_at_postgres():
    from tasks import ledger

    env = _compose()["x-airflow-common"]["environment"]
    assert env["PFT_LEDGER_URL"].startswith("postgresql")
    assert "PFT_LEDGER_URL" in Path(ledger.__file__).read_text()  # the name the code reads
