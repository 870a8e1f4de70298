"""Start each service of the cluster and check its health. Every start is idempotent: a service
that already answers its health check is left as it is."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

from tasks.cluster.processes import Daemon, wait_until
from tasks.cluster.topology import BIN, REPO, Cluster

POSTGRES_OS_USER = "postgres"  # Postgres refuses to run as root: as root, it runs as this user
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
WORKERS = {"cpu": "default", "gpu": "gpu,default"}  # worker → the queues it consumes
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DB_NAME = re.compile(r"[a-z_][a-z0-9_]*")  # the rule include/mlflow/create-db.sh applies in compose


def daemon(cluster: Cluster, name: str) -> Daemon:
    return Daemon(name, cluster.state)


# --- Postgres ---------------------------------------------------------------------------------------------


def pg_tool(name: str) -> str:
    """initdb and pg_ctl live in Debian's versioned folder, not on PATH."""
    found = shutil.which(name) or next((str(d / name) for d in PG_BIN_DIRS if (d / name).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: apt-get install postgresql (Debian's package; 15 or newer)")
    return found


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _give_to_postgres(*paths: Path) -> None:
    """Under root, Postgres runs as its own OS user: the files it writes must be its own."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _connect(cluster: Cluster, db: str = "postgres"):
    import psycopg2

    s = cluster.settings
    return psycopg2.connect(
        host="127.0.0.1", port=s.ports.postgres, user=s.postgres_user, password=s.postgres_password,
        dbname=db, connect_timeout=3,
    )  # fmt: skip


def _postgres_dirs(cluster: Cluster) -> tuple[Path, Path]:
    root = cluster.state / "postgres"
    return root / "data", root / "run"


def _prepare_postgres_dirs(cluster: Cluster) -> None:
    data, run = _postgres_dirs(cluster)
    for path in (data, run):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    if os.geteuid() != 0:
        return
    _give_to_postgres(data.parent, data, run)
    # The postgres user must be able to walk down to its folder (only the last levels are its own).
    probe = subprocess.run(_as_postgres(["test", "-w", str(data)]), capture_output=True)
    if probe.returncode != 0:
        raise PermissionError(
            f"Postgres runs as the OS user {POSTGRES_OS_USER!r}, which cannot reach {data}: make the folders "
            f"above it traversable (chmod o+x) or put PFT_HOME where it can"
        )


def _initdb(cluster: Cluster) -> None:
    data, _ = _postgres_dirs(cluster)
    if (data / "PG_VERSION").is_file():
        return
    s = cluster.settings
    pwfile = data.parent / "initdb.pw"
    pwfile.write_text(s.postgres_password + "\n")
    pwfile.chmod(0o600)
    _give_to_postgres(pwfile)
    try:
        argv = [pg_tool("initdb"), "-D", str(data), "-U", s.postgres_user, f"--pwfile={pwfile}"]
        argv += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"]
        subprocess.run(_as_postgres(argv), check=True, capture_output=True, text=True)
    finally:
        pwfile.unlink(missing_ok=True)


def postgres_ready(cluster: Cluster) -> bool:
    _connect(cluster).close()
    return True


def start_postgres(cluster: Cluster) -> None:
    _prepare_postgres_dirs(cluster)
    _initdb(cluster)
    data, run = _postgres_dirs(cluster)
    log = daemon(cluster, "postgres").log_file
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    _give_to_postgres(log)
    options = f"-c listen_addresses=127.0.0.1 -p {cluster.settings.ports.postgres} -c unix_socket_directories={run}"
    argv = [pg_tool("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"]
    subprocess.run(_as_postgres(argv), check=True, capture_output=True, text=True)
    wait_until(lambda: postgres_ready(cluster), 60, "postgres")


def create_databases(cluster: Cluster) -> None:
    """Airflow's, MLflow's and the ledger's databases, each created once (`up` calls it every time)."""
    s = cluster.settings
    conn = _connect(cluster)
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in (s.postgres_db, s.mlflow_db, s.ledger_db):
            if not DB_NAME.fullmatch(db):
                raise ValueError(f"database name {db!r}: use lower-case letters, digits and _ only")
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')  # checked above: no quoting to escape
    conn.close()


def stop_postgres(cluster: Cluster) -> bool:
    data, _ = _postgres_dirs(cluster)
    if not (data / "postmaster.pid").is_file():
        return False
    argv = [pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    return subprocess.run(_as_postgres(argv), capture_output=True).returncode == 0


# --- Redis, the S3 server, MLflow ---------------------------------------------------------------------------


def redis_ready(cluster: Cluster) -> bool:
    import redis

    s = cluster.settings
    return bool(redis.Redis(port=s.ports.redis, password=s.redis_password, socket_timeout=3).ping())


def start_redis(cluster: Cluster) -> None:
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server not found: apt-get install redis-server (Debian's package)")
    folder = cluster.state / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    s = cluster.settings
    # An append-only file keeps the queued task messages across a broker restart.
    argv = [server, "--bind", "127.0.0.1", "--port", str(s.ports.redis), "--requirepass", s.redis_password]
    argv += ["--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
    redis_daemon = daemon(cluster, "redis")
    redis_daemon.start(argv, cluster.base_env(), folder)
    wait_until(lambda: redis_ready(cluster), 30, "redis", daemon=redis_daemon)


def s3_client(cluster: Cluster):
    import boto3

    env = cluster.s3_env()
    return boto3.client(
        "s3", endpoint_url=cluster.s3_url, region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def s3_ready(cluster: Cluster) -> bool:
    names = {b["Name"] for b in s3_client(cluster).list_buckets().get("Buckets", [])}
    return {cluster.settings.mlflow_bucket, cluster.settings.dvc_bucket} <= names


def start_s3(cluster: Cluster) -> None:
    """moto's server mode as the S3 stand-in (MinIO in compose). It keeps objects in memory: a
    restarted cluster starts with empty buckets (the DVC registry pushes again on the next run)."""
    s3 = daemon(cluster, "s3")
    s3.start([str(BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(cluster.settings.ports.s3)],
             cluster.base_env(), cluster.state)  # fmt: skip
    wait_until(lambda: s3_client(cluster).list_buckets() is not None, 60, "s3", daemon=s3)
    for bucket in (cluster.settings.mlflow_bucket, cluster.settings.dvc_bucket):
        s3_client(cluster).create_bucket(Bucket=bucket)


def mlflow_ready(cluster: Cluster) -> bool:
    import httpx

    return httpx.get(f"{cluster.mlflow_url}/health", timeout=5).status_code == 200


def start_mlflow(cluster: Cluster) -> None:
    s = cluster.settings
    port = s.ports.mlflow
    argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", cluster.postgres_url(s.mlflow_db), "--serve-artifacts"]
    argv += ["--artifacts-destination", f"s3://{s.mlflow_bucket}/artifacts"]
    argv += ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
    daemon(cluster, "mlflow").start(argv, cluster.mlflow_env(), cluster.state)


# --- Airflow ------------------------------------------------------------------------------------------------


def airflow_cli(cluster: Cluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "airflow"), *args], cwd=cluster.airflow_home, env=cluster.airflow_env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def init_airflow(cluster: Cluster) -> None:
    """The metadata DB's schema (migrate is idempotent), the `gpu` pool and the admin's password file."""
    cluster.airflow_home.mkdir(parents=True, exist_ok=True)
    passwords = cluster.airflow_home / "simple_auth_manager_passwords.json"
    passwords.touch(mode=0o600)
    passwords.write_text(json.dumps({"admin": cluster.settings.admin_password}))
    marker = cluster.airflow_home / ".db-ready"
    if not marker.is_file():
        airflow_cli(cluster, "db", "migrate")
        airflow_cli(cluster, "pools", "set", "gpu", "1", "training slots: one per GPU worker")
        marker.touch()


def airflow_health(cluster: Cluster) -> dict:
    import httpx

    return httpx.get(f"{cluster.api_url}/api/v2/monitor/health", timeout=5).json()


def airflow_ready(cluster: Cluster) -> bool:
    health = airflow_health(cluster)
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((health.get(p) or {}).get("status") == "healthy" for p in parts)


def start_airflow_component(cluster: Cluster, component: str) -> None:
    daemon(cluster, f"airflow-{component}").start(
        [str(BIN / "airflow"), component], cluster.airflow_env(), cluster.airflow_home
    )


def celery_name(worker: str) -> str:
    import socket

    return f"{worker}@{socket.gethostname()}"


def worker_ready(cluster: Cluster, worker: str) -> bool:
    from celery import Celery

    app = Celery(broker=cluster.broker_url)
    try:
        replies = app.control.ping(destination=[celery_name(worker)], timeout=2)
    finally:
        app.close()
    return any(celery_name(worker) in reply for reply in replies)


def start_worker(cluster: Cluster, worker: str) -> None:
    argv = [str(BIN / "airflow"), "celery", "worker", "--queues", WORKERS[worker], "--concurrency", "1"]
    argv += ["--celery-hostname", celery_name(worker), "--without-mingle", "--without-gossip"]
    daemon(cluster, f"{worker}-worker").start(argv, cluster.worker_env(worker), cluster.airflow_home)


def gpu_note() -> str:
    """What the `gpu` worker trains on here, said once at start-up."""
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    count = int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0
    if count:
        return f"gpu worker: {count} CUDA device(s)"
    return "gpu worker: no CUDA device on this machine; the gpu queue's tasks (training) run on CPU"
