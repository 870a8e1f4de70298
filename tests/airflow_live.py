"""A live Airflow for tests: `airflow standalone` on its own data root, driven through REST and the CLI.

`AirflowLive(home)` starts the scheduler, dag-processor, api-server and triggerer (one
`airflow standalone` process group) on a temporary PFT_HOME / AIRFLOW_HOME: LocalExecutor on
SQLite, the repo's dags/ and plugins/, a free loopback port, SimpleAuthManager users with
generated passwords, the offline/telemetry variables of the Makefile, and the `gpu` pool the
train task needs. It is a context manager: on exit every process it started is stopped (the
whole process group and any descendant that left it), and the logs stay in the home:

    <home>/airflow/standalone.log   every component's console output
    <home>/airflow/logs/            task logs (dag_id=.../run_id=.../task_id=...)

    with AirflowLive(home, extra_env={"PFT_CONFIG": str(cfg)}) as af:
        af.wait_for_dag("privacy_finetune")
        af.unpause("privacy_finetune")
        run = af.trigger("privacy_finetune", conf={...})
        final = af.wait_for_dag_run("privacy_finetune", run["dag_run_id"], timeout=600)
        af.cli("dags", "backfill", "create", ...)   # the same env as the components

LocalExecutor ignores a task's `queue` (only Celery routes on it), so the train task's
queue="gpu" runs locally; its pool="gpu" must exist, or the task would never be scheduled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tasks.cluster.topology import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL_RUN_STATES = {"success", "failed"}
DEFAULT_POOLS = {"gpu": (1, "training slots: one per GPU worker")}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def _interrupt_when_parent_dies() -> None:
    """Linux: SIGINT to standalone when the process that started it dies (a test killed by a timeout
    never reaches __exit__); standalone's KeyboardInterrupt handler then stops its components.
    SIGINT is reset first: a background shell job inherits it ignored. The death signal follows the
    starting *thread*: start AirflowLive from a thread that outlives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


