"""Raw-zone files are owner-only: masking shards, staged rows, quarantine, the generator's keys, the key file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.helpers import masked_records


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_masking_shards_are_0600_in_a_0700_folder(tmp_path):
    from tasks.data.shards import plan_shards

    old = os.umask(0o022)  # a permissive umask must not matter
    try:
        shards = plan_shards(masked_records(tmp_path / "rows.jsonl", 30), tmp_path / "staging" / "mask_shards", 10)
    finally:
        os.umask(old)
    assert len(shards) == 3
    assert _mode(tmp_path / "staging" / "mask_shards") == 0o700
    assert {_mode(s["path"]) for s in shards} == {0o600}
    assert _mode(tmp_path / "staging" / "mask_shards" / "plan.json") == 0o600


def test_ingest_stage_writes_raw_rows_into_owner_only_folders(tmp_path, monkeypatch):
    from tasks.config import Paths, PipelineConfig, save_resolved
    from tasks.stages import privacy_finetune

    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    (tmp_path / "landing" / "2026-01").mkdir(parents=True)
    good = [
        json.dumps({"record_id": f"r{i}", "record_type": "claim_note", "text": f"Member note number {i}"})
        for i in range(9)
    ]
    (tmp_path / "landing" / "2026-01" / "r.jsonl").write_text("\n".join(good) + "\nnot json\n")
    save_resolved(PipelineConfig(), Paths().run_dir("r1"))
    old = os.umask(0o022)
    try:
        result = privacy_finetune.stage_ingest("r1")
    finally:
        os.umask(old)
    paths = Paths()
    for folder in (paths.staging, paths.staging_dir("r1"), paths.quarantine, paths.quarantine_dir("r1")):
        assert _mode(folder) == 0o700, folder
    for file in (result["staged_path"], result["quarantine_path"]):
        assert _mode(file) == 0o600, file


def test_the_generator_keeps_its_raw_values_owner_only(tmp_path):
    from tasks.demo.synth import generate

    generate(tmp_path, n_records=40, canaries=1, canary_repeats=2)
    assert _mode(tmp_path / "synth") == 0o700 and _mode(tmp_path / "landing") == 0o700
    assert _mode(tmp_path / "synth" / "pii_key.json") == _mode(tmp_path / "synth" / "canaries.json") == 0o600
    assert {_mode(p) for p in (tmp_path / "landing").rglob("*") if p.is_file()} == {0o600}


def test_the_key_file_is_read_only_when_it_is_owner_only(tmp_path, monkeypatch):
    from tasks.config import PipelineConfig
    from tasks.pii import MissingKeyError
    from tasks.stages.run import mask_key

    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    monkeypatch.delenv("PFT_PSEUDONYM_KEY", raising=False)
    cfg = PipelineConfig()
    with pytest.raises(MissingKeyError, match=r"mask.key_file"):
        mask_key(cfg)
    key_file = tmp_path / "secrets" / "pseudonym.key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text("k" * 64 + "\n")
    key_file.chmod(0o644)
    with pytest.raises(MissingKeyError, match="readable by other users"):
        mask_key(cfg)
    key_file.chmod(0o600)
    assert mask_key(cfg) == b"k" * 64
