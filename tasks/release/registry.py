"""Register a fine-tuned model in the MLflow model registry and manage its release.

Logs an MLflow pyfunc (`tasks/serve/pyfunc_model.py`, a model from code) whose
artifacts are the base model directory and the PEFT adapter, registers it as a
new version of `model_name`, tags the version (dataset revision, privacy
budget, metrics: whatever the caller passes) and points an alias at it
(`challenger` by default).

Release: `promote` moves `champion` after approval (or on the gates alone) and
keeps the replaced one as `previous-champion`; `record_rejection` records a
reviewer's no; `rollback` walks the chain of champions back; `mark_for_retirement`
flags a version (right to erasure). Every decision is a version tag plus an entry in
the model's audit trail; serving (`tasks.serve.app`) follows the `champion` alias.

    python -m tasks.release.registry show
    python -m tasks.release.registry promote --version 3 --approved-by alice --comment "gates green"
    python -m tasks.release.registry rollback [--to-version 2]

Offline by construction: pip requirements are pinned explicitly from the
installed versions, so MLflow never resolves packages, and the tracking store
is the local one from `tasks.common.tracking.mlflow_experiment`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC
from importlib import metadata
from pathlib import Path

from tasks.common import offline
from tasks.common.tracking import mlflow_experiment
from tasks.config import Paths

PYFUNC_CODE = Path(__file__).resolve().parent.parent / "serve" / "pyfunc_model.py"  # the served model is code
MODEL_ARTIFACT_NAME = "model"
# What the pyfunc imports at load time; pinned to what this environment runs.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "peft", "safetensors", "pandas")


def pip_requirements(packages: Sequence[str] = SERVING_PACKAGES) -> list[str]:
    """Exact pins from importlib.metadata; a local label (torch "+cpu") is dropped so a CUDA build also satisfies it."""
    return [f"{name}=={metadata.version(name).split('+', 1)[0]}" for name in packages]


def _check_dir(path: Path, what: str, must_hold: str) -> Path:
    path = Path(path)
    if not (path / must_hold).is_file():
        raise FileNotFoundError(
            f"{what} directory {path} has no {must_hold}; pass the folder written by save_pretrained"
        )
    return path


def quiet_mlflow() -> None:
    # MLflow logs INFO lines (alembic migrations) and progress bars per call; keep task logs readable.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (its import configures the "mlflow" logger: set the level after it)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def register_model(
    *,
    paths: Paths,
    model_name: str,
    alias: str = "challenger",
    base_model_dir: Path,
    adapter_dir: Path | None,
    mlflow_run_id: str | None,
    tags: Mapping[str, object],
    metrics: Mapping[str, float],
) -> dict:
    """Log the pyfunc in the run (or a new run), register a version, tag it, set the alias.

    `metrics` are logged on the run and linked to the logged model; `tags` are
    set on the model version with values as strings. Returns plain JSON-able
    identifiers only.
    """
    offline.apply()
    quiet_mlflow()
    base_model_dir = _check_dir(base_model_dir, "base model", "config.json")
    # full / freeze fine-tuning save whole weights: base_model_dir is then the tuned model, no adapter
    adapter_dir = _check_dir(adapter_dir, "adapter", "adapter_config.json") if adapter_dir else None
    experiment_id = mlflow_experiment(paths)

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    # max_new_tokens as an inference param (tasks/serve/pyfunc_model.py checks its bounds); default 24.
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 24)]),
    )
    input_example = pd.DataFrame({"question": ["What is the out-of-network deductible?"]})

    active = mlflow.active_run()
    if mlflow_run_id is not None and active is not None and active.info.run_id == mlflow_run_id:
        run_ctx = _NoEnd(active)  # already inside the caller's run: log there, leave it open
    elif mlflow_run_id is not None:
        run_ctx = mlflow.start_run(run_id=mlflow_run_id, nested=active is not None)
    else:
        run_ctx = mlflow.start_run(
            experiment_id=experiment_id, run_name=f"register-{model_name}", nested=active is not None
        )

    with run_ctx as run:
        run_id = run.info.run_id
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={"base_model": str(base_model_dir), **({"adapter": str(adapter_dir)} if adapter_dir else {})},
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)

    str_tags = {str(k): str(v) for k, v in tags.items()}
    version = mlflow.register_model(info.model_uri, model_name, tags=str_tags)
    MlflowClient().set_registered_model_alias(model_name, alias, version.version)
    return {
        "model_name": model_name,
        "version": int(version.version),
        "alias": alias,
        "run_id": run_id,
        "model_uri": f"models:/{model_name}/{version.version}",
    }


class _NoEnd:
    """Context manager yielding an already-active run without ending it on exit."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        return self.run

    def __exit__(self, *exc) -> bool:
        return False


