"""Monthly re-finetuning pieces that need no Airflow: a run's month, erasure requests, warm start.

The whole monthly DAG (three backfilled months, erasure, an idempotent rerun) runs in
tests/dags/test_backfill.py against a real scheduler.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.data import erasure, months
from tasks.data.ingest import ingest, landing_files

REPO = Path(__file__).resolve().parents[2]
RECOGNIZERS = REPO / "include" / "presidio" / "recognizers.yaml"


def test_a_run_owns_the_month_of_its_logical_date():
    assert months.month_of(datetime(2026, 3, 1, 3, 0, tzinfo=UTC)) == "2026-03"
    assert months.month_of("2026-12-01T03:00:00+00:00") == "2026-12"
    assert months.run_key("2026-03") == "monthly-2026-03"
    with pytest.raises(ValueError, match="YYYY-MM"):
        months.run_key("2026-13")


def _request(landing: Path, month: str, name: str, text: str) -> Path:
    path = landing / month / "erasure" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_erasure_requests_in_csv_jsonl_and_txt_are_read_and_earlier_months_still_apply(tmp_path):
    landing = tmp_path / "landing"
    _request(landing, "2026-01", "old.txt", "# subjects erased in January\nMBR-11111111\n\n")
    _request(landing, "2026-02", "a.csv", "subject_id,ref\nMBR-22222222,ER-1\n")
    _request(landing, "2026-02", "b.jsonl", '{"subject_id": "jane@example.com", "id_type": "EMAIL_ADDRESS"}\n')
    _request(landing, "2026-03", "later.txt", "MBR-33333333\n")  # a later month: not applied to February
    this, earlier = erasure.erasure_subjects(landing, "2026-02", "MEMBER_ID")
    assert [(s.id_type, s.subject_id) for s in this] == [
        ("MEMBER_ID", "MBR-22222222"),
        ("EMAIL_ADDRESS", "jane@example.com"),
    ]
    assert [(s.id_type, s.subject_id, s.month) for s in earlier] == [("MEMBER_ID", "MBR-11111111", "2026-01")]


def test_erasure_folders_are_never_ingested_as_records(tmp_path):
    landing = tmp_path / "landing"
    (landing / "2026-02").mkdir(parents=True)
    (landing / "2026-02" / "records.jsonl").write_text(
        json.dumps({"record_id": "R-1", "record_type": "claim_note", "text": "A claim note for the file."}) + "\n"
    )
    _request(landing, "2026-02", "requests.csv", "subject_id\nMBR-22222222\n")
    _request(landing, "2026-02", "requests.jsonl", '{"subject_id": "MBR-22222222"}\n')
    wanted, _ = landing_files(landing)
    assert [p.name for p in wanted] == ["records.jsonl"]
    result = ingest(landing_dir=landing, staging_dir=tmp_path / "s", quarantine_dir=tmp_path / "q", partition="2026-02")
    assert (result["rows_in"], result["rows_valid"], result["rows_quarantined"]) == (1, 1, 0)


@pytest.mark.parametrize(
    "name,text,where",
    [
        ("r.csv", "member\nMBR-1\n", "r.csv: line 1: the header has no subject_id column"),
        ("r.csv", "subject_id,ref\n,ER-1\n", "r.csv: line 2: field subject_id is missing or empty"),
        ("r.jsonl", '{"subject_id": "MBR-1"}\n{"subject_id": "MBR-98765432"\n', "r.jsonl: line 2: not valid JSON"),
        ("r.jsonl", '{"subject_id": "MBR-98765432", "id_type": "member id"}\n', "r.jsonl: line 1: field id_type"),
        ("r.xlsx", "x", "r.xlsx: unsupported erasure request file"),
    ],
)
def test_a_bad_erasure_request_names_file_line_and_field_never_the_id(tmp_path, name, text, where):
    landing = tmp_path / "landing"
    _request(landing, "2026-02", name, text)
    with pytest.raises(erasure.ErasureRequestError) as err:
        erasure.read_erasure_requests(landing, "2026-02", "MEMBER_ID")
    assert where in str(err.value)
    assert "98765432" not in str(err.value)


def test_subjects_are_found_by_the_pseudonym_the_masker_wrote():
    """Erasure works in the clean zone: the keyed pseudonym of the id is what masked records hold."""
    from tasks.pii import mask_texts

    key = b"test-only-key"
    text = "Member: Dana Whitfield, ID MBR-48213377, asked about the Gold plan deductible."
    masked, _ = next(iter(mask_texts([text], key=key, recognizers_path=RECOGNIZERS, workers=1)))
    subject = erasure.Subject("MEMBER_ID", "MBR-48213377", "2026-02", "2026-02/erasure/r.csv:2")
    other = erasure.Subject("MEMBER_ID", "MBR-48213378", "2026-02", "2026-02/erasure/r.csv:3")
    found = erasure.subject_pseudonyms([subject, other], key, RECOGNIZERS)
    assert [p for p in found if p in masked] == [next(iter(found))]
    assert "MBR-48213377" not in masked


def test_an_id_type_the_masker_does_not_pseudonymise_is_refused(tmp_path):
    subject = erasure.Subject("NOT_A_TYPE", "x", "2026-02", "2026-02/erasure/r.csv:2")
    with pytest.raises(erasure.ErasureRequestError, match=r"r.csv:2: field id_type NOT_A_TYPE is not masked"):
        erasure.subject_pseudonyms([subject], b"k", RECOGNIZERS)


def _lora(model_dir: Path, r: int):
    from transformers import AutoModelForCausalLM

    from tasks.train.methods import apply_method

    spec = {"train": {"method": "lora", "lora_r": r, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "mlp"}}
    return apply_method(AutoModelForCausalLM.from_pretrained(model_dir), spec)


def test_warm_start_loads_the_champion_adapter_and_refuses_another_shape(tmp_path):
    """The adapter's weights arrive in the new model; an adapter of another rank is refused, not half-loaded."""
    import torch
    from helpers import random_llama

    from tasks.train.methods import load_init_adapter, trainable_state

    base = random_llama(tmp_path / "base")
    champion = _lora(base, 4)
    with torch.no_grad():
        for p in champion.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))  # a "trained" adapter: lora_B is zero at init
    champion.save_pretrained(tmp_path / "adapter")
    fresh = _lora(base, 4)
    before = trainable_state(fresh)
    info = load_init_adapter(fresh, tmp_path / "adapter")
    after, wanted = trainable_state(fresh), trainable_state(champion)
    assert info["tensors"] == len(wanted) > 0
    assert all(torch.equal(after[k], wanted[k]) for k in wanted)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match=r"incompatible adapter \(r: adapter 4 vs this run 8"):
        load_init_adapter(_lora(base, 8), tmp_path / "adapter")


