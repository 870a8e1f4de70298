"""The privacy subject through the raw zone: ingest keeps the raw subject field, the masker replaces it by
its keyed pseudonym (the placeholder the same id gets in the text), and no raw id reaches the masked set."""

from __future__ import annotations

import json
import re

import pytest

from tasks.config import REPO_ROOT
from tasks.data.ingest import ingest
from tasks.data.mask import mask_dataset
from tasks.demo import synth
from tasks.pii import pseudonym, subject_in_text, subject_pseudonym

KEY = b"subject-test-key-0123456789abcdef"
RECOGNIZERS = REPO_ROOT / "include" / "presidio" / "recognizers.yaml"


def test_subject_pseudonym_and_text_placeholder():
    value = "MBR-48213377"
    assert subject_pseudonym("MEMBER_ID", value, KEY) == pseudonym("MEMBER_ID", value, KEY)
    assert subject_pseudonym("MEMBER_ID", "", KEY) is None and subject_pseudonym("MEMBER_ID", None, KEY) is None
    placeholder = pseudonym("MEMBER_ID", value, KEY)
    text = f"Claim processed. Contact {pseudonym('PERSON', 'Ann Lee', KEY)}, ID {placeholder}."
    assert subject_in_text(text, "MEMBER_ID") == placeholder
    assert subject_in_text(text, "POLICY_NUMBER") is None
    assert subject_in_text("Plan summary. No one named.", "MEMBER_ID") is None


@pytest.fixture(scope="module")
def masked_members(tmp_path_factory):
    """A small member corpus through the real ingest and masker, with the subject field configured."""
    home = tmp_path_factory.mktemp("subjects")
    synth.generate(home, n_records=48, canaries=0, bad_rows=0, members=True)
    staged = ingest(
        landing_dir=home / "landing",
        staging_dir=home / "staging",
        quarantine_dir=home / "quarantine",
        optional_fields=("member_id",),
    )
    result = mask_dataset(
        rows_path=staged["staged_path"],
        out_dir=home / "masked",
        key=KEY,
        recognizers_path=RECOGNIZERS,
        workers=1,
        max_residual_share=None,
        subject_field="member_id",
    )
    return home, result


def test_the_raw_subject_field_leaves_the_raw_zone_only_as_its_keyed_pseudonym(masked_members):
    home, result = masked_members
    staged = [json.loads(line) for line in (home / "staging" / "rows.jsonl").read_text().splitlines()]
    assert any(r.get("member_id") for r in staged)  # ingest kept the raw field for the masker
    owners = {m["member_id"]: m["record_ids"] for m in json.loads((home / "synth" / "members.json").read_text())}
    owner_of = {rid: mid for mid, rids in owners.items() for rid in rids}
    rows = [json.loads(line) for line in (home / "masked" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == result["rows"] == 48
    for row in rows:
        assert "member_id" not in row
        if row["record_id"] in owner_of:
            expected = pseudonym("MEMBER_ID", owner_of[row["record_id"]], KEY)
            assert row["subject"] == expected
            assert subject_in_text(row["text"], "MEMBER_ID") == expected  # field and text agree
        else:
            assert "subject" not in row  # plan documents: no subject, their own unit
    published = "".join(p.read_text() for p in (home / "masked").rglob("*") if p.is_file())
    assert not re.search(r"MBR-?\d{8}", published)
    assert not any(mid in published or mid.replace("-", "") in published for mid in owners)


def test_without_a_subject_field_no_subject_is_written(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"record_id": "r1", "record_type": "claim_note", "member_id": "MBR-12345678", "text": "Claim ok."})
        + "\n"
    )
    mask_dataset(rows_path=rows, out_dir=tmp_path / "m", key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    (row,) = [json.loads(line) for line in (tmp_path / "m" / "train.jsonl").read_text().splitlines()]
    assert set(row) == {"record_id", "record_type", "text"}