# ---------------------------------------------------------------- release: promote, reject, roll back, retire
#
# Aliases carry the state: `champion` is what serving loads, `previous-champion` what a rollback
# restores. Version tags carry each decision (who, when, why) and the chain: every promoted version
# tags the champion it replaced (`previous_champion`), so a rollback walks back one step at a time
# through any number of promote/rollback cycles. An append-only audit trail on the registered
# model (tags `audit.0001`, `audit.0002`, ...) keeps every event, since version tags are
# overwritten when a version is promoted again.

PREVIOUS_ALIAS = "previous-champion"
APPROVALS = ("approved", "gates-only")
COMMENT_MAX_CHARS = 500  # reviewer comments are free text: bounded, one line
AUDIT_PREFIX = "audit."


class RegistryError(RuntimeError):
    """A release step that cannot run: unknown version, nothing to roll back to, a retired version."""


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _clean_comment(comment: str | None) -> str | None:
    """One line, control characters dropped, at most COMMENT_MAX_CHARS (an ellipsis marks a cut)."""
    if comment is None:
        return None
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(comment)).split())
    if len(text) > COMMENT_MAX_CHARS:
        text = text[: COMMENT_MAX_CHARS - 1] + "…"
    return text or None


def registry_client(paths: Paths):
    """An MlflowClient on the embedded store (or the deployment's tracking server)."""
    quiet_mlflow()
    mlflow_experiment(paths)  # sets tracking and registry URIs, creates the store on first use
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=paths.mlflow_tracking_uri, registry_uri=paths.mlflow_tracking_uri)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def alias_version(client, model_name: str, alias: str) -> int | None:
    """The version an alias points at; None when the alias or the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def get_version(client, model_name: str, version: int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(int(version)))
    except MlflowException as exc:
        if _not_found(exc):
            raise RegistryError(
                f"model '{model_name}' has no version {version}; list its versions with "
                f"`python -m tasks.release.registry show --model-name {model_name}`"
            ) from None
        raise


def _set_tags(client, model_name: str, version: int, tags: Mapping[str, object | None]) -> None:
    """Set tags; a None value deletes the tag (stale fields from an earlier decision must not linger)."""
    current = client.get_model_version(model_name, str(version)).tags
    for key, value in tags.items():
        if value is None:
            if key in current:
                client.delete_model_version_tag(model_name, str(version), key)
        else:
            client.set_model_version_tag(model_name, str(version), key, str(value))


def _audit(client, model_name: str, event: Mapping[str, object]) -> str:
    """Append one event (JSON, ids and names only) to the registered model's audit trail."""
    tags = client.get_registered_model(model_name).tags
    seq = 1 + max(
        (int(k[len(AUDIT_PREFIX) :]) for k in tags if k.startswith(AUDIT_PREFIX) and k[len(AUDIT_PREFIX) :].isdigit()),
        default=0,
    )
    key = f"{AUDIT_PREFIX}{seq:04d}"
    client.set_registered_model_tag(model_name, key, json.dumps(dict(event), sort_keys=True))
    return key


