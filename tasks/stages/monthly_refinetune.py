"""Monthly re-finetuning: what the `monthly_refinetune` DAG runs for one month.

Each run owns one month, named by its logical date ("2026-03"), and works under the run key
`monthly-2026-03`: its run folder, its dataset tag (`run-monthly-2026-03`), its privacy-ledger
entry and its registry version are all found by that key, so a rerun of the month (a cleared
run, a reprocessing backfill) replaces its outputs and never adds a second commit, ledger entry
or model version.

The month's dataset version is the previous month's version plus this month's masked landing
rows (a record id delivered again replaces the old record), minus every record of a subject
named in a right-to-erasure request of this or an earlier month:

    landing/2026-03/erasure/*.csv   header `subject_id` (optional `id_type`, default MEMBER_ID)
    landing/2026-03/erasure/*.jsonl {"subject_id": "...", "id_type": "..."}
    landing/2026-03/erasure/*.txt   one subject id per line (# comments)

Records are matched in the clean zone by the subject id's keyed pseudonym (the one the masker
wrote), so erasure never reads raw text. Every registered model version trained on a dataset
revision that held a removed record is marked for retirement, and a warm start never starts
from such a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tasks.common.digest import update_from_file
from tasks.config import Paths, safe_run_id
from tasks.data.erasure import erasure_subjects, subject_pseudonyms
from tasks.data.months import check_earlier_months, month_tags, previous_version, run_key, version_tag
from tasks.data.months import month_of as month_of  # re-exported for the DAG: which month a run owns
from tasks.data.months import previous_month_ready as previous_month_ready  # re-exported for the DAG's sensor
from tasks.data.version import DATASET_PATH, committed_md5, dataset_file, holds_same
from tasks.stages import privacy_finetune
from tasks.stages.run import cli_params, cli_parser, mask_key, repo_path, run_config, save_stage, timed

log = logging.getLogger(__name__)

DAG_ID = "monthly_refinetune"


# ---------------------------------------------------------------- prepare


def stage_prepare(airflow_run_id: str, month: str, params: dict | None = None) -> dict:
    """Resolve config and base model under the month's run key; link the Airflow run id to it, so the
    report pages and run notes find the month's folder from either name."""
    key = run_key(month)
    check_earlier_months(month)
    prepared = privacy_finetune.stage_prepare(key, params, dag_id=DAG_ID)
    paths = Paths()
    link = paths.run_dir(airflow_run_id)
    if safe_run_id(airflow_run_id) != key and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(key, target_is_directory=True)
    result = {**prepared, "month": month, "airflow_run_id": airflow_run_id}
    return save_stage(key, "prepare", result)


# ---------------------------------------------------------------- the month's dataset


