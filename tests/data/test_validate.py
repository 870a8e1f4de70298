"""Validate: the versioned GX suite gates staged rows; saved results and errors never hold cell values."""

from __future__ import annotations

import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT, DataConfig, Paths
from tasks.data.validate import (
    OTHER_TYPE,
    ValidationFailed,
    build_profile,
    load_suite_spec,
    log_to_mlflow,
    safe_result,
    summarize_result,
    validate,
)

SUITE = REPO_ROOT / "include" / "gx" / "records_suite.json"
# PII-like markers planted in failing cells; none may reach any output.
PII_MARKERS = ("Zelda Quintero", "987-65-4321", "zelda.q@example.com")
PII = " ".join(PII_MARKERS)


def row(i: int, **over) -> dict:
    base = {
        "record_id": f"R-2026-01-{i:06d}",
        "record_type": DataConfig().record_types[i % 4],
        "created_at": "2026-01-14",
        "text": f"Member asked about claim status, note {i}.",
        "source_file": "2026-01/a.jsonl",
        "source_line": i + 1,
    }
    return base | over


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_no_pii(*texts: str) -> None:
    for text in texts:
        for marker in PII_MARKERS:
            assert marker not in text


def outputs(out_dir: Path) -> tuple[dict, str, str]:
    raw = (out_dir / "validation.json").read_text(encoding="utf-8")
    return json.loads(raw), raw, (out_dir / "validation.md").read_text(encoding="utf-8")


def by_label(report: dict) -> dict[str, dict]:
    return {f"{e['type']}({e['column']})": e for e in report["expectations"]}


def test_suite_file_severities_and_bounds_match_config():
    spec = load_suite_spec(SUITE)
    cfg = DataConfig()
    sev = {(e["type"], e["kwargs"].get("column")): e["meta"]["severity"] for e in spec["expectations"]}
    assert sev[("expect_column_values_to_match_regex", "created_at")] == "warn"
    for column in ("record_id", "record_type", "created_at", "text"):
        assert sev[("expect_column_to_exist", column)] == "fail"
    for column in ("record_id", "record_type", "text"):
        assert sev[("expect_column_values_to_not_be_null", column)] == "fail"
    assert sev[("expect_column_values_to_be_unique", "record_id")] == "fail"
    kwargs = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in spec["expectations"]}
    assert kwargs[("expect_column_values_to_be_in_set", "record_type")]["value_set"] == cfg.record_types
    lengths = kwargs[("expect_column_value_lengths_to_be_between", "text")]
    assert (lengths["min_value"], lengths["max_value"]) == (cfg.min_text_chars, cfg.max_text_chars)
    assert cfg.gx_suite == SUITE.relative_to(REPO_ROOT).as_posix()


