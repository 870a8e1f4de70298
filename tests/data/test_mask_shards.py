"""Masking in shards: the plan covers every row once, in order, one partition per shard; the
merged masked shards equal masking the whole file; pseudonyms agree across shards; the residual
threshold applies to the totals; the no-Airflow path shards the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT
from tasks.data.mask import mask_dataset
from tasks.data.shards import UNPARTITIONED, merge_shards, partition_of, plan_shards
from tasks.pii import PLACEHOLDER, ResidualPiiError

KEY = b"shard-test-key"
RECOGNIZERS = REPO_ROOT / "include" / "presidio" / "recognizers.yaml"
FACT = "Members have 60 days to file an appeal after a denial."


def _row(i: int, source_file: str, text: str) -> dict:
    return {
        "record_id": f"R-{i:04d}",
        "record_type": "claim_note",
        "created_at": "2026-01-14",
        "text": text,
        "source_file": source_file,
        "source_line": i + 1,
    }


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_partition_of_source_file():
    assert partition_of("2026-01/records.jsonl") == "2026-01"
    assert partition_of("2026-02/sub/export.csv") == "2026-02"
    assert partition_of("records.jsonl") == UNPARTITIONED
    assert partition_of("2026-13/records.jsonl") == UNPARTITIONED
    assert partition_of(None) == UNPARTITIONED


def test_plan_covers_every_row_once_in_order_one_partition_per_shard(tmp_path):
    rows = (
        [_row(i, "2026-01/a.jsonl", f"{FACT} #{i}") for i in range(11)]
        + [_row(11 + i, "2026-02/b.csv", f"{FACT} #{11 + i}") for i in range(4)]
        + [_row(15, "loose.jsonl", f"{FACT} #15")]
    )
    staged = _write(tmp_path / "staging" / "rows.jsonl", rows)
    shards_dir = tmp_path / "staging" / "mask_shards"
    (shards_dir).mkdir(parents=True)
    (shards_dir / "shard-0099.jsonl").write_text("stale\n")  # from an earlier plan: must go

    shards = plan_shards(staged, shards_dir, shard_rows=4)

    # 11 rows at most 4 a shard → 3 even shards (4, 4, 3); 4 rows → 1; the loose file → 1.
    assert [(s["partition"], s["rows"]) for s in shards] == [
        ("2026-01", 4),
        ("2026-01", 4),
        ("2026-01", 3),
        ("2026-02", 4),
        (UNPARTITIONED, 1),
    ]
    assert [s["label"] for s in shards][:3] == ["2026-01 1/3", "2026-01 2/3", "2026-01 3/3"]
    assert [s["first_row"] for s in shards] == [0, 4, 8, 11, 15]
    concatenated = [r for s in shards for r in _lines(s["path"])]
    assert concatenated == rows
    for s in shards:
        assert {partition_of(r["source_file"]) for r in _lines(s["path"])} == {s["partition"]}
    assert sorted(p.name for p in shards_dir.iterdir()) == sorted(
        [f"{s['shard_id']}.jsonl" for s in shards] + ["plan.json"]
    )
    assert json.loads((shards_dir / "plan.json").read_text()) == shards
    # The plan (XCom) holds ids, paths and counts, never text.
    assert FACT not in json.dumps(shards)


def test_plan_of_no_rows_is_one_empty_shard(tmp_path):
    staged = _write(tmp_path / "rows.jsonl", [])
    shards = plan_shards(staged, tmp_path / "shards", shard_rows=10)
    assert [(s["partition"], s["rows"]) for s in shards] == [(UNPARTITIONED, 0)]
    assert Path(shards[0]["path"]).read_text() == ""
    with pytest.raises(ValueError, match="shard_rows"):
        plan_shards(staged, tmp_path / "shards", shard_rows=0)


def test_bad_staged_row_names_file_and_line(tmp_path):
    staged = tmp_path / "rows.jsonl"
    staged.write_text(json.dumps(_row(0, "2026-01/a.jsonl", FACT)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not valid JSON"):
        plan_shards(staged, tmp_path / "shards", shard_rows=10)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The same rows masked whole and in shards (the engines load once for the module)."""
    tmp = tmp_path_factory.mktemp("sharded")
    texts = [
        "Claim note: member Maria Gonzalez (maria.gonzalez@example.com) called about the Silver plan deductible.",
        FACT,
        "Member letter to Dale Whitaker: your appeal for CPT 70551 is under review.",
        "Support ticket: caller at (312) 555-0147 asked about Form HX-12.",
        FACT + " Prior authorization is required for CPT 70551.",
        "Ticket closed. Follow-up sent to Maria Gonzalez at maria.gonzalez@example.com, phone (312) 555-0147.",
        "Members have 60 days to file an appeal after a denial.",
    ]
    rows = [_row(i, "2026-01/a.jsonl" if i < 4 else "2026-02/b.jsonl", t) for i, t in enumerate(texts)]
    staged = _write(tmp / "rows.jsonl", rows)
    whole = mask_dataset(rows_path=staged, out_dir=tmp / "whole", key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    shards = plan_shards(staged, tmp / "shards", shard_rows=2)
    out_dirs = [tmp / "out" / s["shard_id"] for s in shards]
    for shard, out_dir in zip(shards, out_dirs):
        mask_dataset(
            rows_path=Path(shard["path"]),
            out_dir=out_dir,
            key=KEY,
            recognizers_path=RECOGNIZERS,
            workers=1,
            max_residual_share=None,
        )
    merged = merge_shards(shards, out_dirs, tmp / "merged", max_residual_share=0.01)
    return {"tmp": tmp, "rows": rows, "whole": whole, "shards": shards, "out_dirs": out_dirs, "merged": merged}


def test_merged_shards_equal_masking_the_whole_file(sharded):
    tmp, whole, merged = sharded["tmp"], sharded["whole"], sharded["merged"]
    assert len(sharded["shards"]) == 4  # 2026-01: 4 rows → 2 + 2; 2026-02: 3 rows → 2 + 1
    assert (tmp / "merged" / "train.jsonl").read_bytes() == (tmp / "whole" / "train.jsonl").read_bytes()
    for key in ("rows", "entities", "entities_total", "residual", "residual_share"):
        assert merged[key] == whole[key], key
    assert merged["masked_path"] == str(tmp / "merged" / "train.jsonl")
    assert merged["shards"] == 4 and merged["partitions"] == {"2026-01": 4, "2026-02": 3}
    assert json.loads((tmp / "merged" / "entities.json").read_text()) == whole["entities"]
    assert merged["entities"]["EMAIL_ADDRESS"] == 2 and merged["entities_total"] >= 6


def test_a_value_in_two_shards_gets_the_same_placeholder(sharded):
    masked = _lines(sharded["tmp"] / "merged" / "train.jsonl")
    first, last = masked[0]["text"], masked[5]["text"]
    shard_of = {r["record_id"]: s["shard_id"] for s in sharded["shards"] for r in _lines(s["path"])}
    assert shard_of["R-0000"] != shard_of["R-0005"]
    for etype in ("EMAIL_ADDRESS", "PERSON"):
        in_first = set(re.findall(rf"<{etype}_[0-9a-f]{{8}}>", first))
        in_last = set(re.findall(rf"<{etype}_[0-9a-f]{{8}}>", last))
        assert in_first and in_first & in_last, etype
    assert "maria.gonzalez@example.com" not in first + last and "Gonzalez" not in first + last
    assert PLACEHOLDER.search(masked[3]["text"])  # the phone in shard 2 as well


def _fake_shard(out_dir: Path, rows: int, flagged: list[str], entities: dict) -> Path:
    """A masked shard's files, as mask_dataset writes them (text is irrelevant to the merge)."""
    out_dir.mkdir(parents=True)
    (out_dir / "train.jsonl").write_text(
        "".join(
            json.dumps({"record_id": f"{out_dir.name}-{i}", "record_type": "claim_note", "text": FACT}) + "\n"
            for i in range(rows)
        )
    )
    (out_dir / "entities.json").write_text(json.dumps(entities))
    (out_dir / "residual.json").write_text(
        json.dumps({"rows": rows, "residual": {"US_SSN": len(flagged)} if flagged else {}, "record_ids": flagged})
    )
    return out_dir


def test_residual_threshold_applies_to_the_totals(tmp_path):
    shards = [
        {"shard_id": "s0", "partition": "2026-01", "rows": 10},
        {"shard_id": "s1", "partition": "2026-02", "rows": 90},
    ]
    # One shard alone is at 10 % residual; the whole dataset at 1 %.
    dirs = [
        _fake_shard(tmp_path / "s0", 10, ["s0-3"], {"PERSON": 2}),
        _fake_shard(tmp_path / "s1", 90, [], {"PERSON": 1, "US_SSN": 4}),
    ]
    merged = merge_shards(shards, dirs, tmp_path / "ok", max_residual_share=0.01)
    assert merged["residual_share"] == pytest.approx(0.01) and merged["residual"] == {"US_SSN": 1}
    assert merged["entities"] == {"PERSON": 3, "US_SSN": 4} and merged["rows"] == 100

    with pytest.raises(ResidualPiiError) as err:
        merge_shards(shards, dirs, tmp_path / "ok", max_residual_share=0.005)
    assert "1 of 100" in str(err.value) and "s0-3" in str(err.value) and FACT not in str(err.value)
    assert err.value.record_ids == ["s0-3"]
    assert not (tmp_path / "ok" / "train.jsonl").exists()  # the earlier output is withdrawn too
    assert json.loads((tmp_path / "ok" / "residual.json").read_text())["residual_records"] == 1


def test_merge_refuses_missing_or_stale_shards(tmp_path):
    shards = [{"shard_id": "s0", "partition": "2026-01", "rows": 3}]
    with pytest.raises(FileNotFoundError, match="s0"):
        merge_shards(shards, [tmp_path / "s0"], tmp_path / "out", max_residual_share=None)
    _fake_shard(tmp_path / "s0", 2, [], {})
    with pytest.raises(RuntimeError, match="holds 2 rows, the plan says 3"):
        merge_shards(shards, [tmp_path / "s0"], tmp_path / "out", max_residual_share=None)
    assert not (tmp_path / "out" / "train.jsonl").exists() and not (tmp_path / "out" / "train.jsonl.tmp").exists()


def test_no_airflow_path_masks_in_shards(tmp_path, monkeypatch):
    """`stage_mask` (what run_all calls): plan, every shard, merge; stages/mask.json keeps the report's fields."""
    from tasks.config import Paths, load_config, save_resolved
    from tasks.release.report import REQUIRED_FIELDS
    from tasks.stages import privacy_finetune

    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    run_id = "manual__2026-02-01T00:00:00+00:00"
    cfg = load_config()
    cfg = cfg.model_copy(update={"mask": cfg.mask.model_copy(update={"shard_rows": 3, "workers": 1})})
    paths = Paths()
    save_resolved(cfg, paths.run_dir(run_id))
    rows = [_row(i, f"2026-0{1 + i // 4}/a.jsonl", f"Member Maria Gonzalez wrote: {FACT}") for i in range(8)]
    staged = _write(paths.staging_dir(run_id) / "rows.jsonl", rows)
    stale = paths.run_dir(run_id) / "mask_shards" / "shard-0042"
    stale.mkdir(parents=True)

    result = privacy_finetune.stage_mask(run_id, {"staged_path": str(staged)})

    assert result["shards"] == 4 and result["partitions"] == {"2026-01": 4, "2026-02": 4}
    assert result["rows"] == 8 and result["entities"].get("PERSON") == 8
    assert not stale.exists()
    saved = json.loads((paths.run_dir(run_id) / "stages" / "mask.json").read_text())
    assert [f for f in REQUIRED_FIELDS if f.startswith("mask.") and f.split(".", 1)[1] not in saved] == []
    assert saved["masked_path"] == str(paths.run_dir(run_id) / "masked" / "train.jsonl")
    masked = _lines(saved["masked_path"])
    assert [r["record_id"] for r in masked] == [r["record_id"] for r in rows]
    assert len({re.search(r"<PERSON_[0-9a-f]{8}>", r["text"]).group() for r in masked}) == 1
    # Shard inputs (raw text) stay in the raw zone; the run folder holds masked output only.
    assert all(
        Path(p).is_relative_to(paths.staging)
        for p in (s["path"] for s in json.loads((paths.staging_dir(run_id) / "mask_shards" / "plan.json").read_text()))
    )
    assert "Gonzalez" not in "".join(p.read_text() for p in paths.run_dir(run_id).rglob("*") if p.is_file())
