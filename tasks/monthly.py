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

import csv
import hashlib
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks import pipeline
from tasks.config import Paths, safe_run_id
from tasks.ingest import ERASURE_DIRNAME, PARTITION_RE

log = logging.getLogger("tasks.monthly")

DAG_ID = "monthly_refinetune"
RUN_KEY_PREFIX = "monthly-"
ERASURE_SUFFIXES = (".csv", ".jsonl", ".txt")
MONTH_RE = PARTITION_RE  # a month is a landing partition name


class ErasureRequestError(ValueError):
    """An erasure request file that cannot be read; names the file, line and field (never the id)."""


@dataclass(frozen=True)
class Subject:
    id_type: str
    subject_id: str
    month: str
    source: str  # landing-relative file path and line, for error messages and counts


# ---------------------------------------------------------------- identity of a month

def month_of(logical_date) -> str:
    """The month a run owns: its logical date's year and month ("2026-03")."""
    if isinstance(logical_date, str):
        logical_date = datetime.fromisoformat(logical_date.replace("Z", "+00:00"))
    return f"{logical_date.year:04d}-{logical_date.month:02d}"


def run_key(month: str) -> str:
    if not MONTH_RE.match(month):
        raise ValueError(f"month {month!r}: expected YYYY-MM")
    return f"{RUN_KEY_PREFIX}{month}"


def version_tag(month: str) -> str:
    return f"run-{run_key(month)}"


def _paths() -> Paths:
    return Paths()


# ---------------------------------------------------------------- order of months

class PreviousMonthMissing(RuntimeError):
    """An earlier month has landing data but no dataset version: this month cannot build on it."""


def previous_month_ready(previous_run: dict | None) -> bool:
    """May this month start? Not while the run of an earlier month is still going (a backfill with
    --max-active-runs above 1 would start several). Whether the earlier months left a dataset version is
    `check_earlier_months`' question, asked by prepare. `previous_run`: {"state", "logical_date"} or None."""
    if previous_run is None or previous_run.get("logical_date") is None:
        return True
    if previous_run["state"] not in ("success", "failed"):
        log.info("waiting: the run of %s is %s", month_of(previous_run["logical_date"]), previous_run["state"])
        return False
    return True


def landed_months(landing: Path, *, up_to: str | None = None) -> list[str]:
    """The month partitions under landing/, oldest first (at most `up_to`)."""
    if not landing.is_dir():
        return []
    return sorted(p.name for p in landing.iterdir()
                  if p.is_dir() and MONTH_RE.match(p.name) and (up_to is None or p.name <= up_to))


def unversioned_earlier_months(month: str) -> list[str]:
    """Months before `month` that have a landing partition but no dataset version: building `month` now
    would leave their rows out of every later version. (A month that delivered nothing blocks nothing.)"""
    paths = _paths()
    versioned = month_tags(paths.datasets)
    return [m for m in landed_months(paths.landing) if m < month and m not in versioned]


def check_earlier_months(month: str) -> None:
    missing = unversioned_earlier_months(month)
    if missing:
        raise PreviousMonthMissing(
            f"landing partitions {', '.join(missing)} have no dataset version yet, and {month} would be built "
            f"without their rows: backfill them first (airflow backfill create --dag-id monthly_refinetune "
            f"--from-date {missing[0]}-01 --to-date {month}-01 --max-active-runs 1), or move a partition that "
            f"must not be trained on out of landing/")


# ---------------------------------------------------------------- prepare

def stage_prepare(airflow_run_id: str, month: str, params: dict | None = None) -> dict:
    """Resolve config and base model under the month's run key; link the Airflow run id to it, so the
    report pages and run notes find the month's folder from either name."""
    key = run_key(month)
    check_earlier_months(month)
    prepared = pipeline.stage_prepare(key, params, dag_id=DAG_ID)
    paths = _paths()
    link = paths.run_dir(airflow_run_id)
    if safe_run_id(airflow_run_id) != key and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(key, target_is_directory=True)
    result = {**prepared, "month": month, "airflow_run_id": airflow_run_id}
    return pipeline._save_stage(key, "prepare", result)


