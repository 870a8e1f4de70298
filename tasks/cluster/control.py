"""Bring the cluster up (idempotently, waiting on every health check), take it down, report status."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from tasks.cluster import services as svc
from tasks.cluster.processes import wait_until
from tasks.cluster.topology import Cluster

Say = Callable[[str], None]


def _timed(say: Say, name: str, ready: Callable[[], bool], start: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        if ready():
            say(f"{name:<24} already up")
            return
    except Exception:  # not answering: start it
        pass
    start()
    say(f"{name:<24} up in {time.monotonic() - started:.1f} s")


def up(cluster: Cluster, say: Say = print, timeout_s: float = 300) -> None:
    """Every service, in dependency order; each start waits for its health check."""
    _timed(say, "postgres", lambda: svc.postgres_ready(cluster), lambda: svc.start_postgres(cluster))
    svc.create_databases(cluster)
    _timed(say, "redis", lambda: svc.redis_ready(cluster), lambda: svc.start_redis(cluster))
    _timed(say, "s3 (moto)", lambda: svc.s3_ready(cluster), lambda: svc.start_s3(cluster))
    _timed(say, "mlflow server", lambda: svc.mlflow_ready(cluster), lambda: svc.start_mlflow(cluster))
    svc.init_airflow(cluster)
    write_env_file(cluster)
    _timed(say, "airflow", lambda: svc.airflow_ready(cluster), lambda: _start_airflow(cluster, timeout_s))
    for worker, queues in svc.WORKERS.items():
        _timed(
            say, f"{worker} worker ({queues})",
            lambda w=worker: svc.worker_ready(cluster, w), lambda w=worker: start_worker(cluster, w, timeout_s),
        )  # fmt: skip
    say(svc.gpu_note())
    say(f"Airflow UI  {cluster.api_url}  (user admin, password in {cluster.state / 'settings.json'})")
    say(f"MLflow      {cluster.mlflow_url}")
    say(f"CLI env     set -a; . {cluster.state / 'cluster.env'}; set +a")


def _start_airflow(cluster: Cluster, timeout_s: float) -> None:
    for component in svc.AIRFLOW_COMPONENTS:
        if svc.daemon(cluster, f"airflow-{component}").pid() is None:
            svc.start_airflow_component(cluster, component)
    api = svc.daemon(cluster, "airflow-api-server")
    wait_until(lambda: svc.airflow_ready(cluster), timeout_s, "airflow (api-server, scheduler, dag-processor, triggerer)",
               daemon=api)  # fmt: skip


def start_worker(cluster: Cluster, worker: str, timeout_s: float = 300) -> None:
    """Start one Celery worker (unless its process runs) and wait until it answers a ping."""
    daemon = svc.daemon(cluster, f"{worker}-worker")
    if daemon.pid() is None:
        svc.start_worker(cluster, worker)
    wait_until(lambda: svc.worker_ready(cluster, worker), timeout_s, f"{worker} worker", daemon=daemon)


def down(cluster: Cluster, say: Say = print) -> None:
    """Workers first (a warm shutdown finishes nothing new), then Airflow, then the stores."""
    for name in [f"{w}-worker" for w in svc.WORKERS] + [f"airflow-{c}" for c in svc.AIRFLOW_COMPONENTS]:
        if svc.daemon(cluster, name).stop(grace_s=60):
            say(f"{name:<24} stopped")
    for name in ("mlflow", "s3", "redis"):
        if svc.daemon(cluster, name).stop():
            say(f"{name:<24} stopped")
    if svc.stop_postgres(cluster):
        say(f"{'postgres':<24} stopped")


def status(cluster: Cluster) -> dict[str, bool]:
    """Each service → whether it answers its health check now."""
    checks = {
        "postgres": lambda: svc.postgres_ready(cluster),
        "redis": lambda: svc.redis_ready(cluster),
        "s3": lambda: svc.s3_ready(cluster),
        "mlflow": lambda: svc.mlflow_ready(cluster),
        "airflow": lambda: svc.airflow_ready(cluster),
        **{f"{w}-worker": (lambda w=w: svc.worker_ready(cluster, w)) for w in svc.WORKERS},
    }
    result = {}
    for name, check in checks.items():
        try:
            result[name] = bool(check())
        except Exception:
            result[name] = False
    return result


def write_env_file(cluster: Cluster) -> None:
    """`cluster.env`: what the `airflow` CLI (backfills, pools) needs to talk to this cluster."""
    env = cluster.airflow_env()
    keep = {k: v for k, v in env.items() if k.startswith(("AIRFLOW", "PFT_", "MLFLOW_"))}
    path = cluster.state / "cluster.env"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(keep.items())))
