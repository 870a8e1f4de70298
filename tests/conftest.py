"""Test session setup: an isolated data root and Airflow home, offline, before Airflow is imported."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Never touch the user's .local/: every test session gets its own data root and Airflow home.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="pft-test-"))
os.environ["PFT_HOME"] = str(_SESSION_HOME)
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("PFT_PSEUDONYM_KEY", "test-only-pseudonymisation-key")
os.environ.pop("PFT_CONFIG", None)
os.environ.pop("PFT_DVC_REMOTE_URL", None)  # a developer's S3 remote must not receive test data

from tests.helpers import cores_per_worker  # noqa: E402

# Before torch is imported anywhere (subprocesses inherit it): torch's default is every core.
os.environ.setdefault("OMP_NUM_THREADS", str(cores_per_worker()))

from tasks.common import offline  # noqa: E402

offline.apply()


# Everything runs inside the customer's network: a test that opens a connection to anything but
# loopback fails here, naming the address. (Subprocesses are not covered; `make verify-offline`
# is the whole-run proof.)
import ipaddress  # noqa: E402
import socket  # noqa: E402

_REAL_CONNECT, _REAL_CONNECT_EX = socket.socket.connect, socket.socket.connect_ex


def _loopback(host) -> bool:
    if host in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not loopback


def _check(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise ConnectionRefusedError(
            f"network access blocked in tests: connect to {address[0]!r}:{address[1]} "
            "(only loopback is allowed; PrivateTune must run offline)"
        )


def _guarded_connect(self, address):
    _check(self, address)
    return _REAL_CONNECT(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _REAL_CONNECT_EX(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def airflow_db(session_home: Path) -> Path:
    """Airflow's metadata DB (SQLite) for DAG tests, migrated once per session."""
    airflow_home = session_home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return airflow_home


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models only lose from extra threads on a busy 2-core machine; modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base_model(session_home: Path) -> Path:
    """The tiny demo base model, built once per session from the generator's general corpus (the same
    corpus every generated home has), for the live-Airflow tests to point base_model.path at."""
    import random

    from tasks.demo.base_model import build_base_model
    from tasks.demo.synth import general_corpus

    shared = session_home / "shared"
    shared.mkdir(exist_ok=True)
    corpus = shared / "general_corpus.txt"
    corpus.write_text("\n\n".join(general_corpus(random.Random(8))) + "\n")  # synth: Random(seed + 1), seed 7
    return Path(build_base_model(corpus_path=corpus, models_root=shared / "models", size="tiny")["model_dir"])


# `make test` runs two pytest-xdist workers, each taking whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder), two files ahead. The longest files go first, so the e2e's two demo-scale runs
# overlap the rest of the suite instead of following it; the third file, queued behind the e2e on its
# worker, is a short one.
LONGEST_FIRST = (
    "tests/dags/test_pipeline_e2e.py",
    "tests/dags/test_backfill.py",
    "tests/test_config.py",
    "tests/cluster/test_cluster.py",
    "tests/dags/test_browser.py",
    "tests/bench/test_bench_utility.py",
    "tests/train/test_train.py",
    "tests/train/test_train_distributed.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep their order