def audit_trail(paths: Paths, model_name: str) -> list[dict]:
    """Every promote / rollback / rejection / retirement event of `model_name`, oldest first."""
    from mlflow.exceptions import MlflowException

    client = registry_client(paths)
    try:
        tags = client.get_registered_model(model_name).tags
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise
    keys = sorted(
        (k for k in tags if k.startswith(AUDIT_PREFIX) and k[len(AUDIT_PREFIX) :].isdigit()),
        key=lambda k: int(k[len(AUDIT_PREFIX) :]),
    )
    return [{"seq": int(k[len(AUDIT_PREFIX) :]), **json.loads(tags[k])} for k in keys]


def _retired(tags: Mapping[str, str]) -> bool:
    return tags.get("retire") == "true"


def _restorable(tags: Mapping[str, str]) -> bool:
    """A rollback may restore it: neither retired nor rejected (a reviewer may reject a demoted champion)."""
    return not _retired(tags) and tags.get("decision") != "rejected"


def promote(
    *,
    paths: Paths,
    model_name: str,
    version: int,
    champion_alias: str = "champion",
    approved_by: str | None,
    approval: str,
    comment: str | None = None,
    previous_alias: str = PREVIOUS_ALIAS,
) -> dict:
    """Move `champion_alias` to `version` after approval (or on the gates alone).

    The replaced champion keeps `previous_alias`; `version` is tagged promoted_at, approved_by,
    approval, approval_comment and previous_champion (the chain a rollback walks). Promoting the
    current champion again changes nothing and returns changed=False. Refused for a version that
    was rejected or is marked for retirement. Tags are written before the alias moves, so a failure
    half-way leaves the champion where it was.
    """
    _check_approval(approval, approved_by)
    client = registry_client(paths)
    version = int(version)
    mv = get_version(client, model_name, version)
    _check_promotable(mv.tags, model_name, version, champion_alias)
    current = alias_version(client, model_name, champion_alias)
    uri = f"models:/{model_name}@{champion_alias}"
    if current == version:
        return {
            "model_name": model_name,
            "version": version,
            "alias": champion_alias,
            "changed": False,
            "previous_champion": _int_or_none(mv.tags.get("previous_champion")),
            "promoted_at": mv.tags.get("promoted_at"),
            "model_uri": uri,
        }
    now = _now()
    _set_tags(client, model_name, version, _promotion_tags(approval, approved_by, comment, now, current))
    if current is not None:
        client.set_registered_model_alias(model_name, previous_alias, str(current))
    client.set_registered_model_alias(model_name, champion_alias, str(version))
    _audit(
        client,
        model_name,
        {
            "event": "promote",
            "version": version,
            "replaced": current,
            "at": now,
            "approval": approval,
            "by": approved_by,
        },
    )
    return {
        "model_name": model_name,
        "version": version,
        "alias": champion_alias,
        "changed": True,
        "previous_champion": current,
        "promoted_at": now,
        "approval": approval,
        "approved_by": approved_by,
        "model_uri": uri,
    }


def _check_approval(approval: str, approved_by: str | None) -> None:
    if approval not in APPROVALS:
        raise ValueError(f"approval must be one of {APPROVALS}, got {approval!r}")
    if approval == "approved" and not approved_by:
        raise ValueError("approval 'approved' needs approved_by: the reviewer's user name")


def _check_promotable(tags: Mapping[str, str], model_name: str, version: int, champion_alias: str) -> None:
    """Refuse a version marked for retirement or rejected by a reviewer."""
    if _retired(tags):
        raise RegistryError(
            f"{model_name} v{version} is marked for retirement "
            f"({tags.get('retire_reason', 'no reason recorded')}); it cannot become {champion_alias}"
        )
    if tags.get("decision") == "rejected":
        raise RegistryError(
            f"{model_name} v{version} was rejected by {tags.get('rejected_by')} at "
            f"{tags.get('rejected_at')}; register a new version, or delete its 'decision' tag "
            "in the MLflow UI if the rejection was a mistake"
        )