class AirflowClient:
    """The REST API and the CLI of a running Airflow: its URL, its users' passwords and the
    components' environment (same DB, config, dags and keys). `AirflowLive` starts one; the
    cluster tests point one at `make cluster`'s api-server."""

    def __init__(self, base_url: str, passwords: dict[str, str], env: dict[str, str], cwd: Path, airflow_home: Path):
        self.base_url = base_url
        self.passwords = passwords
        self.users = dict.fromkeys(passwords, "admin")
        self.env = env
        self.home = cwd
        self.airflow_home = airflow_home
        self._tokens: dict[str, str] = {}

    def _check_alive(self) -> None:
        """Raises when the components are known to have exited (nothing to check for a client alone)."""

    # --- CLI and REST ------------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`airflow <args>` with the components' environment (same DB, config, dags, keys)."""
        proc = subprocess.run(
            [str(BIN / "airflow"), *args], cwd=self.home, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def token(self, user: str | None = None) -> str:
        """A JWT from POST /auth/token (cached per user)."""
        user = user or next(iter(self.users))
        if user not in self._tokens:
            resp = httpx.post(
                f"{self.base_url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30
            )
            resp.raise_for_status()
            self._tokens[user] = resp.json()["access_token"]
        return self._tokens[user]

    def client(self, user: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=30)

    def api(self, method: str, path: str, *, user: str | None = None, ok=(200,), **kwargs) -> Any:
        """One REST call under /api/v2; a status outside `ok` raises with the response body."""
        with self.client(user) as client:
            resp = client.request(method, f"/api/v2{path}", **kwargs)
        if resp.status_code not in ok:
            raise RuntimeError(f"{method} /api/v2{path} → {resp.status_code}: {resp.text[:2000]}")
        return resp.json() if resp.content else None

    def set_pool(self, name: str, slots: int, description: str = "") -> dict:
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        with self.client() as client:
            resp = client.post("/api/v2/pools", json=body)
            if resp.status_code == 409:
                resp = client.patch(f"/api/v2/pools/{name}", json=body)
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"pool {name}: {resp.status_code} {resp.text[:1000]}")
        return resp.json()

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> dict:
        """Until the dag-processor has parsed and serialized `dag_id`. An import error in a file named
        after the DAG fails at once; other files' errors are named if it times out."""
        deadline, errors = time.monotonic() + timeout_s, []
        while time.monotonic() < deadline:
            self._check_alive()
            with self.client() as client:
                resp = client.get(f"/api/v2/dags/{dag_id}/details")
                if resp.status_code == 200:
                    return resp.json()
                errors = client.get("/api/v2/importErrors").json().get("import_errors", [])
            if any(dag_id in str(e.get("filename", "")) for e in errors):
                raise RuntimeError(f"DAG {dag_id} does not import: {json.dumps(errors)[:4000]}")
            time.sleep(2)
        raise TimeoutError(
            f"DAG {dag_id} not parsed after {timeout_s:.0f}s; import errors: {json.dumps(errors)[:3000]}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def unpause(self, dag_id: str) -> dict:
        return self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-start_date"})["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return {
            (ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"): ti["state"]
            for ti in tis["task_instances"]
        }

    def wait_for_dag_run(self, dag_id: str, run_id: str, timeout: float = 900, poll_s: float = 3) -> dict:
        """Poll the run until it is success or failed; returns the run. On timeout, raises with its
        task states. (A failed run is returned, not raised: the caller asserts on it.)"""
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            time.sleep(poll_s)
        raise TimeoutError(
            f"{dag_id} run {run_id} still {run.get('state')} after {timeout:.0f}s; tasks: "
            f"{self.task_states(dag_id, run_id)}; task logs under {self.airflow_home / 'logs'}"
        )

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """A task's log as text (from the REST API), for failure messages."""
        with self.client() as client:
            resp = client.get(
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                params={"map_index": map_index, "full_content": True},
                headers={"Accept": "text/plain"},
            )
        return resp.text


class AirflowLive(AirflowClient):
    """`airflow standalone` on `home` (PFT_HOME; AIRFLOW_HOME = home/airflow unless given).

    users: name → SimpleAuthManager role (admin, op, user, viewer); passwords are generated and
    kept in `self.passwords` (and the passwords file in AIRFLOW_HOME, as Airflow reads them).
    extra_env: added last (e.g. PFT_CONFIG); pools: name → (slots, description), created via REST."""

    def __init__(
        self,
        home: Path,
        *,
        airflow_home: Path | None = None,
        users: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        pools: dict[str, tuple[int, str]] | None = None,
        port: int | None = None,
        parallelism: int = 4,
        start_timeout_s: float = 240,
    ):
        self.home = Path(home).resolve()
        self.airflow_home = Path(airflow_home).resolve() if airflow_home else self.home / "airflow"
        self.users = users or {"admin": "admin"}
        self.passwords = {name: secrets.token_urlsafe(18) for name in self.users}
        self.pools = DEFAULT_POOLS if pools is None else pools
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.log_path = self.airflow_home / "standalone.log"
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}
        self.env = self._env(parallelism, extra_env or {})

    # --- environment -------------------------------------------------------------------------------------

    def _env(self, parallelism: int, extra_env: dict[str, str]) -> dict[str, str]:
        from cryptography.fernet import Fernet

        from tasks.common.offline import OFFLINE_ENV

        self.airflow_home.mkdir(parents=True, exist_ok=True)
        passwords_file = self.airflow_home / "simple_auth_manager_passwords.json"
        passwords_file.write_text(json.dumps(self.passwords))
        passwords_file.chmod(0o600)
        # Nothing Airflow-specific leaks in from the calling process (e.g. the test session's own DB).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
        env.update(OFFLINE_ENV)
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # standalone starts `airflow` from PATH
                "PFT_HOME": str(self.home),
                "PFT_PSEUDONYM_KEY": os.environ.get("PFT_PSEUDONYM_KEY") or secrets.token_hex(32),
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.airflow_home / 'airflow.db'}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in self.users.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                # One secret for every component: the api-server must accept the tokens the scheduler signs.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # The log servers of the scheduler (LocalExecutor) and triggerer: free ports, not 8793/8794,
                # so a developer's own Airflow or a second live instance does not collide.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "NO_COLOR": "1",
            }
        )
        env.update(extra_env)
        return env

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> AirflowLive:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "airflow"), "standalone"],
                cwd=self.home,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_interrupt_when_parent_dies,
            )
        self.wait_healthy(self.start_timeout_s)
        for name, (slots, description) in self.pools.items():
            self.set_pool(name, slots, description)

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM to the process group and every descendant (task runners may start their own
        sessions), SIGKILL to whatever is left after `grace_s`. Logs stay in AIRFLOW_HOME."""
        if self.proc is None:
            return
        import psutil

        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"airflow standalone exited with {self.proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
            )

    def health(self) -> dict:
        resp = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def wait_healthy(self, timeout_s: float) -> dict:
        """Until the metadata DB, scheduler, dag-processor and triggerer all report healthy."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                last = self.health()
                components = [last.get(c) or {} for c in ("metadatabase", "scheduler", "dag_processor", "triggerer")]
                if all(c.get("status") == "healthy" for c in components):
                    return last
            time.sleep(1)
        raise TimeoutError(
            f"Airflow not healthy after {timeout_s:.0f}s (last health: {last}); log {self.log_path}:\n{self.log_tail()}"
        )