def test_clean_rows_pass(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", [row(i) for i in range(12)])
    result = validate(rows_path=rows, suite_path=SUITE, out_dir=tmp_path / "val")
    assert result["success"] is True
    assert result["failed_fail"] == 0 and result["failed_warn"] == 0 and result["warnings"] == []
    assert result["evaluated_expectations"] == len(load_suite_spec(SUITE)["expectations"])
    assert result["result_path"] == str(tmp_path / "val" / "validation.json")
    assert json.loads(json.dumps(result)) == result
    report, _, md = outputs(tmp_path / "val")
    assert report["success"] and report["all_passed"] and report["rows"] == 12
    assert all(e["success"] for e in report["expectations"])
    assert by_label(report)["expect_column_values_to_be_unique(record_id)"]["unexpected_count"] == 0
    assert "PASSED" in md and md.count("| pass |") == result["evaluated_expectations"]


def test_failing_fail_expectations_raise_after_saving_without_values(tmp_path):
    rows = [row(i) for i in range(10)]
    rows[3]["record_type"] = PII  # not in the allowed set
    rows[5]["record_id"] = rows[4]["record_id"] = PII  # duplicate id
    rows[6]["text"] = "tiny"  # under the minimum length
    rows[7]["text"] = PII * 200  # over max length
    rows[8]["created_at"] = PII  # warn only
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValidationFailed) as err:
        validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val")

    message = str(err.value)
    assert "expect_column_values_to_be_in_set(record_type)" in message
    assert "expect_column_values_to_be_unique(record_id)" in message
    assert "expect_column_value_lengths_to_be_between(text)" in message
    assert "match_regex" not in message  # a warn is not a failure
    assert str(tmp_path / "val" / "validation.json") in message
    assert err.value.result_path == tmp_path / "val" / "validation.json"

    report, raw, md = outputs(tmp_path / "val")
    assert report["success"] is False and report["failed_fail"] == 3 and report["failed_warn"] == 1
    checks = by_label(report)
    assert checks["expect_column_values_to_be_unique(record_id)"]["unexpected_count"] == 2
    assert checks["expect_column_values_to_be_in_set(record_type)"]["unexpected_count"] == 1
    assert checks["expect_column_value_lengths_to_be_between(text)"]["unexpected_count"] == 2
    assert checks["expect_column_values_to_match_regex(created_at)"]["severity"] == "warn"
    assert "FAILED" in md and "| FAIL |" in md
    assert_no_pii(raw, md, message)
    assert "partial_unexpected" not in raw and "unexpected_list" not in raw


def test_warn_failure_does_not_raise(tmp_path, caplog):
    rows = [row(i) for i in range(6)]
    rows[2]["created_at"] = f"14/01/2026 {PII}"
    rows[3]["created_at"] = None
    path = write_rows(tmp_path / "rows.jsonl", rows)
    caplog.set_level(logging.INFO)
    result = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val")
    assert result["success"] is True and result["failed_fail"] == 0 and result["failed_warn"] == 2
    assert sorted(result["warnings"]) == [
        "expect_column_values_to_match_regex(created_at)",
        "expect_column_values_to_not_be_null(created_at)",
    ]
    report, raw, md = outputs(tmp_path / "val")
    assert report["success"] is True and report["all_passed"] is False
    assert by_label(report)["expect_column_values_to_match_regex(created_at)"]["unexpected_count"] == 1
    assert "| warn |" in md
    assert_no_pii(raw, md, json.dumps(result), caplog.text)
    # GX stays quiet: nothing from its loggers below WARNING reaches the task log
    assert not [r for r in caplog.records if r.name.startswith("great_expectations") and r.levelno < logging.WARNING]


def test_missing_columns_and_empty_rows_fail(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [{"record_id": "R-1", "text": "no type or date here"}])
    with pytest.raises(ValidationFailed) as err:
        validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "a")
    assert "expect_column_to_exist(record_type)" in str(err.value)
    assert "expect_column_to_exist(created_at)" in str(err.value)

    empty = write_rows(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValidationFailed) as err:
        validate(rows_path=empty, suite_path=SUITE, out_dir=tmp_path / "b")
    assert "expect_table_row_count_to_be_between" in str(err.value)
    assert (tmp_path / "b" / "validation.json").exists()


def test_suite_comes_from_the_json_file(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "name": "tiny",
                "expectations": [
                    {
                        "type": "expect_column_values_to_be_in_set",
                        "kwargs": {"column": "record_type", "value_set": ["memo"]},
                        "meta": {"severity": "warn"},
                    },
                ],
            }
        )
    )
    path = write_rows(tmp_path / "rows.jsonl", [row(i) for i in range(3)])
    result = validate(rows_path=path, suite_path=suite, out_dir=tmp_path / "val")
    assert result["evaluated_expectations"] == 1 and result["failed_warn"] == 1
    # flip the same expectation to "fail" in the file: now it stops the run
    spec = json.loads(suite.read_text())
    spec["expectations"][0]["meta"]["severity"] = "fail"
    suite.write_text(json.dumps(spec))
    with pytest.raises(ValidationFailed):
        validate(rows_path=path, suite_path=suite, out_dir=tmp_path / "val")


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"name": "s", "expectations": []}, "non-empty"),
        (
            {"name": "s", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "x"}}]},
            "meta.severity",
        ),
        (
            {
                "name": "s",
                "expectations": [
                    {"type": "expect_column_to_exist", "kwargs": {"column": "x"}, "meta": {"severity": "error"}}
                ],
            },
            "#1",
        ),
    ],
)
def test_bad_suite_file_is_reported(tmp_path, bad, needle):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=needle):
        load_suite_spec(suite)


