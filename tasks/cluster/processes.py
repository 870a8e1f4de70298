"""Long-running service processes: start detached with a pid file and a log, check, stop, wait.

Each service runs in its own session (process group), so stopping it reaches the children it
started too (Celery's pool, gunicorn/uvicorn workers, the task runners).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    """One service process: its pid file and log under the cluster's state folder."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid when that process still runs, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            return None
        return pid

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, grace_s: float = 30, sig: int = signal.SIGTERM) -> bool:
        """`sig` to the service's process group, SIGKILL after `grace_s` to the group and to every
        descendant that left it (torchrun starts its own session): nothing it started outlives it.
        False when it was not running."""
        import psutil

        pid = self.pid()
        if pid is None:
            return False
        family = _family(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        if sig != signal.SIGKILL:
            psutil.wait_procs(family, timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(family, timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-chars:]
        return ""


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def _family(pid: int) -> list:
    """The process and all its descendants, whatever session they moved to."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, *, daemon: Daemon | None = None) -> float:
    """Poll `check` until it returns True; the seconds it took. A daemon that exits meanwhile, or
    the timeout, raises with the daemon's log tail."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        if daemon is not None and daemon.pid() is None:
            raise RuntimeError(
                f"{daemon.name} exited while waiting for {what}; {daemon.log_file}:\n{daemon.log_tail()}"
            )
        time.sleep(0.5)
    tail = f"; {daemon.log_file}:\n{daemon.log_tail()}" if daemon else ""
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s{tail}")
