"""DVC versioning of the masked dataset: commits, tags, remote, reproduction, locking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.common import offline
from tasks.config import DataConfig, safe_run_id
from tasks.data.validate import build_profile
from tasks.data.version import (
    DATASET_PATH,
    PROFILE_PATH,
    VersioningError,
    checkout_dataset,
    previous_profile,
    profile_text,
    registry_lock,
    version_dataset,
)

offline.apply()

V1 = [
    {
        "record_id": "R-2026-01-000001",
        "record_type": "claim_note",
        "text": "Member <PERSON_1> asked about claim <CLAIM_ID_1>.",
    },
    {"record_id": "R-2026-01-000002", "record_type": "support_ticket", "text": "Call back at <PHONE_NUMBER_1>."},
]
V2 = V1 + [
    {"record_id": "R-2026-02-000003", "record_type": "plan_document", "text": "Out-of-network deductible is $1,500."},
]
# What validate computes from the staged rows and the version stage commits beside the pointer.
P1, P2 = build_profile(V1, DataConfig()), build_profile(V2, DataConfig())


def write_masked(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD"))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """One registry with three versioning calls: v1, v1 again under another run, then v2."""
    root = tmp_path_factory.mktemp("version")
    registry, remote = root / "datasets", root / "dvc-remote"
    m1 = write_masked(root / "runs" / "a" / "masked", V1)
    m2 = write_masked(root / "runs" / "c" / "masked", V2)
    assert previous_profile(registry) is None  # no registry yet: the first run skips drift
    first = version_dataset(
        masked_dir=m1,
        registry_dir=registry,
        remote_dir=remote,
        run_id="scheduled__2026-01-01T00:00:00+00:00",
        profile=P1,
    )
    commits_after_first = commit_count(registry)
    # identical input: the profile is rebuilt as an equal (not the same) dict
    again = version_dataset(
        masked_dir=m1, registry_dir=registry, remote_dir=remote, run_id="manual__b", profile=json.loads(json.dumps(P1))
    )
    commits_after_again = commit_count(registry)
    changed = version_dataset(
        masked_dir=m2,
        registry_dir=registry,
        remote_dir=remote,
        run_id="scheduled__2026-02-01T00:00:00+00:00",
        profile=P2,
    )
    return {
        "root": root,
        "registry": registry,
        "remote": remote,
        "m1": m1,
        "m2": m2,
        "first": first,
        "again": again,
        "changed": changed,
        "commits_after_first": commits_after_first,
        "commits_after_again": commits_after_again,
    }


def test_first_version_commits_tags_and_pushes(history):
    res, registry, remote = history["first"], history["registry"], history["remote"]
    assert set(res) == {"dataset_rev", "dvc_md5", "dataset_path", "created", "tag", "registry"}
    assert res["created"] is True
    assert res["dataset_path"] == DATASET_PATH
    assert res["registry"] == str(registry.resolve())
    assert res["tag"] == "run-" + safe_run_id("scheduled__2026-01-01T00:00:00+00:00")
    assert res["tag"].startswith("run-scheduled__2026-01-01T00_00_00_00_00-")  # readable, plus a digest
    assert len(res["dataset_rev"]) == 40
    # The tag names the commit, and the commit names the run.
    assert git(registry, "rev-parse", f"{res['tag']}^{{commit}}") == res["dataset_rev"]
    assert "scheduled__2026-01-01T00:00:00+00:00" in git(registry, "log", "-1", "--format=%B", res["dataset_rev"])
    assert history["commits_after_first"] == 2  # registry init + dataset
    # DVC hashed exactly the masked bytes, and the bytes are on the remote.
    assert res["dvc_md5"] == hashlib.md5((history["m1"] / "train.jsonl").read_bytes()).hexdigest()
    pushed = remote / "files" / "md5" / res["dvc_md5"][:2] / res["dvc_md5"][2:]
    assert pushed.read_bytes() == (history["m1"] / "train.jsonl").read_bytes()
    # Git tracks the pointer, never the data; the workspace is clean; nothing sensitive is returned.
    tracked = git(registry, "ls-files").splitlines()
    assert "data/train.jsonl.dvc" in tracked and "data/train.jsonl" not in tracked
    assert git(registry, "status", "--porcelain") == ""
    assert "<PERSON_1>" not in json.dumps(res)
    assert git(registry, "config", "user.email") == "privatetune@localhost"


def test_identical_input_same_md5_and_no_new_commit(history):
    first, again, registry = history["first"], history["again"], history["registry"]
    assert again["created"] is False
    assert again["dvc_md5"] == first["dvc_md5"]
    assert again["dataset_rev"] == first["dataset_rev"]
    assert history["commits_after_again"] == history["commits_after_first"]
    # The new run still gets its tag, on the existing commit.
    assert again["tag"] == "run-manual__b"
    assert git(registry, "rev-parse", "run-manual__b^{commit}") == first["dataset_rev"]


def test_same_run_again_is_a_no_op(history, tmp_path):
    registry, remote = history["registry"], history["remote"]
    head = git(registry, "rev-parse", "HEAD")
    res = version_dataset(
        masked_dir=history["m2"],
        registry_dir=registry,
        remote_dir=remote,
        run_id="scheduled__2026-02-01T00:00:00+00:00",
        profile=P2,
    )
    assert res["created"] is False and res["dataset_rev"] == head == history["changed"]["dataset_rev"]
    assert git(registry, "rev-parse", "HEAD") == head


def test_changed_input_gives_new_rev_and_md5(history):
    first, changed, registry = history["first"], history["changed"], history["registry"]
    assert changed["created"] is True
    assert changed["dvc_md5"] != first["dvc_md5"]
    assert changed["dataset_rev"] != first["dataset_rev"]
    assert git(registry, "rev-parse", f"{changed['dataset_rev']}^") == first["dataset_rev"]
    assert git(registry, "rev-parse", "HEAD") == changed["dataset_rev"]


def test_profile_is_committed_with_its_version(history):
    registry, first, changed = history["registry"], history["first"], history["changed"]
    assert git(registry, "show", f"{first['dataset_rev']}:{PROFILE_PATH}") + "\n" == profile_text(P1)
    assert git(registry, "show", f"{changed['dataset_rev']}:{PROFILE_PATH}") + "\n" == profile_text(P2)
    assert PROFILE_PATH in git(registry, "ls-files").splitlines()
    assert "<PERSON_1>" not in profile_text(P1) and "claim <CLAIM_ID_1>" not in profile_text(P1)  # counts only


def test_previous_profile_is_the_latest_other_version(history):
    registry, first, changed = history["registry"], history["first"], history["changed"]
    latest = previous_profile(registry, exclude_run_id="manual__new")
    assert latest == {"rev": changed["dataset_rev"], "tags": [changed["tag"]], "profile": P2}
    # a rerun of the February run compares against January, never against its own version
    rerun = previous_profile(registry, exclude_run_id="scheduled__2026-02-01T00:00:00+00:00")
    assert rerun["rev"] == first["dataset_rev"] and rerun["profile"] == P1
    assert rerun["tags"] == sorted(["run-manual__b", first["tag"]])
    assert previous_profile(registry) == latest


def test_version_without_profile_drops_the_old_one(tmp_path):
    registry, remote = tmp_path / "datasets", tmp_path / "dvc-remote"
    with_profile = version_dataset(
        masked_dir=write_masked(tmp_path / "a", V1), registry_dir=registry, remote_dir=remote, run_id="a", profile=P1
    )
    without = version_dataset(
        masked_dir=write_masked(tmp_path / "b", V2), registry_dir=registry, remote_dir=remote, run_id="b"
    )
    assert PROFILE_PATH not in git(registry, "ls-files").splitlines()
    assert git(registry, "status", "--porcelain") == ""
    # the newest version has no profile, so the baseline is the newest one that has
    assert previous_profile(registry)["rev"] == with_profile["dataset_rev"] != without["dataset_rev"]


def test_checkout_older_rev_reproduces_bytes(history, tmp_path):
    registry, remote = history["registry"], history["remote"]
    # Drop the registry's own cache: the bytes must come from the remote, as on a GPU worker.
    shutil.rmtree(registry / ".dvc" / "cache", ignore_errors=True)
    old = checkout_dataset(
        registry_dir=registry, remote_dir=remote, rev=history["first"]["dataset_rev"], out_dir=tmp_path / "old"
    )
    assert old == (tmp_path / "old" / DATASET_PATH).resolve()
    assert old.read_bytes() == (history["m1"] / "train.jsonl").read_bytes()
    by_tag = checkout_dataset(
        registry_dir=registry, remote_dir=remote, rev=history["changed"]["tag"], out_dir=tmp_path / "new"
    )
    assert by_tag.read_bytes() == (history["m2"] / "train.jsonl").read_bytes()
    with pytest.raises(FileExistsError):
        checkout_dataset(registry_dir=registry, remote_dir=remote, rev="HEAD", out_dir=tmp_path / "old")


def test_bad_inputs_fail_clearly(history, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train.jsonl"):
        version_dataset(
            masked_dir=tmp_path / "nothing", registry_dir=history["registry"], remote_dir=history["remote"], run_id="x"
        )
    with pytest.raises(VersioningError, match="git checkout no-such-rev"):
        checkout_dataset(
            registry_dir=history["registry"], remote_dir=history["remote"], rev="no-such-rev", out_dir=tmp_path / "bad"
        )


def test_lock_timeout_is_a_clear_error(tmp_path):
    registry = tmp_path / "datasets"
    masked = write_masked(tmp_path / "masked", V1)
    with registry_lock(registry), pytest.raises(TimeoutError, match="could not lock the data registry"):
        version_dataset(
            masked_dir=masked, registry_dir=registry, remote_dir=tmp_path / "remote", run_id="r", lock_timeout_s=0.3
        )
    assert not (registry / ".git").exists()  # nothing ran without the lock


def test_concurrent_processes_both_succeed(tmp_path):
    registry, remote = tmp_path / "datasets", tmp_path / "dvc-remote"
    procs = []
    for name, rows in (("p1", V1), ("p2", V2)):
        masked = write_masked(tmp_path / name, rows)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tasks.data.version",
                    "--masked",
                    str(masked),
                    "--registry",
                    str(registry),
                    "--remote",
                    str(remote),
                    "--run-id",
                    name,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    assert all(r["created"] for r in results)
    assert {r["tag"] for r in results} == {"run-p1", "run-p2"}
    assert len({r["dataset_rev"] for r in results}) == 2
    assert commit_count(registry) == 3  # init + one commit per process, no init race
    for r in results:
        assert git(registry, "rev-parse", f"{r['tag']}^{{commit}}") == r["dataset_rev"]


def test_qa_splits_are_committed_with_the_dataset_and_checked_out(tmp_path):
    from tasks.data.version import LEGACY_QA_PATH, QA_PATHS, holds_same

    registry, remote = tmp_path / "datasets", tmp_path / "dvc-remote"
    val, test = tmp_path / "qa_validation.jsonl", tmp_path / "qa_test.jsonl"
    val.write_text('{"id": "v1", "question": "What deductible does the plan have?", "answer": "$500"}\n')
    test.write_text('{"id": "t1", "question": "What is the deductible under the plan?", "answer": "$500"}\n')
    splits = {"validation": val, "test": test}
    first = version_dataset(
        masked_dir=write_masked(tmp_path / "a", V1),
        registry_dir=registry,
        remote_dir=remote,
        run_id="a",
        qa_paths=splits,
    )
    assert {split: f"data/qa_{split}.jsonl" for split in ("validation", "test")} == QA_PATHS  # evidence reads these
    tracked = git(registry, "ls-files").splitlines()
    assert set(QA_PATHS.values()) <= set(tracked) and LEGACY_QA_PATH not in tracked
    assert holds_same(registry, first["dataset_rev"], tmp_path / "a" / "train.jsonl", None, splits)
    assert not holds_same(registry, first["dataset_rev"], tmp_path / "a" / "train.jsonl", None, {"validation": val})
    again = version_dataset(
        masked_dir=write_masked(tmp_path / "a2", V1),
        registry_dir=registry,
        remote_dir=remote,
        run_id="a2",
        qa_paths=splits,
    )
    assert again["created"] is False and again["dataset_rev"] == first["dataset_rev"]
    test.write_text(
        test.read_text() + '{"id": "t2", "question": "What is the copay under the plan?", "answer": "$20"}\n'
    )
    changed = version_dataset(
        masked_dir=write_masked(tmp_path / "b", V1),
        registry_dir=registry,
        remote_dir=remote,
        run_id="b",
        qa_paths=splits,
    )
    assert changed["created"] is True  # a new test split is a new revision, even on the same records
    assert not holds_same(registry, first["dataset_rev"], tmp_path / "b" / "train.jsonl", None, splits)
    data = checkout_dataset(registry_dir=registry, remote_dir=remote, rev=first["dataset_rev"], out_dir=tmp_path / "co")
    assert (data.parent / "qa_validation.jsonl").read_text().count("\n") == 1
    assert (data.parent / "qa_test.jsonl").read_text().count("\n") == 1
    dropped = version_dataset(
        masked_dir=write_masked(tmp_path / "c", V1), registry_dir=registry, remote_dir=remote, run_id="c", qa_paths=None
    )
    assert not set(QA_PATHS.values()) & set(git(registry, "ls-files").splitlines())
    assert dropped["created"] is True