def _promotion_tags(
    approval: str, approved_by: str | None, comment: str | None, now: str, current: int | None
) -> dict[str, str | None]:
    """The promoted version's tags; None deletes a tag (see _set_tags)."""
    return {
        "decision": "promoted",
        "approval": approval,
        "approved_by": approved_by or "none",
        "approval_comment": _clean_comment(comment),
        "promoted_at": now,
        "previous_champion": str(current) if current is not None else "none",
        # champion again after a rollback: the rollback fields describe the past (kept in the audit trail)
        "rolled_back_at": None,
        "rolled_back_to": None,
        "rolled_back_by": None,
        "rollback_reason": None,
    }


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and str(value).isdigit() else None


def record_rejection(
    *,
    paths: Paths,
    model_name: str,
    version: int,
    rejected_by: str,
    comment: str | None,
    champion_alias: str = "champion",
) -> dict:
    """Record a reviewer's rejection on the version: decision=rejected, reviewer, time, comment.

    The version keeps its other aliases (it stays `challenger` until a newer one is registered)
    and can no longer be promoted or rolled back to. The serving champion cannot be rejected: roll
    back first. Recording the same rejection again (a retried task) changes nothing.
    """
    if not rejected_by:
        raise ValueError("rejected_by: the reviewer's user name is required")
    client = registry_client(paths)
    version = int(version)
    tags = get_version(client, model_name, version).tags
    if (
        tags.get("decision") == "rejected"
        and tags.get("rejected_by") == rejected_by
        and tags.get("rejection_comment") == _clean_comment(comment)
    ):
        # a retried task: already recorded, no second audit entry
        return {
            "model_name": model_name,
            "version": version,
            "decision": "rejected",
            "rejected_by": rejected_by,
            "rejected_at": tags.get("rejected_at"),
        }
    if alias_version(client, model_name, champion_alias) == version:
        raise RegistryError(
            f"{model_name} v{version} is the {champion_alias}; roll back first "
            f"(`make rollback` or `python -m tasks.release.registry rollback`), then record the rejection"
        )
    now = _now()
    _set_tags(
        client,
        model_name,
        version,
        {
            "decision": "rejected",
            "rejected_by": rejected_by,
            "rejected_at": now,
            "rejection_comment": _clean_comment(comment),
        },
    )
    _audit(client, model_name, {"event": "reject", "version": version, "at": now, "by": rejected_by})
    return {
        "model_name": model_name,
        "version": version,
        "decision": "rejected",
        "rejected_by": rejected_by,
        "rejected_at": now,
    }


def _rollback_target(client, model_name: str, start: int) -> tuple[int | None, list[int]]:
    """Walk the previous_champion chain from `start`: the first version that still exists and is
    neither retired nor rejected. Returns (target or None, the versions walked past)."""
    from mlflow.exceptions import MlflowException

    seen, skipped = {start}, []
    tags = client.get_model_version(model_name, str(start)).tags
    while (nxt := _int_or_none(tags.get("previous_champion"))) is not None and nxt not in seen:
        seen.add(nxt)
        try:
            tags = client.get_model_version(model_name, str(nxt)).tags
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            skipped.append(nxt)  # deleted (e.g. erased): keep walking
            break
        if _restorable(tags):
            return nxt, skipped
        skipped.append(nxt)
    return None, skipped


