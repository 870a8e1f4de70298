"""Version the masked dataset with DVC in a git data registry.

The registry ($PFT_HOME/datasets) is a git repository of `.dvc` pointer files;
the bytes live in a DVC remote ($PFT_HOME/dvc-remote). Each pipeline run commits
`data/train.jsonl.dvc` (only when the content changed) and tags the commit
`run-<safe_run_id>`, so a training worker anywhere can `checkout_dataset` the
exact bytes a run trained on from the returned git revision.

Only the masked (clean-zone) file enters the registry, plus `data/profile.json`:
counts describing the rows it was built from (no record values), which the next
run's validation compares against (`previous_profile`). git and DVC are driven
through their CLIs in subprocesses: DVC keeps process-global state and its own
repo lock, so one short-lived process per command is the reliable way to use it
from long-lived Airflow workers. Every mutation of one registry is serialised
by an inter-process file lock, so concurrent runs queue instead of failing on
DVC's lock.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from tasks.common import offline
from tasks.common.digest import update_from_file
from tasks.config import safe_run_id

DATASET_PATH = "data/train.jsonl"
# The staged data's profile (counts only: row count, text-length histogram, record-type
# counts), committed in git beside the pointer so the next run can check drift against it.
PROFILE_PATH = "data/profile.json"
# The QA splits (questions about the domain, no personal data): small, so plain git, not DVC. Validation
# feeds the promotion gates; test is reported only.
QA_PATHS = {"validation": "data/qa_validation.jsonl", "test": "data/qa_test.jsonl"}
# The single split revisions before the validation/test split carried; never written now, removed when staging.
LEGACY_QA_PATH = "data/qa_heldout.jsonl"
REMOTE_NAME = "storage"
# Object-store remote (compose: MinIO). Set: the default remote is this URL (s3://bucket/prefix) at
# the S3 endpoint named by REMOTE_ENDPOINT_ENV, with credentials from the standard AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY environment, never from a file. Unset: the local remote folder.
REMOTE_URL_ENV = "PFT_DVC_REMOTE_URL"
REMOTE_ENDPOINT_ENV = "PFT_DVC_REMOTE_ENDPOINT"
REMOTE_SCHEMES = ("s3",)
GIT_USER = ("PrivateTune", "privatetune@localhost")
DEFAULT_LOCK_TIMEOUT_S = 600.0


class VersioningError(RuntimeError):
    """A git or DVC command failed, or the registry is in a state we cannot use."""


# --------------------------------------------------------------------------- commands


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(offline.OFFLINE_ENV)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    # The registry's identity, whatever the worker's global git config says.
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = GIT_USER[0]
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = GIT_USER[1]
    return env


def _dvc_cmd() -> list[str]:
    # The dvc next to this interpreter, never whatever is first on PATH.
    return [sys.executable, "-m", "dvc"]


def _run(args: Sequence[str], cwd: Path, *, what: str, extra_env: dict[str, str] | None = None) -> str:
    """Run one command; on failure raise with the command and the tail of its stderr.

    git/DVC stderr holds paths, hashes and refs, never record text.
    """
    proc = subprocess.run(list(args), cwd=cwd, env={**_env(), **(extra_env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        shown = " ".join(str(a) for a in args)
        raise VersioningError(f"{what} failed (exit {proc.returncode}) in {cwd}\n  command: {shown}\n  stderr: {tail}")
    return proc.stdout


def _git(cwd: Path, *args: str, what: str = "git") -> str:
    # Signing needs keys a worker does not have; hooks are never ours to run.
    base = ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.hooksPath=/dev/null"]
    return _run([*base, *args], cwd, what=what)


def _dvc(cwd: Path, *args: str, what: str = "dvc") -> str:
    # DVC's per-repo site cache defaults to /var/tmp/dvc; keep it inside the
    # repo's own ignored tmp/ so all pipeline state stays under PFT_HOME.
    extra = {"DVC_SITE_CACHE_DIR": str(cwd / ".dvc" / "tmp" / "site-cache")} if (cwd / ".dvc").is_dir() else {}
    return _run([*_dvc_cmd(), *args], cwd, what=what, extra_env=extra)


# --------------------------------------------------------------------------- lock


def lock_path(registry_dir: Path) -> Path:
    """The lock sits beside the registry, so it exists before the registry does."""
    registry_dir = Path(registry_dir).resolve()
    return registry_dir.parent / f".{registry_dir.name}.lock"


@contextlib.contextmanager
def registry_lock(registry_dir: Path, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive inter-process lock on one registry (flock: released when the holder dies)."""
    path = lock_path(registry_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise TimeoutError(
                        f"could not lock the data registry {registry_dir} within {timeout_s:.0f}s: "
                        f"another versioning process (pid {holder}) holds {path}. Wait for it to "
                        "finish, or raise the lock timeout if registry operations are slow."
                    ) from None
                time.sleep(0.1)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- registry


def _has_head(registry_dir: Path) -> bool:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
        cwd=registry_dir,
        env=_env(),
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def _staged_changes(registry_dir: Path) -> bool:
    """True when the index differs from HEAD (what `git commit` would record)."""
    proc = subprocess.run(
        ["git", "diff", "--cached", "--quiet"],
        cwd=registry_dir,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1):
        raise VersioningError(f"git diff --cached failed in {registry_dir}: {proc.stderr.strip()[-2000:]}")
    return proc.returncode == 1


def _ensure_registry(registry_dir: Path, remote_dir: Path) -> None:
    """Create the git + DVC registry on first use; each step is idempotent so a crash mid-way heals."""
    registry_dir.mkdir(parents=True, exist_ok=True)
    remote_dir.mkdir(parents=True, exist_ok=True)
    if not (registry_dir / ".git").exists():
        _git(registry_dir, "init", "-q", "-b", "main", what="git init")
        _git(registry_dir, "config", "user.name", GIT_USER[0])
        _git(registry_dir, "config", "user.email", GIT_USER[1])
    if not (registry_dir / ".dvc").exists():
        _dvc(registry_dir, "init", "-q", what="dvc init")
        _edit_dvc_config(registry_dir, remote_dir, level="repo")
        _git(registry_dir, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
    if not _has_head(registry_dir) or _staged_changes(registry_dir):
        _git(registry_dir, "commit", "-q", "-m", "Initialise PrivateTune data registry", what="git commit (init)")
    _point_remote(registry_dir, remote_dir)


def _edit_dvc_config(repo_dir: Path, remote_dir: Path, *, level: str) -> None:
    """What `dvc config` / `dvc remote add -d` write, in one edit instead of one process per key.

    The committed (repo-level) config always names the local folder and turns analytics
    off; the object-store URL and endpoint go to the local level only (.dvc/config.local,
    git-ignored), and credentials into no config at all.
    """
    from dvc.config import Config

    remote = {"url": str(remote_dir.resolve())} if level == "repo" else _remote_settings(remote_dir)
    with Config(dvc_dir=str(repo_dir / ".dvc")).edit(level) as conf:
        if level == "repo":
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
        conf["core"]["remote"] = REMOTE_NAME
        conf["remote"][REMOTE_NAME] = remote


def _remote_settings(remote_dir: Path) -> dict[str, str]:
    """The default remote for this process: the object store in $PFT_DVC_REMOTE_URL, else `remote_dir`.

    Errors name the variable, never its value (a mistyped secret may have been pasted there).
    """
    from urllib.parse import urlsplit

    url = os.environ.get(REMOTE_URL_ENV, "").strip()
    if not url:
        return {"url": str(Path(remote_dir).resolve())}
    parts = urlsplit(url)
    if parts.scheme not in REMOTE_SCHEMES or not parts.netloc:
        raise ValueError(
            f"${REMOTE_URL_ENV} must be s3://<bucket>[/<prefix>] (unset it to use the local remote folder {remote_dir})"
        )
    settings = {"url": url.rstrip("/")}
    endpoint = os.environ.get(REMOTE_ENDPOINT_ENV, "").strip()
    if endpoint:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ValueError(f"${REMOTE_ENDPOINT_ENV} must be an http(s):// URL of the S3 endpoint")
        settings["endpointurl"] = endpoint
    if any("@" in urlsplit(v).netloc for v in settings.values()):
        raise ValueError(
            f"${REMOTE_URL_ENV} / ${REMOTE_ENDPOINT_ENV} must not hold credentials: set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment instead"
        )
    return settings


def _point_remote(repo_dir: Path, remote_dir: Path) -> None:
    """Make this process's remote (`_remote_settings`) the checkout's default, in .dvc/config.local.

    The committed URL is where the registry was created; a moved PFT_HOME, a
    worker that mounts the remote elsewhere, or $PFT_DVC_REMOTE_URL (an S3
    bucket) overrides it locally; config.local is git-ignored, never committed.
    """
    from dvc.config import Config

    conf = Config(dvc_dir=str(repo_dir / ".dvc"), validate=False)
    current = dict(conf.get("remote", {}).get(REMOTE_NAME, {}))
    if conf.get("core", {}).get("remote") != REMOTE_NAME or current != _remote_settings(remote_dir):
        _edit_dvc_config(repo_dir, remote_dir, level="local")


def _read_md5(dvc_file: Path) -> str:
    try:
        meta = yaml.safe_load(dvc_file.read_text())
        return str(meta["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        raise VersioningError(
            f"{dvc_file}: cannot read outs[0].md5 ({exc!r}); the .dvc file is damaged — "
            "restore it with `git checkout` in the registry"
        ) from None


def _rev_of(registry_dir: Path, ref: str) -> str:
    return _git(registry_dir, "rev-parse", f"{ref}^{{commit}}", what=f"git rev-parse {ref}").strip()


def _tag_commit(registry_dir: Path, tag: str) -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"],
        cwd=registry_dir,
        env=_env(),
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


# --------------------------------------------------------------------------- stage


def version_dataset(
    *,
    masked_dir: Path,
    registry_dir: Path,
    remote_dir: Path,
    run_id: str,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    profile: dict | None = None,
    qa_paths: Mapping[str, Path] | None = None,
) -> dict:
    """Commit masked_dir/train.jsonl to the registry under DVC, tag it for the run, push the bytes.

    `profile` (counts only, from `tasks.data.validate.build_profile`) is committed as
    data/profile.json with the version; without one, a profile left by an earlier
    version is removed, so a version never carries another dataset's profile.
    `qa_paths` ({"validation": path, "test": path}, either may be absent), the QA splits the
    evaluation scores, are committed the same way as QA_PATHS, so every dataset revision names
    its evaluation sets too; a split not given is removed from the revision.

    Identical content yields the same md5 and no new commit (created=False); the
    run's tag then points at the existing commit. If the run's tag already exists
    at another commit (the run was re-run on changed data) it is moved: the tag
    names the dataset the latest attempt of that run used.
    """
    offline.apply()
    masked_dir = Path(masked_dir)
    registry_dir, remote_dir = Path(registry_dir).resolve(), Path(remote_dir).resolve()
    source = masked_dir / "train.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"masked dataset not found: {source} (run the mask stage for this run first)")
    tag = tag_for(safe_run_id(run_id))
    if tag == "run-":
        raise ValueError(f"run id {run_id!r} has no characters usable in a git tag")
    _remote_settings(remote_dir)  # a bad $PFT_DVC_REMOTE_URL fails here, before the registry is touched

    with registry_lock(registry_dir, lock_timeout_s):
        _ensure_registry(registry_dir, remote_dir)
        target = registry_dir / DATASET_PATH
        target.parent.mkdir(parents=True, exist_ok=True)
        # Replace, never write through: the workspace file may be a link into the DVC cache.
        target.unlink(missing_ok=True)
        shutil.copyfile(source, target)
        _dvc(registry_dir, "add", DATASET_PATH, what="dvc add")
        dvc_file = registry_dir / f"{DATASET_PATH}.dvc"
        md5 = _read_md5(dvc_file)
        _git(registry_dir, "add", f"{DATASET_PATH}.dvc", str(Path(DATASET_PATH).parent / ".gitignore"))
        _stage_profile(registry_dir, profile)
        _stage_qa(registry_dir, qa_paths or {})
        created = _staged_changes(registry_dir)
        if created:
            message = f"Dataset for run {run_id}\n\n{DATASET_PATH} md5 {md5}"
            _git(registry_dir, "commit", "-q", "-m", message, what="git commit (dataset)")
        rev = _rev_of(registry_dir, "HEAD")
        if _tag_commit(registry_dir, tag) != rev:
            _git(registry_dir, "tag", "-f", "-a", tag, "-m", f"Dataset for run {run_id}", rev, what="git tag")
        _dvc(registry_dir, "push", "-r", REMOTE_NAME, f"{DATASET_PATH}.dvc", what="dvc push")

    return {
        "dataset_rev": rev,
        "dvc_md5": md5,
        "dataset_path": DATASET_PATH,
        "created": created,
        "tag": tag,
        "registry": str(registry_dir),
    }


def profile_text(profile: dict) -> str:
    """Canonical JSON, so an identical profile is identical bytes (and no new commit)."""
    return json.dumps(profile, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _stage_profile(registry_dir: Path, profile: dict | None) -> None:
    path = registry_dir / PROFILE_PATH
    if profile is not None:
        path.write_text(profile_text(profile), encoding="utf-8")
        _git(registry_dir, "add", PROFILE_PATH)
        return
    tracked = _git(registry_dir, "ls-files", "--", PROFILE_PATH).strip()
    if tracked:
        _git(registry_dir, "rm", "-q", "--cached", "--", PROFILE_PATH)
    path.unlink(missing_ok=True)


def _stage_qa(registry_dir: Path, qa_paths: Mapping[str, Path]) -> None:
    unknown = set(qa_paths) - set(QA_PATHS)
    if unknown:
        raise ValueError(f"QA splits {sorted(unknown)}: expected some of {sorted(QA_PATHS)}")
    for split, rel in QA_PATHS.items():
        if qa_paths.get(split) is not None:
            shutil.copyfile(qa_paths[split], registry_dir / rel)
            _git(registry_dir, "add", rel)
        else:
            _unstage(registry_dir, rel)
    _unstage(registry_dir, LEGACY_QA_PATH)


def _unstage(registry_dir: Path, rel: str) -> None:
    """Drop `rel` from the next commit and the workspace (nothing to do when it is not there)."""
    if _git(registry_dir, "ls-files", "--", rel).strip():
        _git(registry_dir, "rm", "-q", "--cached", "--", rel)
    (registry_dir / rel).unlink(missing_ok=True)


def previous_profile(registry_dir: Path, *, exclude_run_id: str | None = None) -> dict | None:
    """The profile of the newest dataset version that is not `exclude_run_id`'s, or None (first run).

    Reads git objects only (no workspace files, no lock): a concurrent versioning
    run may move HEAD, never rewrite a commit. Returns
    {"rev", "tags", "profile"}; versions committed without a profile are skipped.
    """
    registry_dir = Path(registry_dir).resolve()
    if not (registry_dir / ".git").exists() or not _has_head(registry_dir):
        return None
    own = _tag_commit(registry_dir, tag_for(safe_run_id(exclude_run_id))) if exclude_run_id else None
    for rev in _git(registry_dir, "rev-list", "--first-parent", "HEAD", what="git rev-list").split():
        if rev == own:
            continue
        proc = subprocess.run(
            ["git", "show", f"{rev}:{PROFILE_PATH}"], cwd=registry_dir, env=_env(), capture_output=True, text=True
        )
        if proc.returncode != 0:
            continue  # this commit has no profile (registry init, or a version made without one)
        try:
            profile = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise VersioningError(f"{registry_dir}: {PROFILE_PATH} at {rev[:12]} is not valid JSON ({exc})") from None
        tags = _git(registry_dir, "tag", "--points-at", rev, what="git tag --points-at").split()
        return {"rev": rev, "tags": sorted(tags), "profile": profile}
    return None


def checkout_dataset(*, registry_dir: Path, remote_dir: Path, rev: str, out_dir: Path) -> Path:
    """Clone the registry at `rev` (sha or tag) into a fresh `out_dir` and pull the data from the remote.

    This is what a training worker does: it needs only read access to the git
    registry and the remote, never the raw zone. Returns the local data file.
    """
    offline.apply()
    registry_dir, remote_dir = Path(registry_dir).resolve(), Path(remote_dir).resolve()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"checkout folder {out_dir} is not empty; pass a new or empty folder")
    if not (registry_dir / ".git").exists():
        raise FileNotFoundError(f"data registry not found: {registry_dir} (run the version stage first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    _git(out_dir, "clone", "-q", "--no-checkout", str(registry_dir), ".", what="git clone")
    _git(out_dir, "checkout", "-q", "--detach", rev, what=f"git checkout {rev}")
    _point_remote(out_dir, remote_dir)
    _dvc(out_dir, "pull", "-r", REMOTE_NAME, f"{DATASET_PATH}.dvc", what="dvc pull")
    data = out_dir / DATASET_PATH
    if not data.is_file():
        where = _remote_settings(remote_dir)["url"]
        raise VersioningError(f"dvc pull finished but {data} is missing; is {where} the registry's remote?")
    return data


# --------------------------------------------------------------------------- CLI


# ---------------------------------------------------------------- reading the registry (monthly builds, erasure)

TAG_PREFIX = "run-"


def tag_for(run_key: str) -> str:
    """The git tag of a run's dataset version: run-<run key>."""
    return f"{TAG_PREFIX}{run_key}"


def tags_with_prefix(registry_dir: Path, run_key_prefix: str) -> dict[str, str]:
    """run key suffix → commit, for every version tagged run-<run_key_prefix><suffix>."""
    if not (registry_dir / ".git").exists():
        return {}
    prefix = tag_for(run_key_prefix)
    out = subprocess.run(
        ["git", "tag", "--list", f"{prefix}*", "--format=%(refname:short) %(*objectname) %(objectname)"],
        cwd=registry_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tags = {}
    for line in out.splitlines():
        name, *shas = line.split()
        tags[name[len(prefix) :]] = shas[0]  # annotated tag: the commit it points at
    return tags


def _git_show(registry_dir: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=registry_dir, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def committed_md5(registry_dir: Path, rev: str) -> str | None:
    """The md5 that revision's DVC pointer records for the dataset (None: no pointer there)."""
    pointer = _git_show(registry_dir, rev, f"{DATASET_PATH}.dvc")
    return str(yaml.safe_load(pointer)["outs"][0]["md5"]) if pointer else None


def file_md5(path: Path) -> str:
    """The md5 DVC would record for a file."""
    return update_from_file(hashlib.md5(), path).hexdigest()


def holds_same(
    registry_dir: Path, rev: str, data_path: Path, profile: dict | None, qa_paths: Mapping[str, Path] | None
) -> bool:
    """Does revision `rev` hold exactly these bytes: the dataset, the profile and both QA splits?"""
    qa_paths = qa_paths or {}
    return (
        committed_md5(registry_dir, rev) == file_md5(data_path)
        and _git_show(registry_dir, rev, PROFILE_PATH) == (profile_text(profile) if profile else None)
        and _git_show(registry_dir, rev, LEGACY_QA_PATH) is None
        and all(
            _git_show(registry_dir, rev, rel)
            == (Path(qa_paths[split]).read_text(encoding="utf-8") if qa_paths.get(split) else None)
            for split, rel in QA_PATHS.items()
        )
    )


def dataset_file(*, registry_dir: Path, remote_dir: Path, rev: str, work_dir: Path) -> Path:
    """The masked dataset of a revision: from the registry's DVC cache when it holds it, else checked out
    from the DVC remote (what a worker without the cache does)."""
    md5 = committed_md5(registry_dir, rev)
    if md5 is not None:
        cached = registry_dir / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if cached.is_file():
            return cached
    out = work_dir / rev[:12]
    shutil.rmtree(out, ignore_errors=True)
    return checkout_dataset(registry_dir=registry_dir, remote_dir=remote_dir, rev=rev, out_dir=out)


def main(argv: Sequence[str] | None = None) -> int:
    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.data.version", description=__doc__.splitlines()[0])
    parser.add_argument("--masked", type=Path, required=True, help="folder holding train.jsonl (masked)")
    parser.add_argument("--registry", type=Path, required=True, help="git + DVC data registry folder")
    parser.add_argument("--remote", type=Path, required=True, help="DVC remote folder")
    parser.add_argument("--run-id", required=True, help="pipeline run id (tagged as run-<safe id>)")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT_S, help="seconds")
    parser.add_argument(
        "--profile", type=Path, help="profile.json from tasks.data.validate, committed with the version"
    )
    args = parser.parse_args(argv)
    profile = json.loads(args.profile.read_text(encoding="utf-8")) if args.profile else None
    result = version_dataset(
        masked_dir=args.masked,
        registry_dir=args.registry,
        remote_dir=args.remote,
        run_id=args.run_id,
        lock_timeout_s=args.lock_timeout,
        profile=profile,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
