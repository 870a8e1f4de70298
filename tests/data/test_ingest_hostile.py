"""Ingest against hostile input (issue 12, findings 3-5): invisible characters are removed and counted,
one hostile row (deep JSON, a huge integer, an over-long line) costs that row only, symlinks in
landing are refused, and landing file names cannot forge log lines."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

import tasks.data.ingest as ingest_module
from tasks.data.ingest import REASONS, EmptyLandingError, ingest, normalize_text

HEADER = "record_id,record_type,created_at,text"


def rec(record_id: str, text: str | None = None, **extra) -> str:
    text = f"Member called about denied claim {record_id}." if text is None else text
    return json.dumps(
        {"record_id": record_id, "record_type": "claim_note", "created_at": "2026-01-14", "text": text, **extra},
        ensure_ascii=False,
    )


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    landing = tmp_path / "landing"
    (landing / "2026-01").mkdir(parents=True)
    return {"landing_dir": landing, "staging_dir": tmp_path / "staging", "quarantine_dir": tmp_path / "q"}


def month(dirs: dict[str, Path]) -> Path:
    return dirs["landing_dir"] / "2026-01"


def run(dirs: dict[str, Path], **kw) -> tuple[dict, list[dict], list[dict]]:
    kw.setdefault("max_quarantine_share", 1.0)
    result = ingest(**dirs, **kw)
    assert result["rows_in"] == result["rows_valid"] + result["rows_quarantined"] + result["duplicates_removed"]
    assert json.loads(json.dumps(result)) == result
    staged = [json.loads(x) for x in Path(result["staged_path"]).read_text(encoding="utf-8").splitlines()]
    quarantined = [json.loads(x) for x in Path(result["quarantine_path"]).read_text(encoding="utf-8").splitlines()]
    return result, staged, quarantined


def outputs_text(result: dict) -> str:
    return "".join(
        Path(result[k]).read_text(encoding="utf-8", errors="replace")
        for k in ("staged_path", "quarantine_path", "duplicates_path")
    )


# ---------------------------------------------------------------------------
# Finding 3: invisible characters

# Format characters (Unicode category Cf) and other default-ignorable code points: all invisible.
INVISIBLE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202e",
    "\u202c",
    "\u2066",
    "\u2069",
    "\u00ad",
    "\u2060",
    "\ufeff",
    "\u180e",
    "\U000e0041",
    "\u034f",
    "\ufe0f",
    "\u3164",
]
# Spaces and separators that are not U+0020 (NFKC leaves some of them alone).
ODD_SPACES = ["\u00a0", "\u2002", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000", "\u2028", "\u2029", "\u1680"]


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_normalize_text_removes_invisible_characters(char):
    assert normalize_text(f"ID M{char}BR-1234{char}5678 ok") == "ID MBR-12345678 ok"


@pytest.mark.parametrize("char", ODD_SPACES, ids=lambda c: f"U+{ord(c):04X}")
def test_normalize_text_turns_odd_spaces_into_one_space(char):
    assert normalize_text(f"SSN{char}219-09-9999{char} {char}ok") == "SSN 219-09-9999 ok"


def test_ingest_counts_invisible_characters_and_rows(dirs):
    (month(dirs) / "a.jsonl").write_text(
        "\n".join(
            [
                rec("R-1", text="Member M\u200bBR-12345678 called about\u202e a claim."),  # 2 removed
                rec("R-2", text="No hidden characters in this one."),
                rec(
                    "R\u2060-3", text="Soft\u00adhyphen and\u00a0a no-break space."
                ),  # 2 removed (one in the id), 1 space
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result, staged, _ = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-2", "R-3"]
    assert staged[0]["text"] == "Member MBR-12345678 called about a claim."
    assert staged[2]["text"] == "Softhyphen and a no-break space."
    assert (result["invisible_chars_removed"], result["rows_with_invisible_chars"]) == (4, 2)
    assert result["odd_spaces_replaced"] == 1


# ---------------------------------------------------------------------------
# Finding 4: hostile rows

DEEP = 200_000


def test_deep_json_huge_int_and_overlong_line_cost_one_row_each(dirs):
    big_text = "x" * (40 * 1024 * 1024)
    lines = [
        rec("R-1"),
        '{"record_id": "R-D", "record_type": "claim_note", "text": "deep", "x": ' + "[" * DEEP + "]" * DEEP + "}",
        '{"record_id": "R-I", "record_type": "claim_note", "text": "a huge number", "n": ' + "9" * 5000 + "}",
        rec("R-L", text=big_text),  # 40 MB on one line
        '{"record_id": "R-E", "record_type": "claim_note", "text": "nested", "x": '
        + '{"a": ' * 100
        + "1"
        + "}" * 100
        + "}",
        rec("R-2"),
    ]
    path = month(dirs) / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    del big_text, lines
    tracemalloc.start()
    try:
        result, staged, quarantined = run(dirs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r["record_id"] for r in staged] == ["R-1", "R-2"]
    assert [(q["source_file"], q["line"], q["reason"]) for q in quarantined] == [
        ("2026-01/hostile.jsonl", 2, "too_deep"),
        ("2026-01/hostile.jsonl", 3, "number_too_large"),
        ("2026-01/hostile.jsonl", 4, "line_too_long"),
        ("2026-01/hostile.jsonl", 5, "too_deep"),
    ]
    assert result["quarantine_reasons"] == {"line_too_long": 1, "number_too_large": 1, "too_deep": 2}
    assert {"line_too_long", "too_deep", "number_too_large"} <= set(REASONS)
    # The over-long line was never held whole: memory stays far below its 40 MB.
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    long_q = quarantined[2]
    assert len(long_q["raw"]) <= 4096 and long_q["raw"].startswith('{"record_id": "R-L"')
    assert "1048576" in long_q["message"] and "first" in long_q["message"]  # says the raw is a prefix
    assert "R-L" not in long_q["message"] and "x" * 10 not in long_q["message"]


def test_line_cap_is_exact_and_configurable(dirs):
    fits = rec("R-1", text="y" * 40)
    body = fits.encode()
    too_long = rec("R-2", text="y" * 41)
    assert len(too_long.encode()) == len(body) + 1
    (month(dirs) / "a.jsonl").write_bytes(body + b"\r\n" + too_long.encode() + b"\n" + rec("R-3").encode())
    _result, staged, quarantined = run(dirs, max_line_bytes=len(body))
    assert [r["record_id"] for r in staged] == ["R-1", "R-3"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(2, "line_too_long")]
    with pytest.raises(ValueError, match="max_line_bytes"):
        ingest(**dirs, max_line_bytes=0)


def test_overlong_last_line_without_line_break(dirs):
    (month(dirs) / "a.jsonl").write_text(rec("R-1") + "\n" + rec("R-2", text="z" * 5000))
    _result, staged, quarantined = run(dirs, max_line_bytes=1000)
    assert [r["record_id"] for r in staged] == ["R-1"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(2, "line_too_long")]


def test_csv_overlong_line_and_huge_field_cost_their_rows(dirs):
    (month(dirs) / "a.csv").write_text(
        f"{HEADER}\n"
        "R-1,claim_note,2026-01-14,a good csv row\n"
        f'R-2,claim_note,2026-01-14,"{"w" * 300_000}"\n'  # over the CSV field limit, under the line cap
        f"R-3,claim_note,2026-01-14,{'v' * 3_000_000}\n"  # over the line cap
        "R-4,claim_note,2026-01-14,another good row\n"
    )
    _result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1", "R-4"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(3, "malformed_csv"), (4, "line_too_long")]
    assert "field limit" in quarantined[0]["message"]
    assert all(len(q["raw"]) <= 300_100 for q in quarantined)


def test_csv_overlong_header_quarantines_the_file(dirs):
    (month(dirs) / "a.csv").write_text(HEADER + "," + "h" * 2000 + "\nR-1,claim_note,2026-01-14,a good csv row\n")
    (month(dirs) / "b.jsonl").write_text(rec("R-9") + "\n")
    _result, staged, quarantined = run(dirs, max_line_bytes=1000)
    assert [r["record_id"] for r in staged] == ["R-9"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(1, "bad_header"), (2, "bad_header")]


# ---------------------------------------------------------------------------
# Finding 5: symlinks and file names

SECRET = "TOP-SECRET-CONTENT do not ingest"


def _secret_outside(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    secret = outside / "secret.jsonl"
    secret.write_text(rec("S-1", text=SECRET) + "\nnot json " + SECRET + "\n")
    (outside / "dir" / "more.jsonl").write_text(rec("S-2", text=SECRET) + "\n")
    return secret, outside / "dir"


def test_symlinks_are_refused_by_default(dirs, tmp_path):
    secret, secret_dir = _secret_outside(tmp_path)
    (month(dirs) / "a.jsonl").write_text(rec("R-1") + "\n")
    (month(dirs) / "link.jsonl").symlink_to(secret)
    (month(dirs) / "linkdir").symlink_to(secret_dir, target_is_directory=True)
    (month(dirs) / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    result, staged, quarantined = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"] and quarantined == []
    assert SECRET not in outputs_text(result) and "S-1" not in outputs_text(result)
    assert result["files_refused"] == 3 and result["files"] == 1
    assert sorted(n for n in result["notes"] if n.startswith("refused")) == [
        "refused 2026-01/dangling.csv: a symbolic link (data.follow_symlinks is 'never')",
        "refused 2026-01/link.jsonl: a symbolic link (data.follow_symlinks is 'never')",
        "refused 2026-01/linkdir: a symbolic link to a directory (never followed)",
    ]


def test_symlinks_inside_landing_can_be_allowed(dirs, tmp_path):
    secret, _secret_dir = _secret_outside(tmp_path)
    shared = dirs["landing_dir"] / "shared"
    shared.mkdir()
    (shared / "real.jsonl").write_text(rec("R-2") + "\n")
    (month(dirs) / "a.jsonl").write_text(rec("R-1") + "\n")
    (month(dirs) / "inside.jsonl").symlink_to(Path("..") / "shared" / "real.jsonl")  # relative, resolves inside
    (month(dirs) / "outside.jsonl").symlink_to(secret)
    (month(dirs) / "sneaky.jsonl").symlink_to(Path("..") / ".." / "outside" / "secret.jsonl")
    (month(dirs) / "linkdir").symlink_to(shared, target_is_directory=True)
    (month(dirs) / "loop.jsonl").symlink_to("loop.jsonl")
    result, staged, _ = run(dirs, partition="2026-01", follow_symlinks="inside")
    assert [(r["record_id"], r["source_file"]) for r in staged] == [
        ("R-1", "2026-01/a.jsonl"),
        ("R-2", "2026-01/inside.jsonl"),
    ]
    assert SECRET not in outputs_text(result)
    assert result["files_refused"] == 4
    refused = sorted(n for n in result["notes"] if n.startswith("refused"))
    assert refused == [
        "refused 2026-01/linkdir: a symbolic link to a directory (never followed)",
        "refused 2026-01/loop.jsonl: a symbolic link that does not resolve to a file inside landing",
        "refused 2026-01/outside.jsonl: a symbolic link that does not resolve to a file inside landing",
        "refused 2026-01/sneaky.jsonl: a symbolic link that does not resolve to a file inside landing",
    ]
    with pytest.raises(ValueError, match="follow_symlinks"):
        ingest(**dirs, follow_symlinks="always")


def test_a_symlinked_month_folder_is_not_entered(dirs, tmp_path):
    _, secret_dir = _secret_outside(tmp_path)
    (dirs["landing_dir"] / "2026-02").symlink_to(secret_dir, target_is_directory=True)
    with pytest.raises(EmptyLandingError, match="1 symbolic link"):
        ingest(**dirs, partition="2026-02")
    (month(dirs) / "a.jsonl").write_text(rec("R-1") + "\n")
    result, staged, _ = run(dirs)  # all of landing: the linked month is refused, not read
    assert [r["record_id"] for r in staged] == ["R-1"] and SECRET not in outputs_text(result)
    assert result["notes"] == ["refused 2026-02: a symbolic link to a directory (never followed)"]


def test_a_file_swapped_for_a_symlink_after_listing_is_not_read(dirs, tmp_path, monkeypatch):
    secret, _ = _secret_outside(tmp_path)
    (month(dirs) / "a.jsonl").write_text(rec("R-1") + "\n")
    swapped = month(dirs) / "b.jsonl"
    swapped.write_text(rec("R-2") + "\n")
    listed = ingest_module.landing_files

    def list_then_swap(*args, **kwargs):
        files = listed(*args, **kwargs)
        swapped.unlink()
        swapped.symlink_to(secret)  # the race: checked as a file, opened as a link
        return files

    monkeypatch.setattr(ingest_module, "landing_files", list_then_swap)
    result, staged, _ = run(dirs)
    assert [r["record_id"] for r in staged] == ["R-1"]
    assert SECRET not in outputs_text(result)
    assert result["files_refused"] == 1
    assert "refused 2026-01/b.jsonl: a symbolic link (data.follow_symlinks is 'never')" in result["notes"]


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(dirs, caplog):
    forged = "x.jsonl\nINFO tasks.data.ingest: ingest done: 0 rows quarantined\n"
    name = f"evil{forged}.jsonl"
    (month(dirs) / name).write_text(rec("R-1") + "\n")
    (month(dirs) / f"empty\r{forged}.csv").write_bytes(b"")
    (month(dirs) / f"link\n{forged}.jsonl").symlink_to(month(dirs) / name)
    caplog.set_level(logging.DEBUG, logger="tasks.data.ingest")
    result, staged, _ = run(dirs)
    messages = [r.getMessage() for r in caplog.records if r.name == "tasks.data.ingest"]
    assert messages and not any(c in m for m in messages for c in "\n\r")
    assert any("evilx.jsonl\\nINFO tasks.data.ingest" in m for m in messages)
    assert not any(c in n for n in result["notes"] for c in "\n\r")
    assert staged[0]["source_file"] == f"2026-01/{name}"  # the data keeps the exact name (JSON escapes it)


def test_a_file_name_that_is_not_utf8_does_not_stop_the_ingest(dirs, caplog):
    raw_name = os.fsencode(str(month(dirs))) + b"/caf\xe9.jsonl"
    with open(raw_name, "wb") as fh:
        fh.write(rec("R-1").encode() + b"\nnot json\n")
    (month(dirs) / "b.jsonl").write_text(rec("R-2") + "\n")
    caplog.set_level(logging.INFO, logger="tasks.data.ingest")
    _result, staged, quarantined = run(dirs)
    # The undecodable byte is shown as \xe9 wherever the name is written: rows, quarantine, logs.
    assert [(r["record_id"], r["source_file"]) for r in staged] == [
        ("R-2", "2026-01/b.jsonl"),
        ("R-1", "2026-01/caf\\xe9.jsonl"),
    ]
    assert quarantined[0]["source_file"] == "2026-01/caf\\xe9.jsonl"
    assert any("caf\\xe9.jsonl" in r.getMessage() for r in caplog.records)
