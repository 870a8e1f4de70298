"""Bring the cluster up (idempotently, waiting on every health check), take it down, report status."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tasks.cluster import services as svc
from tasks.cluster.processes import wait_until
from tasks.cluster.topology import Cluster

Say = Callable[[str], None]


@dataclass
class Launch:
    """A service started and not yet waited for: its name, when it started, and its health check."""

    name: str
    started: float
    wait: Callable[[], None]


def _timed(say: Say, name: str, ready: Callable[[], bool], start: Callable[[], None]) -> None:
    """Start a service unless it answers already, and wait for it."""
    launched = _launch(say, name, ready, start, wait=lambda: None)
    _finish(say, launched)


def _launch(say: Say, name: str, ready, start, wait) -> list[Launch]:
    try:
        if ready():
            say(f"{name:<24} already up")
            return []
    except Exception:  # not answering: start it
        pass
    started = time.monotonic()
    start()
    return [Launch(name, started, wait)]


def _finish(say: Say, launched: list[Launch]) -> None:
    for item in launched:
        item.wait()
        say(f"{item.name:<24} up in {time.monotonic() - item.started:.1f} s")


def up(cluster: Cluster, say: Say = print, timeout_s: float = 300) -> None:
    """Every service in dependency order, each waited on by its health check. The slow starters boot
    side by side: MLflow while Airflow migrates its schema, then both workers."""
    _timed(say, "postgres", lambda: svc.postgres_ready(cluster), lambda: svc.start_postgres(cluster))
    svc.create_databases(cluster)
    _timed(say, "redis", lambda: svc.redis_ready(cluster), lambda: svc.start_redis(cluster))
    _timed(say, "s3 (moto)", lambda: svc.s3_ready(cluster), lambda: svc.start_s3(cluster))
    mlflow = _launch(say, "mlflow server", lambda: svc.mlflow_ready(cluster), lambda: svc.start_mlflow(cluster),
                     wait=lambda: _wait_for(cluster, "mlflow", svc.mlflow_ready, timeout_s))  # fmt: skip
    migrated = time.monotonic()
    svc.init_airflow(cluster)
    say(f"{'airflow db':<24} ready in {time.monotonic() - migrated:.1f} s")
    write_env_file(cluster)
    airflow = _launch(say, "airflow", lambda: svc.airflow_ready(cluster), lambda: _start_airflow(cluster),
                      wait=lambda: _wait_for(cluster, "airflow-api-server", svc.airflow_ready, timeout_s))  # fmt: skip
    _finish(say, mlflow + airflow)
    workers = []
    for worker, queues in svc.WORKERS.items():
        workers += _launch(
            say, f"{worker} worker ({queues})",
            lambda w=worker: svc.worker_ready(cluster, w), lambda w=worker: svc.start_worker(cluster, w),
            wait=lambda w=worker: start_worker(cluster, w, timeout_s),
        )  # fmt: skip
    _finish(say, workers)
    say(svc.gpu_note())
    say(f"Airflow UI  {cluster.api_url}  (user admin, password in {cluster.state / 'settings.json'})")
    say(f"MLflow      {cluster.mlflow_url}")
    say(f"CLI env     set -a; . {cluster.state / 'cluster.env'}; set +a")


def _wait_for(cluster: Cluster, daemon_name: str, ready: Callable[[Cluster], bool], timeout_s: float) -> None:
    wait_until(lambda: ready(cluster), timeout_s, daemon_name, daemon=svc.daemon(cluster, daemon_name))


def _start_airflow(cluster: Cluster) -> None:
    for component in svc.AIRFLOW_COMPONENTS:
        if svc.daemon(cluster, f"airflow-{component}").pid() is None:
            svc.start_airflow_component(cluster, component)


def start_worker(cluster: Cluster, worker: str, timeout_s: float = 300) -> None:
    """Start one Celery worker (unless its process runs) and wait until it answers a ping."""
    daemon = svc.daemon(cluster, f"{worker}-worker")
    if daemon.pid() is None:
        svc.start_worker(cluster, worker)
    wait_until(lambda: svc.worker_ready(cluster, worker), timeout_s, f"{worker} worker", daemon=daemon)


def down(cluster: Cluster, say: Say = print) -> None:
    """Workers first (a warm shutdown takes no new task), then Airflow, then the stores. Each group
    is stopped side by side: the slowest member sets the wait, not the sum."""
    groups = [
        [f"{w}-worker" for w in svc.WORKERS],
        [f"airflow-{c}" for c in svc.AIRFLOW_COMPONENTS],
        ["mlflow", "s3", "redis"],
    ]
    for names in groups:
        with ThreadPoolExecutor(len(names)) as pool:
            stopped = list(pool.map(lambda n: svc.daemon(cluster, n).stop(grace_s=60), names))
        for name, was_running in zip(names, stopped):
            if was_running:
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
