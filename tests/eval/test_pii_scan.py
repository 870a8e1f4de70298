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