def test_unknown_expectation_type_names_the_expectation(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "name": "s",
                "expectations": [
                    {"type": "expect_column_to_be_pretty", "kwargs": {"column": "x"}, "meta": {"severity": "fail"}}
                ],
            }
        )
    )
    path = write_rows(tmp_path / "rows.jsonl", [row(0)])
    with pytest.raises(ValueError, match=r"#1 \(expect_column_to_be_pretty\)"):
        validate(rows_path=path, suite_path=suite, out_dir=tmp_path / "val")


def test_missing_rows_file_says_run_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the ingest stage"):
        validate(rows_path=tmp_path / "nope.jsonl", suite_path=SUITE, out_dir=tmp_path / "val")


def test_summary_whitelists_counts_only():
    leaky = {
        "element_count": 3,
        "unexpected_count": 1,
        "unexpected_percent": 33.3,
        "missing_count": 0,
        "partial_unexpected_list": [PII],
        "partial_unexpected_counts": [{"value": PII, "count": 1}],
        "unexpected_list": [PII],
        "unexpected_index_list": [{"record_id": PII}],
        "observed_value": [PII],
        "details": {"value_counts": [{"value": PII}]},
    }
    exp = {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "record_type", "value_set": ["a"]},
        "meta": {"severity": "fail"},
    }
    info = {"raised_exception": True, "exception_message": f"bad value {PII}", "exception_traceback": PII}
    summary = summarize_result(exp, False, leaky, info)
    assert_no_pii(json.dumps(summary))
    assert summary["unexpected_count"] == 1 and summary["raised_exception"] is True
    assert "observed_value" not in summary


