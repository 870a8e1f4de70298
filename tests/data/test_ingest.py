"""Ingest: every bad-input case lands in quarantine with its reason, field and line; good rows are staged;
exact duplicates are counted out; rows_in == rows_valid + rows_quarantined + duplicates_removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.data.ingest as ingest_module
from tasks.config import DataConfig, load_config
from tasks.data.ingest import (
    REASONS,
    EmptyLandingError,
    InvalidPartitionError,
    MissingPartitionError,
    QuarantineThresholdExceeded,
    ingest,
    normalize_text,
    text_hash,
)

HEADER = "record_id,record_type,created_at,text"
PII = "Maria Gonzalez SSN 123-45-6789"


def rec(record_id: str = "R-2026-01-000001", text: str | None = None, **extra) -> dict:
    # Distinct default text per id, so only the duplicate tests meet duplicate text.
    text = f"Member called about denied claim {record_id}." if text is None else text
    return {"record_id": record_id, "record_type": "claim_note", "created_at": "2026-01-14", "text": text, **extra}


def jline(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    landing = tmp_path / "landing"
    (landing / "2026-01").mkdir(parents=True)
    return {
        "landing_dir": landing,
        "staging_dir": tmp_path / "staging" / "run1",
        "quarantine_dir": tmp_path / "q" / "run1",
    }


def put(dirs: dict[str, Path], name: str, content: str | bytes) -> Path:
    path = dirs["landing_dir"] / "2026-01" / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def put_parquet(dirs: dict[str, Path], name: str, rows: list[dict] | pa.Table, **write_kw) -> Path:
    path = dirs["landing_dir"] / "2026-01" / name
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    pq.write_table(table, path, **write_kw)
    return path


def run(dirs: dict[str, Path], **kw) -> tuple[dict, list[dict], list[dict]]:
    kw.setdefault("max_quarantine_share", 1.0)  # most cases here are mostly bad rows on purpose
    result = ingest(**dirs, **kw)
    assert result["rows_in"] == result["rows_valid"] + result["rows_quarantined"] + result["duplicates_removed"]
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
    assert params["max_quarantine_share"].default == cfg.max_quarantine_share == 0.2
    assert params["partition"].default is None
    assert params["max_line_bytes"].default == cfg.max_line_bytes
    assert params["follow_symlinks"].default == cfg.follow_symlinks
    assert load_config().data.max_quarantine_share == cfg.max_quarantine_share  # pipeline.yaml agrees


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
    "lone_surrogate": (
        '{"record_id": "R-9", "record_type": "claim_note", "text": "bad \\ud800 surrogate text"}',
        "text",
    ),
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
    lines = [
        jline(rec("R-1")).encode(),
        b'{"record_id": "R-2", "text": "caf\xe9 \xff bytes"}',
        jline(rec("R-3")).encode(),
    ]
    put(dirs, "a.jsonl", b"\n".join(lines) + b"\n")
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-3"]
    [q] = quarantined
    assert (q["line"], q["field"], q["reason"]) == (2, None, "invalid_utf8")
    assert "\\xe9" in q["raw"]  # raw keeps the bad bytes visible, escaped


def test_invalid_utf8_in_csv_row(dirs):
    put(
        dirs,
        "b.csv",
        f"{HEADER}\n".encode()
        + b"R-1,claim_note,2026-01-14,caf\xe9 text is here\nR-2,claim_note,2026-01-14,fine text here\n",
    )
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-2"]
    assert [(q["line"], q["field"], q["reason"]) for q in quarantined] == [(2, None, "invalid_utf8")]


def test_duplicate_record_id_quarantines_the_later_occurrence_across_files(dirs):
    put(
        dirs,
        "a.jsonl",
        jline(rec("R-1", text="first occurrence text")) + "\n" + jline(rec("R-1", text="second in file")) + "\n",
    )
    put(
        dirs,
        "b.csv",
        f"{HEADER}\nR-1,claim_note,2026-01-14,third occurrence text\nR-2,claim_note,2026-01-14,other record here\n",
    )
    result, staged, quarantined = run(dirs)
    assert [(r["record_id"], r["text"]) for r in staged] == [
        ("R-1", "first occurrence text"),
        ("R-2", "other record here"),
    ]
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
    put(
        dirs,
        "b.csv",
        f"{header}\nR-1,claim_note,2026-01-14,valid looking text\nR-2,claim_note,2026-01-14,more valid text\n",
    )
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
    put(
        dirs,
        "b.csv",
        f"{HEADER}\nR-1,claim_note,2026-01-14,ok text here,extra\nR-2,claim_note\nR-3,claim_note,2026-01-14,good text here\n",
    )
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-3"]
    assert [(q["line"], q["field"], q["reason"]) for q in quarantined] == [
        (2, None, "column_count"),
        (3, None, "column_count"),
    ]


def test_csv_quoted_multiline_field_keeps_its_start_line(dirs):
    put(
        dirs,
        "b.csv",
        f'{HEADER}\r\nR-1,claim_note,2026-01-14,"line one\r\nline two"\r\n\r\nR-2,claim_note,2026-01-14,"x"\r\n',
    )
    _, staged, quarantined = run(dirs)
    assert [(r["record_id"], r["text"], r["source_line"]) for r in staged] == [("R-1", "line one\nline two", 2)]
    assert [(q["line"], q["reason"], q["raw"]) for q in quarantined] == [
        (5, "text_too_short", 'R-2,claim_note,2026-01-14,"x"')
    ]


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
    put(
        dirs,
        "a.jsonl",
        "\n".join(
            [
                jline(rec("R-1", text="a   b   c")),  # 9 raw, 5 normalised → too short
                jline(rec("R-2", text="12345678")),  # exactly min
                jline(rec("R-3", text="y" * 20)),  # exactly max below
            ]
        )
        + "\n",
    )
    _result, staged, quarantined = run(dirs, min_text_chars=8, max_text_chars=20)
    assert [r["record_id"] for r in staged] == ["R-2", "R-3"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(1, "text_too_short")]


def test_custom_required_fields(dirs):
    put(dirs, "a.jsonl", jline({"record_id": "R-1", "record_type": "claim_note", "text": "no created_at here"}) + "\n")
    _, staged, _ = run(dirs)
    assert staged[0]["created_at"] is None
    _, staged, quarantined = run(dirs, required_fields=("record_id", "record_type", "created_at", "text"))
    assert staged == [] and [(q["field"], q["reason"]) for q in quarantined] == [("created_at", "missing_field")]


def test_mixed_file_accounting_identity_and_counts(dirs):
    put(
        dirs,
        "a.jsonl",
        "\n".join([jline(rec("R-1")), "not json", "", jline(rec("R-1")), jline(rec("R-2", text="tiny"))]) + "\n",
    )
    put(dirs, "b.csv", f"{HEADER}\nR-3,claim_note,2026-01-14,a good csv row\nR-4,claim_note\n")
    put(dirs, "notes.txt", "ignored")
    put(dirs, "empty.jsonl", b"")
    result, staged, quarantined = run(dirs)
    assert result["rows_in"] == 6  # blank line is not a row
    assert (result["rows_valid"], result["rows_quarantined"]) == (2, 4)
    assert result["quarantine_reasons"] == {
        "column_count": 1,
        "duplicate_id": 1,
        "malformed_json": 1,
        "text_too_short": 1,
    }
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
    put(
        dirs,
        "a.jsonl",
        jline(rec("R-1", text=f"Call {PII} today")) + "\n" + jline(rec("R-2", text=PII + "x" * 5000)) + "\n",
    )
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
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-7"] and quarantined == []
    # no temp files left behind
    leftovers = [p.name for d in (dirs["staging_dir"], dirs["quarantine_dir"]) for p in d.iterdir()]
    assert sorted(leftovers) == ["duplicates.jsonl", "quarantine.jsonl", "rows.jsonl"]


def test_files_are_read_in_sorted_order(dirs):
    (dirs["landing_dir"] / "2026-02").mkdir()
    (dirs["landing_dir"] / "2026-02" / "a.jsonl").write_text(jline(rec("R-3")) + "\n")
    put(dirs, "z.jsonl", jline(rec("R-2")) + "\n")
    put(dirs, "b.jsonl", jline(rec("R-1")) + "\n")
    _, staged, _ = run(dirs)
    assert [r["source_file"] for r in staged] == ["2026-01/b.jsonl", "2026-01/z.jsonl", "2026-02/a.jsonl"]


def test_cli_prints_result_json(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "tasks.data.ingest",
        "--landing",
        str(dirs["landing_dir"]),
        "--staging",
        str(dirs["staging_dir"]),
        "--quarantine",
        str(dirs["quarantine_dir"]),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    assert json.loads(out.stdout)["rows_valid"] == 1
    empty = subprocess.run([*cmd[:4], str(dirs["landing_dir"] / "nothing"), *cmd[5:]], capture_output=True, text=True)
    assert empty.returncode == 2 and "make demo" in empty.stderr


# ---------------------------------------------------------------------------
# Parquet


def test_good_parquet_is_staged_with_row_numbers_as_lines(dirs):
    rows = [rec("R-1"), rec("R-2", text="Ｆｕｌｌ　width   text\n\nkept")]
    put_parquet(dirs, "c.parquet", rows)
    # string variants Arrow writers produce are all text columns
    table = pa.table(
        {
            "record_id": pa.array(["R-3"], pa.large_string()),
            "record_type": pa.array(["plan_document"]).dictionary_encode(),
            "text": ["Plan summary for the year."],
            "extra": [1],
        }
    )
    put_parquet(dirs, "d.parquet", table)
    result, staged, quarantined = run(dirs)
    assert quarantined == [] and result["files"] == 2
    assert [(r["record_id"], r["source_file"], r["source_line"]) for r in staged] == [
        ("R-1", "2026-01/c.parquet", 1),
        ("R-2", "2026-01/c.parquet", 2),
        ("R-3", "2026-01/d.parquet", 1),
    ]
    assert staged[1]["text"] == "Full width text\nkept"
    assert staged[2]["created_at"] is None and staged[2]["record_type"] == "plan_document" and "extra" not in staged[2]


def test_parquet_null_and_short_values_are_row_problems(dirs):
    put_parquet(dirs, "c.parquet", [rec("R-1"), rec("R-2") | {"record_type": None}, rec("R-3", text="tiny")])
    _, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"]
    assert [(q["line"], q["field"], q["reason"]) for q in quarantined] == [
        (2, "record_type", "missing_field"),
        (3, "text", "text_too_short"),
    ]
    assert json.loads(quarantined[1]["raw"])["record_id"] == "R-3"


@pytest.mark.parametrize(
    "table, field, words",
    [
        (pa.table({"record_id": ["R-1", "R-2"], "record_type": ["claim_note"] * 2}), "text", ["lacks", "text"]),
        (
            pa.table({"record_id": ["R-1", "R-2"], "record_type": ["claim_note"] * 2, "text": [12345678, 87654321]}),
            "text",
            ["'text'", "int64", "string"],
        ),
        (
            pa.table(
                {"record_id": [1, 2], "record_type": ["claim_note"] * 2, "text": ["some long text", "more text!"]}
            ),
            "record_id",
            ["'record_id'", "int64"],
        ),
    ],
    ids=["missing_column", "wrong_type_text", "wrong_type_id"],
)
def test_parquet_with_wrong_schema_quarantines_every_row(dirs, table, field, words):
    put_parquet(dirs, "c.parquet", table)
    put(dirs, "a.jsonl", jline(rec("R-9")) + "\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-9"]
    assert [(q["source_file"], q["line"], q["field"], q["reason"]) for q in quarantined] == [
        ("2026-01/c.parquet", 1, field, "bad_schema"),
        ("2026-01/c.parquet", 2, field, "bad_schema"),
    ]
    assert result["quarantine_reasons"] == {"bad_schema": 2} and "bad_schema" in REASONS
    assert all(w in quarantined[0]["message"] for w in words)
    assert json.loads(quarantined[0]["raw"])["record_type"] == "claim_note"  # the whole row is kept in quarantine


@pytest.mark.parametrize("damage", ["truncated", "garbage", "footer_only_magic"])
def test_unreadable_parquet_is_one_line_zero_entry(dirs, damage):
    good = put_parquet(dirs, "c.parquet", [rec("R-1"), rec("R-2")])
    data = good.read_bytes()
    good.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "garbage": b"not parquet at all " * 10,
            "footer_only_magic": b"PAR1" + b"\0" * 20 + b"PAR1",
        }[damage]
    )
    put(dirs, "a.jsonl", jline(rec("R-9")) + "\n")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-9"]
    assert (result["rows_in"], result["rows_quarantined"]) == (2, 1)
    [q] = quarantined
    assert (q["source_file"], q["line"], q["field"], q["reason"], q["raw"]) == (
        "2026-01/c.parquet",
        0,
        None,
        "unreadable_file",
        "",
    )
    assert "Parquet" in q["message"] and "re-deliver" in q["message"]


def test_corrupt_parquet_row_group_costs_only_its_rows(dirs):
    path = put_parquet(
        dirs,
        "c.parquet",
        [rec(f"R-{i}") for i in range(1, 7)],
        row_group_size=3,
        compression="none",
        use_dictionary=False,
    )
    column = pq.ParquetFile(path).metadata.row_group(1).column(3)  # text of rows 4-6
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + column.total_compressed_size // 2
    data[start : column.data_page_offset + column.total_compressed_size - 2] = b"\xff" * (
        column.total_compressed_size - 2 - column.total_compressed_size // 2
    )
    path.write_bytes(bytes(data))
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-2", "R-3"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(n, "unreadable_file") for n in (4, 5, 6)]
    assert "row group 1" in quarantined[0]["message"]
    assert result["rows_in"] == 6


# ---------------------------------------------------------------------------
# Truncated files, vanished files, zero-byte files


def test_truncated_jsonl_last_line_is_quarantined_as_truncated(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n" + jline(rec("R-2"))[:30])
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"]
    [q] = quarantined
    assert (q["line"], q["field"], q["reason"]) == (2, None, "truncated_line")
    assert "cut off" in q["message"] and q["raw"] == jline(rec("R-2"))[:30]


def test_truncated_mid_character_and_unterminated_good_line(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")).encode() + b"\n" + jline(rec("R-2", text="café au lait text")).encode()[:-6])
    put(dirs, "b.jsonl", jline(rec("R-3")) + "\n" + jline(rec("R-4")))  # complete, just no final newline
    put(dirs, "c.jsonl", jline(rec("R-5")) + "\nnot json\n")  # a bad line that *is* terminated
    _, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-3", "R-4", "R-5"]
    assert [(q["source_file"], q["reason"]) for q in quarantined] == [
        ("2026-01/a.jsonl", "truncated_line"),
        ("2026-01/c.jsonl", "malformed_json"),
    ]


@pytest.mark.parametrize(
    "tail",
    [
        'R-2,claim_note,2026-01-14,"cut off in the mid',
        "R-2,claim_note,20",
        'R-2,claim_note,2026-01-14,"cut off\nafter a line break\n',
    ],
)
def test_truncated_csv_last_record(dirs, tail):
    put(dirs, "b.csv", f'{HEADER}\nR-1,claim_note,2026-01-14,"good ""quoted"" text"\nR-3,x,y,a stray " quote\n{tail}')
    _, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-3"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(4, "truncated_line")]
    assert "cut off" in quarantined[0]["message"]


def test_file_that_vanishes_after_listing_is_recorded_not_a_crash(dirs, monkeypatch):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    gone = put(dirs, "b.jsonl", jline(rec("R-2")) + "\n")
    listed = ingest_module.landing_files

    def list_then_delete(*args, **kwargs):
        files = listed(*args, **kwargs)
        gone.unlink()  # a producer moves the file away after the listing
        return files

    monkeypatch.setattr(ingest_module, "landing_files", list_then_delete)
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"] and quarantined == []
    assert (result["files"], result["files_missing"], result["rows_in"]) == (2, 1, 1)
    assert result["notes"] == ["file disappeared during the run: 2026-01/b.jsonl"]


@pytest.mark.parametrize("name", ["b.jsonl", "b.csv", "b.parquet"])
def test_file_that_vanishes_when_opened(dirs, monkeypatch, name):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    gone = put(dirs, name, b"x")  # content never read: it is gone by then
    read = ingest_module._read_rows

    def delete_then_read(path, required, *rest):
        if path == gone:
            gone.unlink()  # stat() saw it; open() will not
        return read(path, required, *rest)

    monkeypatch.setattr(ingest_module, "_read_rows", delete_then_read)
    result, staged, _ = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"]
    assert result["files_missing"] == 1 and result["notes"] == [f"file disappeared during the run: 2026-01/{name}"]


def test_missing_output_folder_is_not_mistaken_for_a_vanished_landing_file(dirs, monkeypatch):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")

    def broken(path, required, *rest):
        raise FileNotFoundError("some other file")

    monkeypatch.setattr(ingest_module, "_read_rows", broken)
    with pytest.raises(FileNotFoundError, match="some other file"):
        run(dirs)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.parquet"])
def test_zero_byte_file_of_each_format_is_counted(dirs, name):
    put(dirs, name, b"")
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    result, _staged, quarantined = run(dirs)
    assert (result["files"], result["files_empty"], result["rows_in"]) == (2, 1, 1)
    assert result["notes"] == [f"empty file: 2026-01/{name}"] and quarantined == []


# ---------------------------------------------------------------------------
# Month partitions


def test_partition_reads_only_its_month(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    feb = dirs["landing_dir"] / "2026-02"
    (feb / "sub").mkdir(parents=True)
    (feb / "a.jsonl").write_text(jline(rec("R-2")) + "\n")
    pq.write_table(pa.Table.from_pylist([rec("R-3")]), feb / "sub" / "c.parquet")
    result, staged, _ = run(dirs, partition="2026-02")
    assert [(r["record_id"], r["source_file"]) for r in staged] == [
        ("R-2", "2026-02/a.jsonl"),
        ("R-3", "2026-02/sub/c.parquet"),
    ]
    assert result["partition"] == "2026-02" and result["files"] == 2
    result, staged, _ = run(dirs)  # no partition: every month
    assert [r["record_id"] for r in staged] == ["R-1", "R-2", "R-3"] and result["partition"] is None


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "202601", "../2026-01", "2026-01/", ""])
def test_invalid_partition_name_is_a_clear_error(dirs, bad):
    with pytest.raises(InvalidPartitionError) as err:
        ingest(**dirs, partition=bad)
    assert str(dirs["landing_dir"] / bad) in str(err.value) and "YYYY-MM" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_or_empty_partition_folder_is_a_clear_error(dirs):
    with pytest.raises(MissingPartitionError) as err:
        ingest(**dirs, partition="2026-03")
    assert str(dirs["landing_dir"] / "2026-03") in str(err.value) and "does not exist" in str(err.value)
    assert isinstance(err.value, EmptyLandingError)  # a permanent input error, like an empty landing
    with pytest.raises(EmptyLandingError) as err:  # the folder exists but holds nothing to ingest
        ingest(**dirs, partition="2026-01")
    assert str(dirs["landing_dir"] / "2026-01") in str(err.value)
    assert not dirs["staging_dir"].exists()


# ---------------------------------------------------------------------------
# Exact duplicates


def test_exact_duplicate_text_is_removed_counted_and_audited(dirs):
    same = "Member asked about the deductible for plan HX."
    put(
        dirs,
        "a.jsonl",
        "\n".join(
            [
                jline(rec("R-1", text=same)),
                jline(rec("R-2", text="  Member asked about the\tdeductible for plan ＨＸ.  ")),  # same once normalised
                jline(rec("R-3", text=same + " Different.")),
                jline(rec("R-1", text=same)),  # same id: a conflict, quarantined, not a duplicate
            ]
        )
        + "\n",
    )
    put(dirs, "b.csv", f"{HEADER}\nR-4,claim_note,2026-01-14,{same}\n")
    put_parquet(dirs, "c.parquet", [rec("R-5", text=same)])
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-3"]
    assert (result["rows_in"], result["rows_valid"], result["rows_quarantined"], result["duplicates_removed"]) == (
        6,
        2,
        1,
        3,
    )
    assert [(q["line"], q["reason"]) for q in quarantined] == [(4, "duplicate_id")]
    dups = read_jsonl(Path(result["duplicates_path"]))
    assert result["duplicates_path"] == str(dirs["staging_dir"] / "duplicates.jsonl")
    assert [(d["record_id"], d["source_file"], d["source_line"], d["duplicate_of"]) for d in dups] == [
        ("R-2", "2026-01/a.jsonl", 2, "R-1"),
        ("R-4", "2026-01/b.csv", 2, "R-1"),
        ("R-5", "2026-01/c.parquet", 1, "R-1"),
    ]
    assert {d["text_sha256"] for d in dups} == {text_hash(same)}
    assert same not in Path(result["duplicates_path"]).read_text()  # ids and hashes only, never text
    assert result["quarantine_reasons"] == {"duplicate_id": 1}  # duplicates are not quarantined


def test_a_quarantined_row_does_not_claim_its_text(dirs):
    text = "A text shared by a bad row and a good row."
    put(dirs, "a.jsonl", jline(rec("R-1", text=text, record_type=None)) + "\n" + jline(rec("R-2", text=text)) + "\n")
    result, staged, _ = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-2"] and result["duplicates_removed"] == 0


# ---------------------------------------------------------------------------
# Quarantine-share threshold


def test_quarantine_share_over_threshold_fails_with_a_clear_message(dirs):
    put(
        dirs,
        "a.jsonl",
        "\n".join([jline(rec("R-1")), "not json", "still not json", jline(rec("R-2", text=PII[:5]))]) + "\n",
    )
    put(dirs, "b.jsonl", jline(rec("R-3")) + "\n" + jline(rec("R-4")) + "\n")
    with pytest.raises(QuarantineThresholdExceeded) as err:
        ingest(**dirs, max_quarantine_share=0.4)
    message = str(err.value)
    quarantine_path = dirs["quarantine_dir"] / "quarantine.jsonl"
    assert "3 of 6 rows" in message and "50.0%" in message and "40.0%" in message
    assert "data.max_quarantine_share" in message and str(quarantine_path) in message
    assert "malformed_json 2, text_too_short 1" in message
    assert "Maria" not in message and "not json" not in message  # no row text
    assert isinstance(err.value, ValueError)
    assert (err.value.share, err.value.threshold, err.value.quarantine_path) == (0.5, 0.4, str(quarantine_path))
    assert err.value.result["rows_quarantined"] == 3
    # the outputs are written before failing, so the quarantine can be inspected
    assert len(read_jsonl(quarantine_path)) == 3 and len(read_jsonl(dirs["staging_dir"] / "rows.jsonl")) == 3
    # exactly at the threshold passes; the default (0.2) fails
    assert ingest(**dirs, max_quarantine_share=0.5)["quarantine_share"] == 0.5
    with pytest.raises(QuarantineThresholdExceeded):
        ingest(**dirs)


def test_duplicates_do_not_count_toward_the_quarantine_share(dirs):
    put(dirs, "a.jsonl", "\n".join(jline(rec(f"R-{i}", text="the very same text here")) for i in range(5)) + "\n")
    result = ingest(**dirs, max_quarantine_share=0.0)
    assert (result["rows_valid"], result["duplicates_removed"], result["quarantine_share"]) == (1, 4, 0.0)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_threshold_out_of_range_is_rejected(dirs, share):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\n")
    with pytest.raises(ValueError, match="max_quarantine_share"):
        ingest(**dirs, max_quarantine_share=share)


def test_cli_partition_and_threshold_exit_codes(dirs):
    put(dirs, "a.jsonl", jline(rec("R-1")) + "\nbad\n")
    base = [
        sys.executable,
        "-m",
        "tasks.data.ingest",
        "--landing",
        str(dirs["landing_dir"]),
        "--staging",
        str(dirs["staging_dir"]),
        "--quarantine",
        str(dirs["quarantine_dir"]),
    ]
    ok = subprocess.run(
        [*base, "--partition", "2026-01", "--max-quarantine-share", "0.5"], capture_output=True, text=True, check=True
    )
    assert json.loads(ok.stdout)["partition"] == "2026-01"
    over = subprocess.run(base, capture_output=True, text=True)
    assert over.returncode == 3 and "max_quarantine_share" in over.stderr
    bad = subprocess.run([*base, "--partition", "2026-99"], capture_output=True, text=True)
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr
