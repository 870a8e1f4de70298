"""Launching the training recipe: `torchrun -m tasks.train.recipe`, the command a GPU worker runs."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from tasks.config import REPO_ROOT

log = logging.getLogger(__name__)


def launch_torchrun(spec_path: Path, *, train_cfg: dict, run_id: str | None = None, log_path: Path) -> None:
    """torchrun -m tasks.train.recipe: the same entrypoint a GPU node runs (rendezvous flags from train config)."""
    from tasks.train.distributed import torchrun_args

    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_args(train_cfg, spec_path=spec_path, run_id=run_id)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log.info("launching: %s", " ".join(cmd))
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT
        )
        for line in proc.stdout:  # progress lines hold step, loss, ε, tokens/s — no record text
            out.write(line)
            if " step " in line or "Error" in line:
                log.info("train | %s", line.rstrip())
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"training failed (exit {code}); see {log_path}. Last lines:\n" + "\n".join(tail))