def rollback(
    *,
    paths: Paths,
    model_name: str,
    to_version: int | None = None,
    champion_alias: str = "champion",
    previous_alias: str = PREVIOUS_ALIAS,
    rolled_back_by: str | None = None,
    reason: str | None = None,
) -> dict:
    """Point `champion_alias` back at the champion the current one replaced (or at `to_version`).

    The demoted version is tagged rolled_back_at / rolled_back_to; `previous_alias` moves one step
    further back along the chain (or is removed at its start). Retired, rejected or deleted
    versions are skipped. `to_version` must have been champion before (promote a version that never was).
    Raises RegistryError when there is nothing to roll back to.
    """
    client = registry_client(paths)
    current = alias_version(client, model_name, champion_alias)
    if current is None:
        raise RegistryError(
            f"model '{model_name}' has no '{champion_alias}' alias: nothing to roll back "
            f"(promote a version first: `python -m tasks.release.registry promote --version N`)"
        )
    if to_version is None:
        target, skipped = _rollback_target(client, model_name, current)
        if target is None:
            why = f" (skipped retired, rejected or deleted versions {skipped})" if skipped else ""
            raise RegistryError(
                f"{model_name} v{current} is the first {champion_alias}: no earlier champion to roll "
                f"back to{why}. Promote another version instead, or pass --to-version N"
            )
    else:
        target = int(to_version)
        if target == current:
            raise RegistryError(f"{model_name} v{target} is already the {champion_alias}")
        tags = get_version(client, model_name, target).tags
        if not _restorable(tags):
            why = (
                f"is marked for retirement ({tags.get('retire_reason', 'no reason recorded')})"
                if _retired(tags)
                else f"was rejected by {tags.get('rejected_by')} at {tags.get('rejected_at')}"
            )
            raise RegistryError(f"{model_name} v{target} {why}; pick another version")
        if not tags.get("promoted_at"):
            raise RegistryError(
                f"{model_name} v{target} was never {champion_alias}; a rollback only restores a "
                f"version that was approved before. Use `promote` for a new version"
            )
    now = _now()
    _set_tags(
        client,
        model_name,
        current,
        {
            "rolled_back_at": now,
            "rolled_back_to": str(target),
            "rolled_back_by": rolled_back_by,
            "rollback_reason": _clean_comment(reason),
        },
    )
    client.set_registered_model_alias(model_name, champion_alias, str(target))
    previous, _ = _rollback_target(client, model_name, target)
    if previous is None:
        client.delete_registered_model_alias(model_name, previous_alias)
    else:
        client.set_registered_model_alias(model_name, previous_alias, str(previous))
    _audit(
        client, model_name, {"event": "rollback", "version": target, "from": current, "at": now, "by": rolled_back_by}
    )
    return {
        "model_name": model_name,
        "version": target,
        "alias": champion_alias,
        "rolled_back_from": current,
        "previous_champion": previous,
        "rolled_back_at": now,
        "model_uri": f"models:/{model_name}@{champion_alias}",
    }


def mark_for_retirement(
    *,
    paths: Paths,
    model_name: str,
    version: int,
    reason: str,
    requested_by: str | None = None,
    champion_alias: str = "champion",
) -> dict:
    """Tag a version retire=true with a reason (e.g. a right-to-erasure request on its training data).

    Nothing is deleted here: a retired version can no longer be promoted or rolled back to, and
    `is_champion` in the result tells the caller to roll back (or promote a replacement) first.
    """
    if not reason:
        raise ValueError("reason: say why the version retires (e.g. 'erasure request ER-12 on dataset rev abc123')")
    client = registry_client(paths)
    version = int(version)
    get_version(client, model_name, version)
    now = _now()
    _set_tags(
        client,
        model_name,
        version,
        {
            "retire": "true",
            "retire_reason": _clean_comment(reason),
            "retire_requested_at": now,
            "retire_requested_by": requested_by,
        },
    )
    _audit(client, model_name, {"event": "retire", "version": version, "at": now, "by": requested_by})
    return {
        "model_name": model_name,
        "version": version,
        "retire": True,
        "retire_requested_at": now,
        "is_champion": alias_version(client, model_name, champion_alias) == version,
    }


def champion(paths: Paths, model_name: str, alias: str = "champion") -> dict | None:
    """The version `alias` points at: {model_name, version, alias, aliases, tags, run_id, model_uri};
    None when the model or the alias does not exist yet."""
    client = registry_client(paths)
    version = alias_version(client, model_name, alias)
    if version is None:
        return None
    mv = client.get_model_version(model_name, str(version))
    return {
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "aliases": sorted(mv.aliases or []),
        "tags": dict(mv.tags),
        "run_id": mv.run_id,
        "model_uri": f"models:/{model_name}/{version}",
    }