# ---------------------------------------------------------------- erasure requests

def read_erasure_requests(landing: Path, month: str, default_type: str) -> list[Subject]:
    """The subjects named in landing/<month>/erasure/; a bad line raises ErasureRequestError."""
    folder = landing / month / ERASURE_DIRNAME
    subjects: list[Subject] = []
    if not folder.is_dir():
        return subjects
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        rel = path.relative_to(landing).as_posix()
        suffix = path.suffix.lower()
        if suffix not in ERASURE_SUFFIXES:
            raise ErasureRequestError(f"{rel}: unsupported erasure request file (use .csv with a subject_id column, "
                                      ".jsonl with subject_id, or .txt with one id per line)")
        for line, fields in _request_rows(path, rel, suffix):
            subject_id = (fields.get("subject_id") or "").strip() if isinstance(fields.get("subject_id"), str) else ""
            if not subject_id:
                raise ErasureRequestError(f"{rel}: line {line}: field subject_id is missing or empty")
            id_type = fields.get("id_type") or default_type
            if not isinstance(id_type, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", id_type.strip()):
                raise ErasureRequestError(f"{rel}: line {line}: field id_type must be an entity type such as "
                                          f"MEMBER_ID")
            subjects.append(Subject(id_type.strip(), subject_id, month, f"{rel}:{line}"))
    return subjects


def _request_rows(path: Path, rel: str, suffix: str) -> Iterable[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ErasureRequestError(f"{rel}: not valid UTF-8") from None
    if suffix == ".txt":
        for number, raw in enumerate(text.splitlines(), 1):
            value = raw.split("#", 1)[0].strip()
            if value:
                yield number, {"subject_id": value}
    elif suffix == ".jsonl":
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                raise ErasureRequestError(f"{rel}: line {number}: not valid JSON") from None
            if not isinstance(obj, dict):
                raise ErasureRequestError(f"{rel}: line {number}: expected an object with subject_id")
            yield number, obj
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "subject_id" not in [f.strip() for f in reader.fieldnames]:
            raise ErasureRequestError(f"{rel}: line 1: the header has no subject_id column")
        for row in reader:
            yield reader.line_num, {(k or "").strip(): v for k, v in row.items()}


def erasure_subjects(landing: Path, month: str, default_type: str) -> tuple[list[Subject], list[Subject]]:
    """(requests of this month, requests of earlier months): both apply, so a subject erased once never
    comes back with a later delivery."""
    this, earlier = [], []
    for m in landed_months(landing, up_to=month):
        (this if m == month else earlier).extend(read_erasure_requests(landing, m, default_type))
    return this, earlier


def subject_pseudonyms(subjects: Iterable[Subject], key: bytes, recognizers_path: Path) -> dict[str, Subject]:
    """pseudonym → subject. Only types the masker pseudonymises can be found again in the clean zone."""
    from tasks.mask import load_spec, pseudonym

    spec = load_spec(recognizers_path)
    out = {}
    for s in subjects:
        op = spec.entities.get(s.id_type)
        if op is None or op.name != "pseudonym":
            how = "not masked" if op is None else f"masked with '{op.name}'"
            raise ErasureRequestError(f"{s.source}: field id_type {s.id_type} is {how} in {recognizers_path}; "
                                      "erasure finds records by the keyed pseudonym of the subject id, so the type "
                                      "must use the pseudonym operator")
        out[pseudonym(s.id_type, s.subject_id, key)] = s
    return out


# ---------------------------------------------------------------- the month's dataset

def month_tags(registry_dir: Path) -> dict[str, str]:
    """month → commit of every monthly dataset version in the registry."""
    if not (registry_dir / ".git").exists():
        return {}
    out = subprocess.run(["git", "tag", "--list", f"run-{RUN_KEY_PREFIX}*", "--format=%(refname:short) %(*objectname)"
                          " %(objectname)"], cwd=registry_dir, capture_output=True, text=True, check=True).stdout
    tags = {}
    for line in out.splitlines():
        name, *shas = line.split()
        month = name[len(f"run-{RUN_KEY_PREFIX}"):]
        if MONTH_RE.match(month):
            tags[month] = shas[0]  # annotated tag: the commit it points at
    return tags


def previous_version(registry_dir: Path, month: str) -> dict | None:
    """The newest monthly dataset version of a month before `month` (None: this is the first month)."""
    earlier = {m: rev for m, rev in month_tags(registry_dir).items() if m < month}
    if not earlier:
        return None
    prev = max(earlier)
    return {"month": prev, "rev": earlier[prev], "tag": version_tag(prev)}


def _git_show(registry_dir: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=registry_dir, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def committed_md5(registry_dir: Path, rev: str) -> str | None:
    """The md5 that revision's DVC pointer records for the dataset (None: no pointer there)."""
    import yaml

    from tasks.version import DATASET_PATH

    pointer = _git_show(registry_dir, rev, f"{DATASET_PATH}.dvc")
    return str(yaml.safe_load(pointer)["outs"][0]["md5"]) if pointer else None


def dataset_file(paths: Paths, rev: str, work_dir: Path) -> Path:
    """The masked dataset of a registry revision: from the registry's DVC cache when it holds it,
    else checked out from the DVC remote (what a worker without the cache does)."""
    from tasks.version import checkout_dataset

    md5 = committed_md5(paths.datasets, rev)
    if md5 is not None:
        cached = paths.datasets / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if cached.is_file():
            return cached
    out = work_dir / rev[:12]
    shutil.rmtree(out, ignore_errors=True)
    return checkout_dataset(registry_dir=paths.datasets, remote_dir=paths.dvc_remote, rev=rev, out_dir=out)


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
    cfg, paths = pipeline.run_config(key), _paths()
    out_dir = paths.run_dir(key) / "monthly"

    def build() -> dict:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        prev = previous_version(paths.datasets, month)
        new_path = Path(masked["masked_path"])
        new_ids = _record_ids(new_path)
        this, earlier = erasure_subjects(paths.landing, month, cfg.monthly.erasure_id_type)
        pseudonyms = subject_pseudonyms(this + earlier, pipeline._mask_key(cfg), pipeline._repo_path(cfg.mask.recognizers))
        needle = re.compile("|".join(re.escape(p) for p in sorted(pseudonyms))) if pseudonyms else None
        counts = {"previous_records": 0, "replaced": 0, "new_records": len(new_ids), "erased_records": 0}
        erased_ids: list[str] = []
        found_subjects: set[str] = set()
        out_path = out_dir / "train.jsonl"
        with open(out_path, "w", encoding="utf-8") as out:
            sources = [("new", new_path)]
            if prev is not None:
                sources.insert(0, ("previous", dataset_file(paths, prev["rev"], out_dir / "checkout")))
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
        retired = retire_models_trained_on(paths, cfg.registry.model_name, set(erased_ids), month=month,
                                           requests=len(this), champion_alias=cfg.registry.champion_alias,
                                           work_dir=out_dir / "checkout")
        shutil.rmtree(out_dir / "checkout", ignore_errors=True)
        return {**counts, "month": month, "masked_path": str(out_path),
                "previous_month": prev and prev["month"], "previous_rev": prev and prev["rev"],
                "erasure": {"requests_this_month": len(this), "requests_earlier_months": len(earlier),
                            "subjects": len(pseudonyms), "subjects_found": len(found_subjects),
                            "records_removed": len(erased_ids),
                            "request_files": sorted({s.source.rsplit(":", 1)[0] for s in this})},
                "retired_versions": retired}

    return pipeline._timed(key, "dataset", build)


def retire_models_trained_on(paths: Paths, model_name: str, record_ids: set[str], *, month: str, requests: int,
                             champion_alias: str, work_dir: Path) -> list[dict]:
    """Mark every not-yet-retired version whose training dataset held one of `record_ids`."""
    from tasks.register import mark_for_retirement, versions

    if not record_ids:
        return []
    retired, holds = [], {}
    for v in versions(paths, model_name):
        rev = v.get("dataset_rev")
        if not rev or v.get("retire") == "true":
            continue
        if rev not in holds:
            try:
                holds[rev] = bool(_record_ids(dataset_file(paths, rev, work_dir)) & record_ids)
            except Exception as exc:  # a revision we cannot read: say so, retire it to be safe
                log.warning("dataset %s of v%s unreadable (%s): marked for retirement to be safe", rev[:12],
                            v["version"], type(exc).__name__)
                holds[rev] = True
        if holds[rev]:
            reason = (f"right to erasure: its training data (dataset {rev[:12]}) held records removed from the "
                      f"{month} version ({requests} request(s) this month)")
            result = mark_for_retirement(paths=paths, model_name=model_name, version=v["version"], reason=reason,
                          requested_by="monthly_refinetune", champion_alias=champion_alias)
            retired.append({"version": v["version"], "dataset_rev": rev, "was_champion": result["is_champion"]})
            log.warning("v%s marked for retirement: trained on erased records%s", v["version"],
                        " (it is the champion: this month's model, once promoted, replaces it)"
                        if result["is_champion"] else "")
    return retired


# ---------------------------------------------------------------- version: one commit per month

def _file_digest(path: Path, h, *, hexdigest: bool = True):
    """Feed a file to hash `h` in 1 MiB blocks (a whole model's weights are gigabytes)."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() if hexdigest else h


def existing_version(paths: Paths, month: str, data_path: Path, profile: dict | None, qa_path: Path | None) -> dict | None:
    """The month's committed version when it holds exactly these bytes (data, profile, QA split)."""
    from tasks.version import DATASET_PATH, PROFILE_PATH, QA_PATH, profile_text

    rev = month_tags(paths.datasets).get(month)
    if rev is None:
        return None
    md5 = committed_md5(paths.datasets, rev)
    same = (md5 == _file_digest(data_path, hashlib.md5())
            and _git_show(paths.datasets, rev, PROFILE_PATH) == (profile_text(profile) if profile else None)
            and _git_show(paths.datasets, rev, QA_PATH) == (qa_path.read_text(encoding="utf-8") if qa_path else None))
    if not same:
        return None
    return {"dataset_rev": rev, "dvc_md5": md5, "dataset_path": DATASET_PATH, "created": False,
            "tag": version_tag(month), "registry": str(paths.datasets.resolve()), "reused": True}


def stage_version(key: str, month: str, dataset: dict) -> dict:
    """Commit the month's dataset, unless the month's tag already holds the same bytes (a rerun)."""
    profile, qa_path = pipeline.version_inputs(key)
    same = existing_version(_paths(), month, Path(dataset["masked_path"]), profile, qa_path)
    if same is not None:
        log.info("version: the %s dataset is already committed with these bytes (%s); no new commit", month,
                 same["dataset_rev"][:12])
        return pipeline._save_stage(key, "version", {**same, "seconds": 0.0})
    return pipeline.stage_version(key, dataset)


# ---------------------------------------------------------------- train: warm start, replay

def warm_start_source(key: str, prepared: dict) -> tuple[dict | None, str]:
    """(the champion's adapter to start from, or None for the base model; why)."""
    from tasks.register import champion, download_champion

    cfg, paths = pipeline.run_config(key), _paths()
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
    done = pipeline.completed_training(key, prepared, versioned)
    if done is not None:
        log.info("train: %s already trained on dataset %s with this config; replayed, not retrained", key,
                 versioned["dataset_rev"][:12])
        return pipeline._save_stage(key, "train", {**done, "reused": True})
    source, reason = warm_start_source(key, prepared)
    log.info("warm start: %s", source["source"] if source else f"from the base model ({reason})")
    return pipeline.stage_train(key, prepared, versioned, warm_start=source or {"source": "base", "reason": reason})


# ---------------------------------------------------------------- register: one version per month

def weights_sha256(trained: dict) -> str:
    """Digest of the trained weights (adapter or whole model files)."""
    folder = Path(trained.get("adapter_dir") or trained["model_dir"])
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        h.update(path.name.encode())
        _file_digest(path, h, hexdigest=False)
    return h.hexdigest()


def stage_register(key: str, prepared: dict, versioned: dict, trained: dict, evaluated: dict) -> dict:
    """Register the month's model once: a replay finds its version by run key and weights digest; a
    retrained month replaces the month's earlier version (deleted unless it still serves as champion)."""
    from tasks.register import champion, registry_client

    cfg, paths = pipeline.run_config(key), _paths()
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
            return pipeline._save_stage(key, "register", {
                "model_name": name, "version": int(mv.version), "alias": cfg.registry.alias, "run_id": mv.run_id,
                "model_uri": f"models:/{name}/{mv.version}", "reused": True, "decision": mv.tags.get("decision"),
                "seconds": 0.0})
    result = pipeline.stage_register(key, prepared, versioned, trained, evaluated)
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
    return pipeline._save_stage(key, "register", {**result, "replaced_versions": replaced})


def stage_decide(key: str, registered: dict, approval: dict | None) -> dict:
    """A replayed month whose version was already promoted or rejected keeps that decision: replaying
    January after March must not move the champion back to January's model."""
    decided = registered.get("decision")
    if decided not in ("promoted", "rejected"):
        return pipeline.stage_decide(key, registered, approval)
    from tasks.register import registry_client

    tags = registry_client(_paths()).get_model_version(registered["model_name"], str(registered["version"])).tags
    by = tags.get("approved_by") if decided == "promoted" else tags.get("rejected_by")
    log.info("decision: v%s was already %s; replayed, the registry is left as it is", registered["version"], decided)
    return pipeline._save_stage(key, "decision", {
        "outcome": decided, "replayed": True, "by": None if by in (None, "none") else by,
        "at": tags.get("promoted_at") if decided == "promoted" else tags.get("rejected_at"),
        "comment": tags.get("approval_comment") or tags.get("rejection_comment"),
        "approval": tags.get("approval"), "model_name": registered["model_name"], "version": registered["version"]})


# ---------------------------------------------------------------- one month without Airflow

def run_month(month: str, params: dict | None = None, *, airflow_run_id: str | None = None) -> dict:
    """One month of the monthly DAG in this process (debugging, tests): approval is not asked for;
    with registry.require_approval the version stays challenger."""
    key = run_key(month)
    prepared = stage_prepare(airflow_run_id or key, month, params)
    ingested = pipeline.stage_ingest(key, month)
    pipeline.stage_validate(key, ingested)
    masked = pipeline.stage_mask(key, ingested)
    built = stage_dataset(key, month, masked)
    versioned = stage_version(key, month, built)
    trained = stage_train(key, prepared, versioned)
    evaluated = pipeline.stage_evaluate(key, prepared, trained)
    registered = stage_register(key, prepared, versioned, trained, evaluated)
    from tasks.gates import PromotionGated

    try:
        pipeline.stage_gates(key, evaluated, registered, trained, dag_id="monthly_refinetune")
    except PromotionGated:
        pipeline.stage_report(key, strict=False)
        raise
    if not pipeline.run_config(key).registry.require_approval or registered.get("decision"):
        stage_decide(key, registered, None)
    return pipeline.stage_report(key)


def main() -> None:
    parser = pipeline.cli_parser("Run one month of monthly_refinetune in this process (no Airflow).")
    parser.add_argument("--month", required=True, help="YYYY-MM: the landing partition and the dataset version")
    args = parser.parse_args()
    print(json.dumps(run_month(args.month, pipeline.cli_params(args)), indent=2))


if __name__ == "__main__":
    main()
