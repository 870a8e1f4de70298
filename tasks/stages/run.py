"""What every stage function shares: the run's resolved config, its stage records, timing, and secrets.

A stage function (`tasks.stages.privacy_finetune`, `tasks.stages.monthly_refinetune`) is the one hop
from an Airflow task to the stage logic: it reads the run's resolved config (`run_config`), calls a
pure function of `tasks.data`, `tasks.train`, `tasks.eval` or `tasks.release`, and saves its small
JSON result as `runs/<run>/stages/<stage>.json` (`save_stage`, `timed`): the report is built from
those files, not from XCom.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from tasks.config import REPO_ROOT, Paths, PipelineConfig

log = logging.getLogger(__name__)


def run_config(run_id: str) -> PipelineConfig:
    """The config this run resolved in its prepare stage (the trigger's Params already applied)."""
    path = Paths().run_dir(run_id) / "config.resolved.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the run has no resolved config; the prepare task must run first")
    return PipelineConfig.model_validate_json(path.read_text())


def repo_path(value: str) -> Path:
    """A config path: absolute as given, else relative to the repository (include/...)."""
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path


def save_stage(run_id: str, stage: str, result: dict) -> dict:
    """Write `runs/<run>/stages/<stage>.json` atomically and return the result."""
    out = Paths().run_dir(run_id) / "stages"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    tmp.replace(out / f"{stage}.json")
    return result


def timed(run_id: str, stage: str, fn, /, *args, **kwargs) -> dict:
    """Run `fn`, add its wall time as "seconds", log the scalar figures (never paths or text), save it."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    result = {**result, "seconds": round(time.perf_counter() - start, 1)}
    log.info(
        "%s done in %.1fs: %s",
        stage,
        result["seconds"],
        {k: v for k, v in result.items() if isinstance(v, (int, float, bool, str)) and not str(v).startswith("/")},
    )
    return save_stage(run_id, stage, result)


def mask_key(cfg: PipelineConfig) -> bytes:
    """The pseudonymisation key, read by the masking tasks alone: the env var (a container's secret), the
    Airflow connection, or the owner-only key file under PFT_HOME (`make setup` writes one)."""
    from tasks.pii import MissingKeyError, resolve_key

    try:
        return resolve_key(env_var=cfg.mask.key_env, conn_id=cfg.mask.key_conn_id)
    except MissingKeyError as missing:
        key_file = Paths().home / cfg.mask.key_file if cfg.mask.key_file else None
        if key_file is None or not key_file.is_file():
            raise MissingKeyError(f"{missing} Or put it in the file mask.key_file ({key_file}), mode 0600.") from None
        if key_file.stat().st_mode & 0o077:
            raise MissingKeyError(
                f"{key_file}: the pseudonymisation key file is readable by other users; "
                f"`chmod 600 {key_file}` (and 700 on its folder)"
            ) from None
        key = key_file.read_text(encoding="utf-8").strip()
        if not key:
            raise MissingKeyError(f"{key_file}: the pseudonymisation key file is empty") from None
        return key.encode("utf-8")


def cli_parser(description: str) -> argparse.ArgumentParser:
    """The one-process CLIs (privacy_finetune, monthly_refinetune): logging on, repeatable --param NAME=JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="a DAG Param override")
    return parser


def cli_params(args: argparse.Namespace) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
