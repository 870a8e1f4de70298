"""tasks.eval.pii_scan: raw PII values found anywhere outside the raw zone, by file and type, never printed."""

from __future__ import annotations

import json

from tasks.eval.pii_scan import Matcher, main, scan

VALUES = [("PERSON", "Olga Petrova"), ("EMAIL_ADDRESS", "olga.petrova@example.org"), ("US_SSN", "123-45-6789")]


def test_matcher_finds_values_inside_json_and_text():
    m = Matcher(VALUES)
    assert m.find('{"text": "Olga Petrova called"}') == {("PERSON", "Olga Petrova")}
    assert m.find("mail:olga.petrova@example.org, ssn 123-45-6789.") == {VALUES[1], VALUES[2]}
    assert m.find("Olga Petrov called; <PERSON_1a2b3c4d> wrote") == set()


def test_scan_ignores_the_raw_zone_and_names_files(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "landing" / "2026-01").mkdir(parents=True)
    (home / "landing" / "2026-01" / "records.jsonl").write_text('{"text": "Olga Petrova"}\n')  # raw zone: expected
    (home / "runs" / "r1").mkdir(parents=True)
    (home / "runs" / "r1" / "report.json").write_text('{"rows": 3}')
    assert scan(home, VALUES)["hits"] == {}
    (home / "mlflow").mkdir()
    (home / "mlflow" / "mlflow.db").write_bytes(b"SQLite format 3\x00 ... ssn 123-45-6789 ...")
    result = scan(home, VALUES)
    assert result["hits"] == {"mlflow/mlflow.db": {"US_SSN": 1}} and result["values_found"] == 1
    key = tmp_path / "key.json"
    key.write_text(json.dumps([{"type": t, "value": v} for t, v in VALUES]))
    assert main(["--home", str(home), "--values", str(key)]) == 1
    out = capsys.readouterr()
    assert "123-45-6789" not in out.out + out.err  # where and what type, never the value


def test_values_that_machine_text_holds_by_chance_are_left_to_the_masked_records_check(tmp_path):
    """A 5-digit ZIP code is also a port or a process id, a date of service also a log's timestamp: the scan of
    logs and databases skips them (the e2e found "27639" and "2026-…" there by chance); record text keeps all."""
    from tasks.eval.pii_scan import chance_prone, load_values

    key = tmp_path / "key.json"
    rows = [("ZIP_CODE", "27639"), ("SERVICE_DATE", "2026-12-07"), ("ZIP_CODE", "SW1A 1AA"), ("PERSON", "Ana Lima")]
    rows += [("DATE_OF_BIRTH", "1957-03-14"), ("MEMBER_ID", "MBR-48213377")]
    key.write_text(json.dumps([{"type": t, "value": v, "record_id": "R-1"} for t, v in rows]))
    assert [v for _, v in load_values(key)] == ["SW1A 1AA", "Ana Lima", "1957-03-14", "MBR-48213377"]
    assert len(load_values(key, keep_chance_prone=True)) == 6
    assert chance_prone("ZIP_CODE", "27639") and not chance_prone("ACCOUNT_NUMBER", "4820113377")