def _records(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _record_ids(path: Path) -> set[str]:
    return {r["record_id"] for r in _records(path)}


def stage_dataset(key: str, month: str, masked: dict) -> dict:
    """Previous version + this month's masked rows − erased subjects → runs/<key>/monthly/train.jsonl;
    mark the model versions trained on removed records for retirement. Counts only in the result."""
    cfg, paths = run_config(key), Paths()
    out_dir = paths.run_dir(key) / "monthly"

    def build() -> dict:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        prev = previous_version(paths.datasets, month)
        new_path = Path(masked["masked_path"])
        new_ids = _record_ids(new_path)
        this, earlier = erasure_subjects(paths.landing, month, cfg.monthly.erasure_id_type)
        pseudonyms = subject_pseudonyms(this + earlier, mask_key(cfg), repo_path(cfg.mask.recognizers))
        needle = re.compile("|".join(re.escape(p) for p in sorted(pseudonyms))) if pseudonyms else None
        counts = {"previous_records": 0, "replaced": 0, "new_records": len(new_ids), "erased_records": 0}
        erased_ids: list[str] = []
        found_subjects: set[str] = set()
        out_path = out_dir / "train.jsonl"
        with open(out_path, "w", encoding="utf-8") as out:
            sources = [("new", new_path)]
            if prev is not None:
                sources.insert(
                    0,
                    (
                        "previous",
                        dataset_file(
                            registry_dir=paths.datasets,
                            remote_dir=paths.dvc_remote,
                            rev=prev["rev"],
                            work_dir=out_dir / "checkout",
                        ),
                    ),
                )
            for origin, path in sources:
                for record in _records(path):
                    if origin == "previous":
                        counts["previous_records"] += 1
                        if record["record_id"] in new_ids:  # delivered again this month: the new copy wins
                            counts["replaced"] += 1
                            continue
                    hits = needle.findall(record.get("text") or "") if needle else []
                    if hits:
                        erased_ids.append(record["record_id"])
                        found_subjects.update(hits)
                        continue
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts["erased_records"] = len(erased_ids)
        counts["records"] = counts["previous_records"] - counts["replaced"] + counts["new_records"] - len(erased_ids)
        # Record ids only (no subject ids, no text): what the retirement check and an auditor need.
        (out_dir / "erased_record_ids.json").write_text(json.dumps(sorted(erased_ids), indent=0) + "\n")
        retired = retire_models_trained_on(
            paths,
            cfg.registry.model_name,
            set(erased_ids),
            month=month,
            requests=len(this),
            champion_alias=cfg.registry.champion_alias,
            work_dir=out_dir / "checkout",
        )
        shutil.rmtree(out_dir / "checkout", ignore_errors=True)
        return {
            **counts,
            "month": month,
            "masked_path": str(out_path),
            "previous_month": prev and prev["month"],
            "previous_rev": prev and prev["rev"],
            "erasure": {
                "requests_this_month": len(this),
                "requests_earlier_months": len(earlier),
                "subjects": len(pseudonyms),
                "subjects_found": len(found_subjects),
                "records_removed": len(erased_ids),
                "request_files": sorted({s.source.rsplit(":", 1)[0] for s in this}),
            },
            "retired_versions": retired,
        }

    return timed(key, "dataset", build)


def retire_models_trained_on(
    paths: Paths,
    model_name: str,
    record_ids: set[str],
    *,
    month: str,
    requests: int,
    champion_alias: str,
    work_dir: Path,
) -> list[dict]:
    """Mark every not-yet-retired version whose training dataset held one of `record_ids`."""
    from tasks.release.registry import mark_for_retirement, versions

    if not record_ids:
        return []
    retired, holds = [], {}
    for v in versions(paths, model_name):
        rev = v.get("dataset_rev")
        if not rev or v.get("retire") == "true":
            continue
        if rev not in holds:
            try:
                holds[rev] = bool(
                    _record_ids(
                        dataset_file(
                            registry_dir=paths.datasets, remote_dir=paths.dvc_remote, rev=rev, work_dir=work_dir
                        )
                    )
                    & record_ids
                )
            except Exception as exc:  # a revision we cannot read: say so, retire it to be safe
                log.warning(
                    "dataset %s of v%s unreadable (%s): marked for retirement to be safe",
                    rev[:12],
                    v["version"],
                    type(exc).__name__,
                )
                holds[rev] = True
        if holds[rev]:
            reason = (
                f"right to erasure: its training data (dataset {rev[:12]}) held records removed from the "
                f"{month} version ({requests} request(s) this month)"
            )
            result = mark_for_retirement(
                paths=paths,
                model_name=model_name,
                version=v["version"],
                reason=reason,
                requested_by="monthly_refinetune",
                champion_alias=champion_alias,
            )
            retired.append({"version": v["version"], "dataset_rev": rev, "was_champion": result["is_champion"]})
            log.warning(
                "v%s marked for retirement: trained on erased records%s",
                v["version"],
                " (it is the champion: this month's model, once promoted, replaces it)"
                if result["is_champion"]
                else "",
            )
    return retired


# ---------------------------------------------------------------- version: one commit per month


def existing_version(
    paths: Paths, month: str, data_path: Path, profile: dict | None, qa_paths: dict[str, Path]
) -> dict | None:
    """The month's committed version when it holds exactly these bytes (data, profile, both QA splits)."""
    rev = month_tags(paths.datasets).get(month)
    if rev is None or not holds_same(paths.datasets, rev, data_path, profile, qa_paths):
        return None
    return {
        "dataset_rev": rev,
        "dvc_md5": committed_md5(paths.datasets, rev),
        "dataset_path": DATASET_PATH,
        "created": False,
        "tag": version_tag(month),
        "registry": str(paths.datasets.resolve()),
        "reused": True,
    }


def stage_version(key: str, month: str, dataset: dict) -> dict:
    """Commit the month's dataset, unless the month's tag already holds the same bytes (a rerun)."""
    profile, qa_paths = privacy_finetune.version_inputs(key)
    same = existing_version(Paths(), month, Path(dataset["masked_path"]), profile, qa_paths)
    if same is not None:
        log.info(
            "version: the %s dataset is already committed with these bytes (%s); no new commit",
            month,
            same["dataset_rev"][:12],
        )
        return save_stage(key, "version", {**same, "seconds": 0.0})
    return privacy_finetune.stage_version(key, dataset)


# ---------------------------------------------------------------- train: warm start, replay


def warm_start_source(key: str, prepared: dict) -> tuple[dict | None, str]:
    """(the champion's adapter to start from, or None for the base model; why)."""
    from tasks.release.registry import champion, download_champion

    cfg, paths = run_config(key), Paths()
    if cfg.monthly.warm_start == "base":
        return None, "monthly.warm_start is 'base'"
    info = champion(paths, cfg.registry.model_name, cfg.registry.champion_alias)
    if info is None:
        return None, "no champion yet"
    tags, where = info["tags"], f"champion v{info['version']}"
    if tags.get("retire") == "true":
        # Its weights may hold what an erasure request removed: starting from them would bring it back.
        return None, f"{where} is marked for retirement"
    if tags.get("method") != cfg.train.method:
        return None, f"{where} was trained with {tags.get('method')!r}, this run uses {cfg.train.method!r}"
    if tags.get("base_model") != Path(prepared["base_model_dir"]).name:
        return None, f"{where} was trained on base model {tags.get('base_model')!r}"
    dst = paths.run_dir(key) / "warm_start"
    shutil.rmtree(dst, ignore_errors=True)
    local = download_champion(paths, cfg.registry.model_name, dst, cfg.registry.champion_alias)
    if not local or not local.get("adapter_dir"):
        return None, f"{where} has no adapter"
    saved = json.loads((Path(local["adapter_dir"]) / "adapter_config.json").read_text())
    if cfg.train.method == "lora" and saved.get("r") != cfg.train.lora_r:
        return None, f"{where} has LoRA rank {saved.get('r')}, this run uses {cfg.train.lora_r}"
    return {"source": where, "version": info["version"], "adapter_dir": local["adapter_dir"]}, "allowed"


def stage_train(key: str, prepared: dict, versioned: dict) -> dict:
    """Replay a finished month (same dataset revision and config) without training again; otherwise train,
    warm-started from the champion's adapter when allowed."""
    done = privacy_finetune.completed_training(key, prepared, versioned)
    if done is not None:
        log.info(
            "train: %s already trained on dataset %s with this config; replayed, not retrained",
            key,
            versioned["dataset_rev"][:12],
        )
        return save_stage(key, "train", {**done, "reused": True})
    source, reason = warm_start_source(key, prepared)
    log.info("warm start: %s", source["source"] if source else f"from the base model ({reason})")
    return privacy_finetune.stage_train(
        key, prepared, versioned, warm_start=source or {"source": "base", "reason": reason}
    )


# ---------------------------------------------------------------- register: one version per month


def weights_sha256(trained: dict) -> str:
    """Digest of the trained weights (adapter or whole model files)."""
    folder = Path(trained.get("adapter_dir") or trained["model_dir"])
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        h.update(path.name.encode())
        update_from_file(h, path)
    return h.hexdigest()


def stage_register(key: str, prepared: dict, versioned: dict, trained: dict, evaluated: dict) -> dict:
    """Register the month's model once: a replay finds its version by run key and weights digest; a
    retrained month replaces the month's earlier version (deleted unless it still serves as champion)."""
    from tasks.release.registry import champion, registry_client

    cfg, paths = run_config(key), Paths()
    digest = weights_sha256(trained)
    client = registry_client(paths)
    name = cfg.registry.model_name
    earlier = []
    try:
        earlier = client.search_model_versions(f"name = '{name}' and tags.pipeline_run_id = '{key}'")
    except Exception as exc:  # no registered model yet
        log.debug("no earlier version for %s: %s", key, exc)
    for mv in earlier:
        if mv.tags.get("weights_sha256") == digest:
            log.info("register: %s v%s already holds this month's model; reused", name, mv.version)
            if not mv.tags.get("decision"):  # undecided: it is this month's challenger again
                client.set_registered_model_alias(name, cfg.registry.alias, mv.version)
            return save_stage(
                key,
                "register",
                {
                    "model_name": name,
                    "version": int(mv.version),
                    "alias": cfg.registry.alias,
                    "run_id": mv.run_id,
                    "model_uri": f"models:/{name}/{mv.version}",
                    "reused": True,
                    "decision": mv.tags.get("decision"),
                    "seconds": 0.0,
                },
            )
    result = privacy_finetune.stage_register(key, prepared, versioned, trained, evaluated)
    client.set_model_version_tag(name, str(result["version"]), "weights_sha256", digest)
    current = champion(paths, name, cfg.registry.champion_alias)
    champion_version = current and current["version"]
    replaced = []
    for mv in earlier:
        if int(mv.version) == champion_version:
            client.set_model_version_tag(name, mv.version, "superseded_by", str(result["version"]))
        else:
            client.delete_model_version(name, mv.version)
        replaced.append(int(mv.version))
    if replaced:
        log.info("register: v%s replaces this month's earlier version(s) %s", result["version"], replaced)
    return save_stage(key, "register", {**result, "replaced_versions": replaced})


def stage_decide(key: str, registered: dict, approval: dict | None) -> dict:
    """A replayed month whose version was already promoted or rejected keeps that decision: replaying
    January after March must not move the champion back to January's model."""
    decided = registered.get("decision")
    if decided not in ("promoted", "rejected"):
        return privacy_finetune.stage_decide(key, registered, approval)
    from tasks.release.registry import registry_client

    tags = registry_client(Paths()).get_model_version(registered["model_name"], str(registered["version"])).tags
    by = tags.get("approved_by") if decided == "promoted" else tags.get("rejected_by")
    log.info("decision: v%s was already %s; replayed, the registry is left as it is", registered["version"], decided)
    return save_stage(
        key,
        "decision",
        {
            "outcome": decided,
            "replayed": True,
            "by": None if by in (None, "none") else by,
            "at": tags.get("promoted_at") if decided == "promoted" else tags.get("rejected_at"),
            "comment": tags.get("approval_comment") or tags.get("rejection_comment"),
            "approval": tags.get("approval"),
            "model_name": registered["model_name"],
            "version": registered["version"],
        },
    )


# ---------------------------------------------------------------- one month without Airflow


def run_month(month: str, params: dict | None = None, *, airflow_run_id: str | None = None) -> dict:
    """One month of the monthly DAG in this process (debugging, tests): approval is not asked for;
    with registry.require_approval the version stays challenger."""
    key = run_key(month)
    prepared = stage_prepare(airflow_run_id or key, month, params)
    ingested = privacy_finetune.stage_ingest(key, month)
    privacy_finetune.stage_validate(key, ingested)
    masked = privacy_finetune.stage_mask(key, ingested)
    built = stage_dataset(key, month, masked)
    versioned = stage_version(key, month, built)
    trained = stage_train(key, prepared, versioned)
    evaluated = privacy_finetune.stage_evaluate(key, prepared, trained)
    registered = stage_register(key, prepared, versioned, trained, evaluated)
    from tasks.release.gates import PromotionGated

    try:
        privacy_finetune.stage_gates(key, evaluated, registered, trained, dag_id="monthly_refinetune")
    except PromotionGated:
        privacy_finetune.stage_report(key, strict=False)
        raise
    if not run_config(key).registry.require_approval or registered.get("decision"):
        stage_decide(key, registered, None)
    return privacy_finetune.stage_report(key)


def main() -> None:
    parser = cli_parser("Run one month of monthly_refinetune in this process (no Airflow).")
    parser.add_argument("--month", required=True, help="YYYY-MM: the landing partition and the dataset version")
    args = parser.parse_args()
    print(json.dumps(run_month(args.month, cli_params(args)), indent=2))


if __name__ == "__main__":
    main()
