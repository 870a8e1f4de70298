"""The audit hold-out under privacy.unit: subject holds out whole data subjects, and the audit samples units."""

import json
from collections import Counter
from pathlib import Path

from tasks.data.splits import split_audit_holdout
from tasks.eval.mia import sample_units

ENTITY = "MEMBER_ID"


def _subject(i: int) -> str:
    return f"<MEMBER_ID_{i:08x}>"


def _rows(path: Path, subjects: int = 300, per_subject: int = 5, alone: int = 200) -> Path:
    """`subjects` subjects with `per_subject` records each (half named in a field, half only in the text),
    and `alone` records without a subject."""
    rows = []
    for s in range(subjects):
        for r in range(per_subject):
            row = {"record_id": f"R-{s}-{r}", "text": f"Claim note {r}. Member {_subject(s)} called."}
            if s % 2:
                row["subject"] = _subject(s)
            rows.append(row)
    rows += [{"record_id": f"P-{i}", "text": f"Plan document {i}."} for i in range(alone)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _subject_of(row: dict) -> str | None:
    return row.get("subject") or (_subject(int(row["record_id"].split("-")[1])) if row["record_id"][0] == "R" else None)


def test_a_subject_is_held_out_with_all_its_records(tmp_path):
    out = split_audit_holdout(_rows(tmp_path / "m.jsonl"), tmp_path / "s", 0.2, subject_entity=ENTITY)
    assert out["holdout_unit"] == "subject"
    train, holdout = _read(out["train_path"]), _read(out["holdout_path"])
    held = Counter(_subject_of(r) for r in holdout if _subject_of(r))
    trained = {_subject_of(r) for r in train if _subject_of(r)}
    assert held and not set(held) & trained  # no subject on both sides
    assert set(held.values()) == {5}  # every held-out subject with all five records
    assert 30 <= len(held) <= 90  # ~20 % of 300 subjects
    assert any(r["record_id"].startswith("P-") for r in holdout)  # no subject: split by record


def test_a_record_level_split_cuts_subjects_apart(tmp_path):
    """The old behaviour, kept for privacy.unit: record; it is why the subject audit needs its own split."""
    out = split_audit_holdout(_rows(tmp_path / "m.jsonl"), tmp_path / "s", 0.2)
    assert out["holdout_unit"] == "record"
    held = {_subject_of(r) for r in _read(out["holdout_path"])} - {None}
    trained = {_subject_of(r) for r in _read(out["train_path"])} - {None}
    assert held & trained


def test_the_audit_samples_whole_units(tmp_path):
    path = _rows(tmp_path / "m.jsonl", subjects=40, per_subject=12, alone=10)
    texts, units = sample_units(path, 20, seed=3, subject_entity=ENTITY, records_per_unit=8)
    counts = Counter(units)
    assert len(counts) == 20 and len(texts) == len(units)
    assert set(counts.values()) <= {1, 8}  # subjects capped at 8 of their 12 records; plan documents alone
    for text, unit in zip(texts, units):
        assert unit in text or unit.startswith("P-")  # a text is scored under its own subject
    assert sample_units(path, 20, seed=3, subject_entity=ENTITY) == (texts, units)  # seeded
    record_texts, record_units = sample_units(path, 20, seed=3)
    assert len(set(record_units)) == 20 == len(record_texts)  # record level: one record per unit
