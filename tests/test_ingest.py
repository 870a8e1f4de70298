"""Ingest: every bad-input case lands in quarantine with its reason, field and line; good rows are staged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import DataConfig
from tasks.ingest import REASONS, EmptyLandingError, ingest, normalize_text

HEADER = "record_id,record_type,created_at,text"
PII = "Maria Gonzalez SSN 123-45-6789"


def rec(record_id: str = "R-2026-01-000001", text: str = "Member called about a denied claim.", **extra) -> dict:
    return {"record_id": record_id, "record_type": "claim_note", "created_at": "2026-01-14", "text": text, **extra}


def jline(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    landing = tmp_path / "landing"
    (landing / "2026-01").mkdir(parents=True)
    return {"landing_dir": landing, "staging_dir": tmp_path / "staging" / "run1", "quarantine_dir": tmp_path / "q" / "run1"}


def put(dirs: dict[str, Path], name: str, content: str | bytes) -> Path:
    path = dirs["landing_dir"] / "2026-01" / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(dirs: dict[str, Path], **kw) -> tuple[dict, list[dict], list[dict]]:
    result = ingest(**dirs, **kw)
    assert result["rows_in"] == result["rows_valid"] + result["rows_quarantined"]
    assert json.loads(json.dumps(result)) == result  # JSON-able (it becomes XCom)
    return result, read_jsonl(Path(result["staged_path"])), read_jsonl(Path(result["quarantine_path"]))


def test_defaults_mirror_data_config():
    import inspect

    params = inspect.signature(ingest).parameters
    cfg = DataConfig()
    assert list(params["required_fields"].default) == cfg.required_fields
    assert params["min_text_chars"].default == cfg.min_text_chars
    assert params["max_text_chars"].default == cfg.max_text_chars
    assert params["glob"].default == cfg.landing_glob


def test_good_jsonl_and_csv_are_staged_with_provenance(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n" + jline(rec("R-2")) + "\n")
    put(dirs, "b.csv", f'{HEADER}\nR-3,member_letter,2026-01-15,"Dear member, your plan renews."\n')
    result, staged, quarantined = run(dirs)
    assert (result["rows_in"], result["rows_valid"], result["rows_quarantined"]) == (3, 3, 0)
    assert result["files"] == 2 and result["files_skipped"] == 0 and result["files_empty"] == 0
    assert quarantined == [] and result["quarantine_reasons"] == {}
    assert [r["record_id"] for r in staged] == ["R-1", "R-2", "R-3"]
    assert staged[2] == {
        "record_id": "R-3",
        "record_type": "member_letter",
        "created_at": "2026-01-15",
        "text": "Dear member, your plan renews.",
        "source_file": "2026-01/b.csv",
        "source_line": 2,
    }
    assert staged[1]["source_file"] == "2026-01/a.jsonl" and staged[1]["source_line"] == 2
    assert result["staged_path"] == str(dirs["staging_dir"] / "rows.jsonl")
    assert result["quarantine_path"] == str(dirs["quarantine_dir"] / "quarantine.jsonl")


# Each bad JSONL line → (reason, field). The good row sits on line 1, the bad one on line 2.
BAD_JSONL = {
    "malformed_json": ('{"record_id": "R-9", "text": ', None),
    "not_object": ('["R-9", "claim_note"]', None),
    "missing_field": (jline({"record_id": "R-9", "record_type": "claim_note", "created_at": "2026-01-14"}), "text"),
    "null_field": (jline(rec("R-9") | {"record_type": None}), "record_type"),
    "blank_id": (jline(rec("   ")), "record_id"),
    "wrong_type": (jline(rec("R-9", text=12345678)), "text"),
    "wrong_type_id": (jline(rec(12345)), "record_id"),
    "wrong_type_created": (jline(rec("R-9", created_at=20260114)), "created_at"),
    "empty_text": (jline(rec("R-9", text=" \t\n\x00 ")), "text"),
    "text_too_short": (jline(rec("R-9", text="too  short"[:5])), "text"),
    "text_too_long": (jline(rec("R-9", text="x" * 4001)), "text"),
    "lone_surrogate": ('{"record_id": "R-9", "record_type": "claim_note", "text": "bad \\ud800 surrogate text"}', "text"),
}
EXPECTED_REASON = {
    "null_field": "missing_field",
    "blank_id": "missing_field",
    "wrong_type_id": "wrong_type",
    "wrong_type_created": "wrong_type",
    "lone_surrogate": "invalid_utf8",
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_each_bad_jsonl_line_is_quarantined_with_reason_field_and_line(dirs, case):
    bad, field = BAD_JSONL[case]
    reason = EXPECTED_REASON.get(case, case)
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n" + bad + "\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"]
    assert (result["rows_in"], result["rows_valid"], result["rows_quarantined"]) == (2, 1, 1)
    assert result["quarantine_reasons"] == {reason: 1}
    [q] = quarantined
    assert set(q) == {"source_file", "line", "field", "reason", "message", "raw"}
    assert (q["source_file"], q["line"], q["field"], q["reason"]) == ("2026-01/a.jsonl", 2, field, reason)
    assert reason in REASONS and q["message"]
    assert q["raw"] == bad


def test_invalid_utf8_costs_one_line_not_the_file(dirs):
    lines = [jline(rec("R-1")).encode(), b'{"record_id": "R-2", "text": "caf\xe9 \xff bytes"}', jline(rec("R-3")).encode()]
    put(dirs, "a.jsonl", b"\n".join(lines) + b"\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-3"]
    [q] = quarantined
    assert (q["line"], q["field"], q["reason"]) == (2, None, "invalid_utf8")
    assert "\\xe9" in q["raw"]  # raw keeps the bad bytes visible, escaped


def test_invalid_utf8_in_csv_row(dirs):
    put(dirs, "b.csv", f"{HEADER}\n".encode() + b"R-1,claim_note,2026-01-14,caf\xe9 text is here\nR-2,claim_note,2026-01-14,fine text here\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-2"]
    assert [(q["line"], q["field"], q["reason"]) for q in quarantined] == [(2, None, "invalid_utf8")]


def test_duplicate_record_id_quarantines_the_later_occurrence_across_files(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1", text="first occurrence text")) + "\n" + jline(rec("R-1", text="second in file")) + "\n")
    put(dirs, "b.csv", f"{HEADER}\nR-1,claim_note,2026-01-14,third occurrence text\nR-2,claim_note,2026-01-14,other record here\n")
    result, staged, quarantined = run(dirs)
    assert [(r["record_id"], r["text"]) for r in staged] == [("R-1", "first occurrence text"), ("R-2", "other record here")]
    assert [(q["source_file"], q["line"], q["field"], q["reason"]) for q in quarantined] == [
        ("2026-01/a.jsonl", 2, "record_id", "duplicate_id"),
        ("2026-01/b.csv", 2, "record_id", "duplicate_id"),
    ]
    assert result["quarantine_reasons"] == {"duplicate_id": 2}


def test_a_rejected_row_does_not_claim_its_record_id(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1", text="short")) + "\n" + jline(rec("R-1", text="long enough text")) + "\n")
    _, staged, quarantined = run(dirs)
    assert [r["text"] for r in staged] == ["long enough text"]
    assert [q["reason"] for q in quarantined] == ["text_too_short"]


@pytest.mark.parametrize(
    "header",
    [
        "id,type,date,body",  # wrong names
        "R-0,claim_note,2026-01-14,some text that is data",  # missing header: line 1 is data
        "record_id,record_type,created_at,text,text",  # repeated column
    ],
)
def test_csv_with_wrong_or_missing_header_quarantines_every_row(dirs, header):
    put(dirs, "b.csv", f"{header}\nR-1,claim_note,2026-01-14,valid looking text\nR-2,claim_note,2026-01-14,more valid text\n")
    put(dirs, "c.jsonl", jline(rec("R-5")) + "\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-5"]
    assert [(q["source_file"], q["line"], q["field"], q["reason"]) for q in quarantined] == [
        ("2026-01/b.csv", n, "header", "bad_header") for n in (1, 2, 3)
    ]
    assert result["quarantine_reasons"] == {"bad_header": 3}
    # the message names the expected header, never the (maybe PII) first line
    assert "some text that is data" not in quarantined[0]["message"]


def test_csv_header_in_other_order_and_optional_created_at(dirs):
    put(dirs, "b.csv", ' Text ,record_type,record_id\n"hello there, world",support_ticket,R-1\n')
    _, staged, quarantined = run(dirs)
    assert quarantined == []
    assert staged[0]["text"] == "hello there, world" and staged[0]["created_at"] is None


def test_csv_row_with_wrong_column_count(dirs):
    put(dirs, "b.csv", f"{HEADER}\nR-1,claim_note,2026-01-14,ok text here,extra\nR-2,claim_note\nR-3,claim_note,2026-01-14,good text here\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-3"]
    assert [(q["line"], q["field"], q["reason"]) for q in quarantined] == [(2, None, "column_count"), (3, None, "column_count")]


def test_csv_quoted_multiline_field_keeps_its_start_line(dirs):
    put(dirs, "b.csv", f'{HEADER}\r\nR-1,claim_note,2026-01-14,"line one\r\nline two"\r\n\r\nR-2,claim_note,2026-01-14,"x"\r\n')
    _, staged, quarantined = run(dirs)
    assert [(r["record_id"], r["text"], r["source_line"]) for r in staged] == [("R-1", "line one\nline two", 2)]
    assert [(q["line"], q["reason"], q["raw"]) for q in quarantined] == [(5, "text_too_short", 'R-2,claim_note,2026-01-14,"x"')]


def test_csv_with_bom_header(dirs):
    put(dirs, "b.csv", "\ufeff" + f"{HEADER}\nR-1,claim_note,2026-01-14,text after a BOM\n")
    _, staged, quarantined = run(dirs)
    assert quarantined == [] and staged[0]["record_id"] == "R-1"


def test_text_is_nfkc_normalised_and_whitespace_collapsed():
    assert normalize_text("  ﬁle\u00a0№ 5\t\tend\n") == "file No 5 end"
    assert normalize_text("Ｆｕｌｌ　width") == "Full width"
    assert normalize_text("bell\x07 and nul\x00 gone,\r\nCRLF\x0bVT\x7f") == "bell and nul gone,\nCRLF VT"
    # Single line breaks carry structure (FAQ lines) and survive; blank-line runs collapse.
    assert normalize_text("Question: x?  \n\n\n  Answer:  y") == "Question: x?\nAnswer: y"
    assert normalize_text("a\u2028b   c") == "a b c"


def test_all_string_fields_are_normalised_on_staging(dirs):
    put(dirs, "a.jsonl", jline(rec(" R-1\t", text="Ｍａｒｉａ   called\n\nabout ﬁling\x01 a claim")) + "\n")
    _, staged, _ = run(dirs)
    assert staged[0]["record_id"] == "R-1"
    assert staged[0]["text"] == "Maria called\nabout filing a claim"


def test_length_limits_apply_after_normalisation(dirs):
    put(dirs, "a.jsonl", "\n".join([
        jline(rec("R-1", text="a   b   c")),  # 9 raw, 5 normalised → too short
        jline(rec("R-2", text="12345678")),  # exactly min
        jline(rec("R-3", text="y" * 20)),  # exactly max below
    ]) + "\n")
    result, staged, quarantined = run(dirs, min_text_chars=8, max_text_chars=20)
    assert [r["record_id"] for r in staged] == ["R-2", "R-3"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(1, "text_too_short")]


def test_custom_required_fields(dirs):
    put(dirs, "a.jsonl", jline({"record_id": "R-1", "record_type": "claim_note", "text": "no created_at here"}) + "\n")
    _, staged, _ = run(dirs)
    assert staged[0]["created_at"] is None
    _, staged, quarantined = run(dirs, required_fields=("record_id", "record_type", "created_at", "text"))
    assert staged == [] and [(q["field"], q["reason"]) for q in quarantined] == [("created_at", "missing_field")]


def test_mixed_file_accounting_identity_and_counts(dirs):
    put(dirs, "a.jsonl", "\n".join([jline(rec("R-1")), "not json", "", jline(rec("R-1")), jline(rec("R-2", text="tiny"))]) + "\n")
    put(dirs, "b.csv", f"{HEADER}\nR-3,claim_note,2026-01-14,a good csv row\nR-4,claim_note\n")
    put(dirs, "notes.txt", "ignored")
    put(dirs, "empty.jsonl", b"")
    result, staged, quarantined = run(dirs)
    assert result["rows_in"] == 6  # blank line is not a row
    assert (result["rows_valid"], result["rows_quarantined"]) == (2, 4)
    assert result["quarantine_reasons"] == {"column_count": 1, "duplicate_id": 1, "malformed_json": 1, "text_too_short": 1}
    assert (result["files"], result["files_skipped"], result["files_empty"]) == (3, 1, 1)
    assert result["notes"] == ["empty file: 2026-01/empty.jsonl"]
    assert len(staged) == result["rows_valid"] and len(quarantined) == result["rows_quarantined"]


def test_zero_byte_file_is_a_note_not_an_error(dirs):
    put(dirs, "empty.csv", b"")
    result, staged, quarantined = run(dirs)
    assert result["files_empty"] == 1 and result["rows_in"] == 0
    assert staged == [] and quarantined == []
    assert Path(result["staged_path"]).exists()


@pytest.mark.parametrize("layout", ["missing", "empty", "only_other_files"])
def test_empty_landing_raises_a_helpful_error(tmp_path, layout):
    landing = tmp_path / "landing"
    if layout != "missing":
        (landing / "2026-01").mkdir(parents=True)
    if layout == "only_other_files":
        (landing / "2026-01" / "readme.txt").write_text("x")
    with pytest.raises(EmptyLandingError) as err:
        ingest(landing_dir=landing, staging_dir=tmp_path / "s", quarantine_dir=tmp_path / "q")
    assert str(landing) in str(err.value) and "make demo" in str(err.value)
    assert not (tmp_path / "s").exists()


def test_no_record_text_in_result_or_logs(dirs, caplog):
    put(dirs, "a.jsonl", jline(rec("R-1", text=f"Call {PII} today")) + "\n" + jline(rec("R-2", text=PII + "x" * 5000)) + "\n")
    put(dirs, "b.csv", f"{PII},{PII},x,y\n")
    caplog.set_level("DEBUG")
    result, _, quarantined = run(dirs)
    assert result["rows_quarantined"] == 2
    assert "123-45-6789" not in json.dumps(result)
    assert "123-45-6789" not in caplog.text
    assert all("123-45-6789" not in q["message"] for q in quarantined)


def test_rerun_is_idempotent_and_replaces_outputs(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\nbad\n")
    first = run(dirs)
    staged_bytes = Path(first[0]["staged_path"]).read_bytes()
    second = run(dirs)
    assert first == second
    assert Path(first[0]["staged_path"]).read_bytes() == staged_bytes
    # new landing data: the outputs are replaced, not appended to
    put(dirs, "a.jsonl", jline(rec("R-7")) + "\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-7"] and quarantined == []
    # no temp files left behind
    leftovers = [p.name for d in (dirs["staging_dir"], dirs["quarantine_dir"]) for p in d.iterdir()]
    assert sorted(leftovers) == ["quarantine.jsonl", "rows.jsonl"]


def test_files_are_read_in_sorted_order(dirs):
    (dirs["landing_dir"] / "2026-02").mkdir()
    (dirs["landing_dir"] / "2026-02" / "a.jsonl").write_text(jline(rec("R-3")) + "\n")
    put(dirs, "z.jsonl", jline(rec("R-2")) + "\n")
    put(dirs, "b.jsonl", jline(rec("R-1")) + "\n")
    _, staged, _ = run(dirs)
    assert [r["source_file"] for r in staged] == ["2026-01/b.jsonl", "2026-01/z.jsonl", "2026-02/a.jsonl"]


def test_cli_prints_result_json(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    cmd = [sys.executable, "-m", "tasks.ingest", "--landing", str(dirs["landing_dir"]),
           "--staging", str(dirs["staging_dir"]), "--quarantine", str(dirs["quarantine_dir"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    assert json.loads(out.stdout)["rows_valid"] == 1
    empty = subprocess.run([*cmd[:4], str(dirs["landing_dir"] / "nothing"), *cmd[5:]], capture_output=True, text=True)
    assert empty.returncode == 2 and "make demo" in empty.stderr