def test_import_is_cheap_and_cli_prints_json(tmp_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, tasks.data.validate; print('great_expectations' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"
    path = write_rows(tmp_path / "rows.jsonl", [row(i) for i in range(4)])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasks.data.validate",
            "--rows",
            str(path),
            "--suite",
            str(SUITE),
            "--out",
            str(tmp_path / "v"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["success"] is True
    assert "Calculating Metrics" not in out.stderr  # progress bars are off


# ---------------------------------------------------------------------------
# Drift against the previous dataset version, Data Docs, MLflow

FILLER = "Member asked whether the plan covers physical therapy after surgery and what the copay is. " * 60


def sample_rows(n: int, seed: int, *, lengths=(20, 400), types=None) -> list[dict]:
    """n rows whose text lengths are uniform in `lengths` and whose types are drawn from `types`."""
    rng = random.Random(seed)
    types = types or DataConfig().record_types
    return [row(i, record_type=rng.choice(types), text=FILLER[: rng.randint(*lengths)]) for i in range(n)]


def previous_version(rows: list[dict], data: DataConfig | None = None) -> dict:
    """What tasks.data.version.previous_profile returns for a version built from `rows`."""
    return {"rev": "1" * 40, "tags": ["run-previous"], "profile": build_profile(rows, data or DataConfig())}


def drift_checks(report: dict) -> dict[str, dict]:
    return {
        e["column"]: e for e in report["expectations"] if e["type"] == "expect_column_kl_divergence_to_be_less_than"
    }


def test_profile_is_counts_only_and_deterministic():
    rows = sample_rows(50, 1)
    rows[0]["record_type"] = PII
    profile = build_profile(rows, DataConfig())
    assert profile == build_profile([dict(r) for r in rows], DataConfig())  # no timestamps, no randomness
    assert profile["rows"] == 50
    tc, rt = profile["text_chars"], profile["record_type"]
    assert sum(tc["counts"]) + tc["below"] + tc["above"] + tc["missing"] == 50
    assert len(tc["bins"]) == DataConfig().drift_length_bins + 2 and tc["bins"][0] == 0
    assert tc["bins"][-1] == DataConfig().max_text_chars
    assert rt["values"] == [*DataConfig().record_types, OTHER_TYPE] and sum(rt["counts"]) == 50
    assert rt["counts"][-1] == 1  # the PII "type" is counted as other, never named
    assert_no_pii(json.dumps(profile))


def test_drift_skipped_without_previous_version(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", sample_rows(40, 1))
    result = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val", previous=None)
    assert result["drift"]["status"] == "skipped" and result["drift"]["reason"] == "no previous version"
    report, _, md = outputs(tmp_path / "val")
    assert drift_checks(report) == {}
    assert result["evaluated_expectations"] == len(load_suite_spec(SUITE)["expectations"])
    assert "skipped: no previous version" in md
    saved = json.loads((tmp_path / "val" / "profile.json").read_text())
    assert saved == build_profile(sample_rows(40, 1), DataConfig()) and result["profile_path"].endswith("profile.json")


def test_no_drift_on_same_distribution(tmp_path):
    previous = previous_version(sample_rows(400, seed=1))
    path = write_rows(tmp_path / "rows.jsonl", sample_rows(400, seed=2))  # a new sample, same distribution
    result = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val", previous=previous)
    drift = result["drift"]
    assert drift["status"] == "passed" and drift["previous_rev"] == "1" * 40 and drift["previous_rows"] == 400
    assert 0 <= drift["text_chars_kl"] < DataConfig().drift_max_kl
    assert 0 <= drift["record_type_kl"] < DataConfig().drift_max_kl
    assert result["failed_warn"] == 0
    report, _, _ = outputs(tmp_path / "val")
    assert set(drift_checks(report)) == {"text_chars", "record_type_group"}
    assert result["evaluated_expectations"] == len(load_suite_spec(SUITE)["expectations"]) + 2
    # identical rows: only the weight held out for empty bins separates them
    path = write_rows(tmp_path / "same.jsonl", sample_rows(400, seed=1))
    same = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "same", previous=previous)["drift"]
    assert same["text_chars_kl"] < 0.01 and same["record_type_kl"] < 0.01


def test_shifted_lengths_warn_and_are_reported(tmp_path, caplog):
    previous = previous_version(sample_rows(300, seed=1))
    path = write_rows(tmp_path / "rows.jsonl", sample_rows(300, seed=2, lengths=(1200, 3000)))
    caplog.set_level(logging.INFO)
    result = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val", previous=previous)  # no raise
    drift = result["drift"]
    assert drift["status"] == "drifted" and drift["severity"] == "warn"
    assert drift["text_chars_kl"] > 1.0 and drift["record_type_kl"] < DataConfig().drift_max_kl
    assert result["success"] is True and result["failed_warn"] == 1
    assert result["warnings"] == ["expect_column_kl_divergence_to_be_less_than(text_chars)"]
    report, _, md = outputs(tmp_path / "val")
    assert drift_checks(report)["text_chars"]["success"] is False
    assert drift_checks(report)["text_chars"]["kwargs"] == {"threshold": DataConfig().drift_max_kl}
    assert "drifted vs 111111111111" in md and "drifted" in caplog.text


def test_record_type_mix_shift_fails_under_fail_severity(tmp_path):
    data = DataConfig(drift_severity="fail", drift_max_kl=0.2)
    previous = previous_version(sample_rows(300, seed=1), data)
    path = write_rows(tmp_path / "rows.jsonl", sample_rows(300, seed=2, types=["claim_note"]))
    with pytest.raises(ValidationFailed) as err:
        validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val", previous=previous, data=data)
    assert err.value.failed == ["expect_column_kl_divergence_to_be_less_than(record_type_group)"]
    report, _, _ = outputs(tmp_path / "val")
    assert report["drift"]["status"] == "drifted" and report["drift"]["record_type_kl"] > 1.0
    assert report["drift"]["text_chars_kl"] < 0.2 and report["failed_fail"] == 1
    # the same shift under the default severity is a warning only
    result = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "warn", previous=previous)
    assert result["drift"]["status"] == "drifted" and result["failed_warn"] == 1


def test_unusable_previous_profile_skips_drift(tmp_path):
    previous = {"rev": "2" * 40, "tags": [], "profile": {"profile_version": 99}}
    path = write_rows(tmp_path / "rows.jsonl", sample_rows(20, 1))
    drift = validate(rows_path=path, suite_path=SUITE, out_dir=tmp_path / "val", previous=previous)["drift"]
    assert drift["status"] == "skipped" and "profile_version 99" in drift["reason"]


def test_data_docs_saved_without_cell_values(tmp_path):
    rows = sample_rows(60, 3)
    rows[3]["record_type"] = PII  # outside the allowed set: would be listed by GX's categorical KL partition
    rows[5]["record_id"] = rows[4]["record_id"] = PII  # duplicate id
    rows[6]["text"] = PII * 200  # over the length limit
    rows[7]["created_at"] = PII  # warn only
    rows[8]["text"] = "Zelda"  # under the minimum length
    path = write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "val"
    with pytest.raises(ValidationFailed) as err:
        validate(
            rows_path=path,
            suite_path=SUITE,
            out_dir=out,
            previous=previous_version(sample_rows(60, 1)),
            run_name="manual__docs",
        )
    index = out / "data_docs" / "index.html"
    pages = sorted((out / "data_docs" / "validations").rglob("*.html"))
    assert index.is_file() and len(pages) == 1 and "manual__docs" in str(pages[0])
    page = pages[0].read_text(encoding="utf-8")
    assert "record_type_group" in page and "text_chars" in page and "KL Divergence" in page
    assert OTHER_TYPE in page  # the categorical partition is rendered, with the PII type grouped as other
    saved = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".html", ".json", ".md", ".js", ".css"}]
    assert len(saved) >= 5
    for file in saved:
        text = file.read_text(encoding="utf-8", errors="replace")
        assert_no_pii(text)
        assert "Zelda" not in text, file
    for file in [index, *pages]:  # opened inside the customer network, a page must not load from the internet
        html = file.read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]*src=[\"']https?://|<link[^>]*href=[\"']https?://", html), file
        assert "Content-Security-Policy" in html
    assert_no_pii(str(err.value))
    assert json.loads((out / "validation.json").read_text())["data_docs_path"] == str(index)