def test_a_month_waits_for_the_previous_run_and_refuses_to_build_on_a_missing_version(tmp_path, monkeypatch):
    """A backfill may start several months at once; each waits for the one before and needs its version."""
    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    jan = datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert months.previous_month_ready(None) is True
    assert months.previous_month_ready({"state": "running", "logical_date": jan}) is False
    assert months.previous_month_ready({"state": "queued", "logical_date": jan}) is False
    assert months.previous_month_ready({"state": "failed", "logical_date": jan}) is True  # ended: prepare checks
    (tmp_path / "landing" / "2026-01").mkdir(parents=True)  # January delivered, its run failed: no version
    with pytest.raises(months.PreviousMonthMissing, match="landing partitions 2026-01 have no dataset version"):
        months.check_earlier_months("2026-02")


def test_a_month_is_not_built_over_earlier_months_that_were_delivered_but_never_versioned(tmp_path, monkeypatch):
    """Scheduling only the latest month (catchup off) must not silently skip months that have data."""
    monkeypatch.setenv("PFT_HOME", str(tmp_path))
    for month in ("2026-01", "2026-02", "2026-04"):
        (tmp_path / "landing" / month).mkdir(parents=True)
    assert months.unversioned_earlier_months("2026-01") == []
    assert months.unversioned_earlier_months("2026-04") == ["2026-01", "2026-02"]
    with pytest.raises(
        months.PreviousMonthMissing,
        match=r"landing partitions 2026-01, 2026-02 have no dataset "
        "version yet.*--from-date 2026-01-01 --to-date 2026-04-01",
    ):
        months.check_earlier_months("2026-04")