def download_champion(paths: Paths, model_name: str, dst_dir: Path, alias: str = "champion") -> dict | None:
    """Download the champion's pyfunc into `dst_dir`; returns {model_name, version, base_model_dir,
    adapter_dir (None for whole-weight methods), model_dir} as local paths that
    `tasks.eval.qa.evaluate_qa` / `load_causal_lm` take. None when there is no champion."""
    info = champion(paths, model_name, alias)
    if info is None:
        return None
    import mlflow
    from mlflow.models import Model

    quiet_mlflow()
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(dst_dir)))
    artifacts = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
    if "base_model" not in artifacts:
        raise RegistryError(
            f"{model_name} v{info['version']} has no 'base_model' artifact in its pyfunc "
            f"({local / 'MLmodel'}); was it logged by tasks.release.registry?"
        )

    def artifact_dir(name: str) -> str | None:
        entry = artifacts.get(name)
        return str(local / entry["path"]) if entry else None

    return {
        "model_name": model_name,
        "version": info["version"],
        "model_dir": str(local),
        "base_model_dir": artifact_dir("base_model"),
        "adapter_dir": artifact_dir("adapter"),
    }


def versions(paths: Paths, model_name: str) -> list[dict]:
    """Every version with its aliases and release tags (decision, approval, rollback, retirement)."""
    client = registry_client(paths)
    keys = (
        "decision",
        "approval",
        "approved_by",
        "promoted_at",
        "previous_champion",
        "rejected_by",
        "rejected_at",
        "rolled_back_at",
        "rolled_back_to",
        "retire",
        "retire_reason",
        "gates",
        "dataset_rev",
        "epsilon",
    )
    from mlflow.exceptions import MlflowException

    try:  # search results carry no aliases: read them from the registered model
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise
    out = []
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        out.append(
            {
                "version": int(mv.version),
                "aliases": sorted(a for a, v in aliases.items() if int(v) == int(mv.version)),
                **{k: mv.tags[k] for k in keys if k in mv.tags},
            }
        )
    return sorted(out, key=lambda v: v["version"])


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--{what} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


COMMANDS = ("register", "promote", "reject", "rollback", "retire", "show")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="data root (default: $PFT_HOME or .local)")
    common.add_argument(
        "--model-name",
        default=argparse.SUPPRESS,
        help="registered model (default: registry.model_name of the pipeline config)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m tasks.release.registry",
        parents=[common],
        description="The model registry: register a version, promote it to champion, record a rejection, "
        "roll back, mark for retirement, show the state and the audit trail.",
        epilog="A bare `python -m tasks.release.registry --base-model ... --adapter ...` means `register`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    reg = sub.add_parser("register", parents=[common], help="log the pyfunc and register a new version")
    reg.add_argument("--alias", default="challenger")
    reg.add_argument(
        "--base-model", type=Path, required=True, help="HF causal-LM directory (tuned weights for full/freeze)"
    )
    reg.add_argument(
        "--adapter", type=Path, default=None, help="PEFT adapter directory (omit for whole-weight methods)"
    )
    reg.add_argument("--mlflow-run-id", default=None, help="log into this run (default: a new run)")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="model version tag")
    reg.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE", help="numeric metric")

    pro = sub.add_parser("promote", parents=[common], help="move the champion alias to a version")
    pro.add_argument("--version", type=int, required=True)
    who = pro.add_mutually_exclusive_group(required=True)
    who.add_argument("--approved-by", help="the reviewer who approved it")
    who.add_argument("--gates-only", action="store_true", help="promote on the gates alone (no reviewer)")
    pro.add_argument("--comment", default=None)
    pro.add_argument("--champion-alias", default="champion")

    rej = sub.add_parser("reject", parents=[common], help="record a reviewer's rejection on a version")
    rej.add_argument("--version", type=int, required=True)
    rej.add_argument("--by", required=True, help="the reviewer")
    rej.add_argument("--comment", default=None)

    rb = sub.add_parser("rollback", parents=[common], help="champion back to the previous champion")
    rb.add_argument("--to-version", type=int, default=None, help="a version that was champion before")
    rb.add_argument("--by", default=None, help="who rolls back (recorded)")
    rb.add_argument("--reason", default=None)
    rb.add_argument("--champion-alias", default="champion")

    ret = sub.add_parser("retire", parents=[common], help="mark a version for retirement (e.g. erasure request)")
    ret.add_argument("--version", type=int, required=True)
    ret.add_argument("--reason", required=True)
    ret.add_argument("--by", default=None)

    show = sub.add_parser("show", parents=[common], help="champion, versions and the audit trail")
    show.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return parser