def test_safe_result_drops_raw_values():
    leaky_kl = {
        "observed_value": 0.4,
        "details": {
            "observed_partition": {"values": ["claim_note", PII], "weights": [0.5, 0.5]},
            "expected_partition": {"values": ["claim_note", PII], "weights": [0.99, 0.01]},
        },
    }
    kept = safe_result(leaky_kl, {"claim_note", OTHER_TYPE})
    assert kept == {"observed_value": 0.4}
    clean_kl = {
        "observed_value": 0.1,
        "details": {
            "observed_partition": {"bins": [0, 10, 20], "weights": [0.5, 0.5], "tail_weights": [0, 0]},
            "expected_partition": {"bins": [0, 10, 20], "weights": [0.4, 0.6], "tail_weights": [0.005, 0.005]},
        },
    }
    assert safe_result(clean_kl, set())["details"]["observed_partition"]["bins"] == [0.0, 10.0, 20.0]
    assert safe_result({"unexpected_count": 1, "partial_unexpected_list": [PII], "observed_value": PII}, set()) == {
        "unexpected_count": 1
    }


def test_log_to_mlflow_metrics_and_data_docs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tasks.common.tracking import pipeline_mlflow_run

    paths = Paths(tmp_path / "home")
    # set (not del): mlflow.set_tracking_uri exports the variable, and monkeypatch then removes it again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{paths.mlflow / 'mlflow.db'}")
    rows = sample_rows(200, seed=2, lengths=(1200, 3000))
    path = write_rows(tmp_path / "rows.jsonl", rows)
    out = paths.run_dir("manual__ml") / "validation"
    validate(rows_path=path, suite_path=SUITE, out_dir=out, previous=previous_version(sample_rows(200, 1)))
    run_id = log_to_mlflow(paths, "manual__ml", out)
    assert run_id == pipeline_mlflow_run(paths, "manual__ml")  # the pipeline run's one MLflow run
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri)
    metrics = client.get_run(run_id).data.metrics
    expected = len(load_suite_spec(SUITE)["expectations"]) + 2
    assert metrics["validation_expectations_evaluated"] == expected
    assert metrics["validation_expectations_passed"] == expected - 1
    assert metrics["validation_failed_warn"] == 1 and metrics["validation_failed_fail"] == 0
    assert metrics["drift_detected"] == 1 and metrics["drift_text_chars_kl"] > 1.0
    assert {a.path for a in client.list_artifacts(run_id, "validation")} >= {
        "validation/validation.json",
        "validation/validation.md",
        "validation/profile.json",
        "validation/data_docs",
    }
    assert "validation/data_docs/index.html" in {a.path for a in client.list_artifacts(run_id, "validation/data_docs")}
    assert client.get_run(run_id).data.params == {}  # counts go to metrics; nothing from the rows becomes a param


