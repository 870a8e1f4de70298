"""The cluster's settings (ports, secrets, names) and each process's environment.

Settings are made once per `$PFT_HOME/cluster/` and kept in `settings.json` (mode 600), so a second
`up` finds the same ports and passwords (start-up is idempotent). The environment variables carry the
names docker-compose.yaml uses (POSTGRES_*, MLFLOW_*, DVC_BUCKET, PFT_*, AIRFLOW__*), so one set of
docs and one test cover both forms of the deployment.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.common.offline import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# On one machine the two workers share a host name; this names each task instance's worker instead.
HOSTNAME_CALLABLE = "tasks.cluster.worker_name.worker_hostname"
WORKER_NAME_ENV = "PFT_WORKER_NAME"
AWS_REGION = "us-east-1"
# Settings a deployment names in .env for compose, read from the environment here too (at first start).
COMPOSE_NAMES = {
    "postgres_user": "POSTGRES_USER",
    "postgres_db": "POSTGRES_DB",
    "mlflow_db": "MLFLOW_DB",
    "ledger_db": "LEDGER_DB",
    "mlflow_bucket": "MLFLOW_BUCKET",
    "dvc_bucket": "DVC_BUCKET",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    postgres: int = field(default_factory=free_port)
    redis: int = field(default_factory=free_port)
    s3: int = field(default_factory=free_port)
    mlflow: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    triggerer_logs: int = field(default_factory=free_port)
    cpu_worker_logs: int = field(default_factory=free_port)
    gpu_worker_logs: int = field(default_factory=free_port)


@dataclass
class Settings:
    """What every process of one cluster must agree on. Generated once, then read back."""

    ports: Ports = field(default_factory=Ports)
    postgres_user: str = "privatetune"
    postgres_password: str = field(default_factory=lambda: secrets.token_hex(16))
    postgres_db: str = "airflow"
    mlflow_db: str = "mlflow"
    ledger_db: str = "privacy_ledger"
    redis_password: str = field(default_factory=lambda: secrets.token_hex(16))
    s3_access_key_id: str = field(default_factory=lambda: "pft" + secrets.token_hex(8))
    s3_secret_access_key: str = field(default_factory=lambda: secrets.token_hex(20))
    mlflow_bucket: str = "privatetune-mlflow"
    dvc_bucket: str = "privatetune-dvc"
    fernet_key: str = field(default_factory=lambda: _fernet_key())
    api_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(64))
    pseudonym_key: str = field(default_factory=lambda: secrets.token_hex(32))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    pft_config: str = ""  # the pipeline config every component reads ("" = include/config/pipeline.yaml)
    airflow_overrides: dict[str, str] = field(default_factory=dict)  # AIRFLOW__* settings of this cluster

    @classmethod
    def load_or_create(cls, state: Path) -> Settings:
        path = state / "settings.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            return cls(**{**raw, "ports": Ports(**raw["ports"])})
        settings = cls(**{f: os.environ[env] for f, env in COMPOSE_NAMES.items() if os.environ.get(env)})
        settings.save(state)
        return settings

    def save(self, state: Path) -> None:
        path = state / "settings.json"
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o711)  # the postgres OS user walks through to its own folder; nothing here is listable
        path.touch(mode=0o600)
        path.write_text(json.dumps(asdict(self), indent=2))


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass(frozen=True)
class Cluster:
    """One cluster: the data root it serves, its state folder and its settings."""

    home: Path
    settings: Settings

    @classmethod
    def at(cls, home: Path) -> Cluster:
        home = Path(home).resolve()
        return cls(home, Settings.load_or_create(home / "cluster"))

    @property
    def state(self) -> Path:
        return self.home / "cluster"

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.api}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.mlflow}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ports.s3}"

    def postgres_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        s = self.settings
        return f"{driver}://{s.postgres_user}:{s.postgres_password}@127.0.0.1:{s.ports.postgres}/{db}"

    @property
    def broker_url(self) -> str:
        return f"redis://:{self.settings.redis_password}@127.0.0.1:{self.settings.ports.redis}/0"

    def base_env(self) -> dict[str, str]:
        """The caller's environment without Airflow settings of its own, offline, PATH to this venv."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
        env.update(OFFLINE_ENV)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["NO_COLOR"] = "1"
        return env

    def s3_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "AWS_ACCESS_KEY_ID": s.s3_access_key_id,
            "AWS_SECRET_ACCESS_KEY": s.s3_secret_access_key,
            "AWS_DEFAULT_REGION": AWS_REGION,
        }

    def mlflow_env(self) -> dict[str, str]:
        return {**self.base_env(), **self.s3_env(), "MLFLOW_S3_ENDPOINT_URL": self.s3_url}

    def airflow_env(self) -> dict[str, str]:
        """Every Airflow component's environment: compose's x-airflow-common block, natively."""
        s, af = self.settings, self.airflow_home
        return {
            **self.base_env(),
            "AIRFLOW_HOME": str(af),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres_url(s.postgres_db),
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres_url(s.postgres_db),
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__FERNET_KEY": s.fernet_key,
            "AIRFLOW__API__SECRET_KEY": s.api_secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": s.jwt_secret,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
            "PFT_HOME": str(self.home),
            "PFT_CONFIG": s.pft_config,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PFT_LEDGER_URL": self.postgres_url(s.ledger_db),
            # Native-only: where this machine keeps things compose keeps in images and volumes.
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(af / "simple_auth_manager_passwords.json"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(s.ports.api),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(s.ports.triggerer_logs),
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            **s.airflow_overrides,
        }

    def dvc_remote_env(self) -> dict[str, str]:
        """Compose's x-dvc-remote-env: the masked dataset's bytes go to the S3 server's DVC bucket."""
        return {
            "PFT_DVC_REMOTE_URL": f"s3://{self.settings.dvc_bucket}/registry",
            "PFT_DVC_REMOTE_ENDPOINT": self.s3_url,
            **self.s3_env(),
        }

    def worker_env(self, worker: str) -> dict[str, str]:
        """A Celery worker's environment: Airflow's, the DVC remote, the masking key, and its own name
        and log-server port (two workers share this host)."""
        ports = self.settings.ports
        log_port = ports.cpu_worker_logs if worker == "cpu" else ports.gpu_worker_logs
        return {
            **self.airflow_env(),
            **self.dvc_remote_env(),
            "PFT_PSEUDONYM_KEY": self.settings.pseudonym_key,
            WORKER_NAME_ENV: f"{worker}-worker",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        }
