"""A real Airflow api-server for tests, and a reviewer who answers approval requests through its REST API.

The api-server shares the test session's SQLite metadata DB with `dag.test()`, which keeps a
run alive while a Human-in-the-loop task waits; a PATCH to the task's hitlDetails resumes it.
Users come from SimpleAuthManager: `reviewer` (admin: may approve) and `auditor` (viewer).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tasks.cluster.topology import free_port

USERS = {"reviewer": ("admin", "reviewer-test-password"), "auditor": ("viewer", "auditor-test-password")}


def auth_env(home: Path) -> dict[str, str]:
    """SimpleAuthManager users and their passwords file (what the api-server and the tests both read)."""
    passwords = home / "simple_auth_passwords.json"
    passwords.write_text(json.dumps({user: pw for user, (_, pw) in USERS.items()}))
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{role}" for u, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
    }


class ApiServer:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path):
        self.url, self.proc, self.log_path = url, proc, log_path

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api-server exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        raise TimeoutError(f"api-server not healthy after {timeout_s}s: {self.log_path.read_text()[-3000:]}")

    def token(self, user: str) -> str:
        resp = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": USERS[user][1]}, timeout=30)
        resp.raise_for_status()
        return resp.json()["access_token"]

    def client(self, user: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextlib.contextmanager
def api_server(home: Path, extra_env: dict[str, str] | None = None):
    port = free_port()
    log_path = home / f"api-server-{port}.log"
    env = {**os.environ, **auth_env(home), **(extra_env or {}), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow",
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


class Reviewer(threading.Thread):
    """Waits for the approval request of `dag_id`, then answers it once through the REST API."""

    def __init__(
        self,
        server: ApiServer,
        *,
        dag_id: str,
        choice: str,
        comment: str,
        user: str = "reviewer",
        task_id: str = "approve",
        timeout_s: float = 1800,
    ):
        super().__init__(daemon=True)
        self.server, self.dag_id, self.choice, self.comment = server, dag_id, choice, comment
        self.user, self.task_id, self.timeout_s = user, task_id, timeout_s
        self.request: dict | None = None  # the pending hitlDetail as the reviewer saw it
        self.viewer_status: int | None = None  # what the auditor (viewer) got when trying to answer first
        self.response: dict | None = None
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def _pending(self, client: httpx.Client) -> dict | None:
        resp = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails")
        resp.raise_for_status()
        for detail in resp.json().get("hitl_details", []):
            ti = detail.get("task_instance") or {}
            if ti.get("task_id") == self.task_id and not detail.get("response_received"):
                return detail
        return None

    def run(self) -> None:
        try:
            self.server.wait_ready()
            deadline = time.time() + self.timeout_s
            with self.server.client(self.user) as client:
                while not self.stop.is_set() and time.time() < deadline:
                    detail = self._pending(client)
                    if detail is None:
                        time.sleep(2)
                        continue
                    self.request = detail
                    ti = detail["task_instance"]
                    path = (
                        f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                        f"{self.task_id}/{ti.get('map_index', -1)}/hitlDetails"
                    )
                    body = {"chosen_options": [self.choice], "params_input": {"comment": self.comment}}
                    with self.server.client("auditor") as viewer:  # a viewer may read but not decide
                        self.viewer_status = viewer.patch(path, json=body).status_code
                    resp = client.patch(path, json=body)
                    resp.raise_for_status()
                    self.response = resp.json()
                    return
        except BaseException as exc:  # surfaced by the test
            self.error = exc