def test_stage_glue_reads_the_registry_baseline_and_commits_the_profile(tmp_path, monkeypatch):
    """stage_validate takes its baseline from the data registry; stage_version commits the new profile."""
    from mlflow import MlflowClient

    from tasks.config import load_config, save_resolved
    from tasks.data.version import PROFILE_PATH
    from tasks.stages import privacy_finetune

    monkeypatch.setenv("PFT_HOME", str(tmp_path / "home"))
    paths = Paths()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{paths.mlflow / 'mlflow.db'}")  # undone after the test

    def run(run_id: str, rows: list[dict]) -> tuple[dict, dict]:
        save_resolved(load_config(), paths.run_dir(run_id))
        staged = write_rows(paths.staging_dir(run_id) / "rows.jsonl", rows)
        validated = privacy_finetune.stage_validate(run_id, {"staged_path": str(staged)})
        masked = write_rows(paths.run_dir(run_id) / "masked" / "train.jsonl", rows)
        return validated, privacy_finetune.stage_version(run_id, {"masked_path": str(masked)})

    first, v1 = run("manual__jan", sample_rows(200, 1))
    assert first["drift"]["status"] == "skipped"
    second, v2 = run("manual__feb", sample_rows(200, 2, lengths=(1200, 3000)))
    assert second["drift"]["status"] == "drifted" and second["drift"]["previous_rev"] == v1["dataset_rev"]
    assert v2["created"] is True
    committed = subprocess.run(
        ["git", "show", f"{v2['dataset_rev']}:{PROFILE_PATH}"],
        cwd=paths.datasets,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(committed) == json.loads(Path(second["profile_path"]).read_text())
    saved = json.loads((paths.run_dir("manual__feb") / "stages" / "validate.json").read_text())
    assert saved["drift"]["status"] == "drifted" and saved["data_docs_path"].endswith("data_docs/index.html")
    metrics = MlflowClient(tracking_uri=paths.mlflow_tracking_uri).get_run(second["mlflow_run_id"]).data.metrics
    assert metrics["drift_detected"] == 1 and metrics["validation_failed_warn"] == 1