def _show_text(state: dict) -> str:
    champ = state["champion"]
    lines = [
        f"model {state['model_name']}: champion "
        + (f"v{champ['version']}" if champ else "none (promote a version first)")
    ]
    for v in state["versions"]:
        extra = ", ".join(
            f"{k}={v[k]}"
            for k in (
                "decision",
                "approval",
                "approved_by",
                "promoted_at",
                "previous_champion",
                "rolled_back_at",
                "retire",
            )
            if k in v
        )
        lines.append(f"  v{v['version']:<4} {','.join(v['aliases']) or '-':<30} {extra}")
    if state["audit"]:
        lines.append("audit trail:")
        lines += [
            f"  {e['seq']:>4} {e.get('at', '')} {e['event']:<8} v{e.get('version')} "
            + ", ".join(f"{k}={e[k]}" for k in ("replaced", "from", "approval", "by") if e.get(k) is not None)
            for e in state["audit"]
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    offline.apply()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help") and not set(argv) & set(COMMANDS):
        argv = ["register", *argv]  # the original flat CLI
    args = _parser().parse_args(argv)
    home = getattr(args, "home", None)
    model_name = getattr(args, "model_name", None)
    if model_name is None:
        from tasks.config import load_config

        model_name = load_config().registry.model_name
    paths = Paths(home)
    quiet_mlflow()
    try:
        if args.command == "register":
            metrics = {k: float(v) for k, v in _parse_pairs(args.metric, "metric").items()}
            result = register_model(
                paths=paths,
                model_name=model_name,
                alias=args.alias,
                base_model_dir=args.base_model,
                adapter_dir=args.adapter,
                mlflow_run_id=args.mlflow_run_id,
                tags=_parse_pairs(args.tag, "tag"),
                metrics=metrics,
            )
        elif args.command == "promote":
            result = promote(
                paths=paths,
                model_name=model_name,
                version=args.version,
                champion_alias=args.champion_alias,
                approved_by=args.approved_by,
                approval="gates-only" if args.gates_only else "approved",
                comment=args.comment,
            )
        elif args.command == "reject":
            result = record_rejection(
                paths=paths, model_name=model_name, version=args.version, rejected_by=args.by, comment=args.comment
            )
        elif args.command == "rollback":
            result = rollback(
                paths=paths,
                model_name=model_name,
                to_version=args.to_version,
                champion_alias=args.champion_alias,
                rolled_back_by=args.by,
                reason=args.reason,
            )
            print(
                f"champion of {model_name} is now v{result['version']} (rolled back from "
                f"v{result['rolled_back_from']})",
                file=sys.stderr,
            )
        elif args.command == "retire":
            result = mark_for_retirement(
                paths=paths, model_name=model_name, version=args.version, reason=args.reason, requested_by=args.by
            )
        else:
            state = {
                "model_name": model_name,
                "champion": champion(paths, model_name),
                "versions": versions(paths, model_name),
                "audit": audit_trail(paths, model_name),
            }
            print(json.dumps(state, indent=2) if args.json else _show_text(state))
            return 0
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
