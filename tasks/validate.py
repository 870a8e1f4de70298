"""Validate: run the versioned Great Expectations suite on the staged rows and gate the run.

The suite lives in `include/gx/records_suite.json` (GX 1.x suite JSON); each
expectation's `meta.severity` is "fail" (stops the run) or "warn" (reported
only). GX results quote cell values (`partial_unexpected_list` and friends), and
staged rows hold PII, so the saved summary is built from a whitelist of counts:
no cell value reaches validation.json, validation.md, the return dict, logs or
the exception. Great Expectations is imported inside the functions that need it
(it takes seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasks.jsonl import read_objects

log = logging.getLogger(__name__)

SEVERITIES = ("fail", "warn")
# GX 1.x carries its own severity on each expectation; keep it in step with meta.severity.
_GX_SEVERITY = {"fail": "critical", "warn": "warning"}
# Only these keys of a GX expectation result are copied: counts and percentages, never values.
_RESULT_COUNT_KEYS = (
    "element_count",
    "unexpected_count",
    "unexpected_percent",
    "missing_count",
    "missing_percent",
)
# Summary format without examples of failing values (the SUMMARY default lists 20 of them).
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0, "include_unexpected_rows": False}


class ValidationFailed(Exception):
    """A "fail"-severity expectation did not pass; the summary is saved at `result_path`."""

    def __init__(self, message: str, *, result_path: Path, failed: list[str]):
        super().__init__(message)
        self.result_path = result_path
        self.failed = failed


# ---------------------------------------------------------------------------
# Inputs (no GX needed)


def load_suite_spec(suite_path: Path) -> dict[str, Any]:
    """Read and check the suite JSON; errors name the file and the expectation."""
    suite_path = Path(suite_path)
    try:
        spec = json.loads(suite_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"GX suite not found: {suite_path} (restore include/gx/records_suite.json)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"GX suite {suite_path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"GX suite {suite_path} must be a JSON object with a string 'name'")
    expectations = spec.get("expectations")
    if not isinstance(expectations, list) or not expectations:
        raise ValueError(f"GX suite {suite_path} must hold a non-empty 'expectations' list")
    for i, exp in enumerate(expectations, start=1):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise ValueError(f"GX suite {suite_path}: expectation #{i} needs a string 'type'")
        if not isinstance(exp.get("kwargs", {}), dict):
            raise ValueError(f"GX suite {suite_path}: expectation #{i} ({exp['type']}) 'kwargs' must be an object")
        severity = (exp.get("meta") or {}).get("severity")
        if severity not in SEVERITIES:
            raise ValueError(
                f"GX suite {suite_path}: expectation #{i} ({exp['type']}) has meta.severity {severity!r}; "
                f"set it to one of {SEVERITIES}"
            )
    return spec


def read_rows(rows_path: Path) -> list[dict[str, Any]]:
    """Staged rows as dicts; a broken line is reported by file and line number only."""
    return list(read_objects(rows_path, hint="; run the ingest stage first to (re)build it"))


# ---------------------------------------------------------------------------
# Great Expectations


def _quiet_gx_loggers() -> None:
    # Some GX modules pin their own logger to INFO at import, so set every GX logger, not only the parent.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if "great_expectations" in name and isinstance(logger, logging.Logger):
            if logger.level == logging.NOTSET or logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)


def _import_gx():
    from tasks import offline

    offline.apply()  # analytics/telemetry off before GX is imported
    _quiet_gx_loggers()
    import great_expectations as gx

    _quiet_gx_loggers()
    return gx


def run_suite(rows: list[dict[str, Any]], spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the suite on the rows with an ephemeral GX context.

    Returns (one summary per expectation in suite order, GX statistics), holding counts only.
    """
    gx = _import_gx()
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)

    suite = gx.ExpectationSuite(name=spec["name"])
    for i, exp in enumerate(spec["expectations"], start=1):
        meta = dict(exp.get("meta") or {})
        try:
            expectation = ExpectationConfiguration(
                type=exp["type"], kwargs=dict(exp.get("kwargs") or {}), meta=meta,
                severity=_GX_SEVERITY[meta["severity"]],
            ).to_domain_obj()
        except Exception as exc:  # GX raises several types for an unknown type or bad kwargs
            raise ValueError(
                f"GX suite '{spec['name']}': expectation #{i} ({exp['type']}) is not a valid GX 1.x expectation: {exc}"
            ) from None
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    position = {str(e.id): i for i, e in enumerate(suite.expectations)}

    batch_definition = (
        context.data_sources.add_pandas("staged")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec['name']}_staged", data=batch_definition, suite=suite)
    )
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)

    summaries: list[dict[str, Any] | None] = [None] * len(spec["expectations"])
    for res in result.results:
        i = position[str(res.expectation_config.id)]
        summaries[i] = summarize_result(spec["expectations"][i], res.success, res.result, res.exception_info)
    stats = dict(result.statistics)
    return [s for s in summaries if s is not None], stats


def summarize_result(
    exp: dict[str, Any], success: bool | None, result: dict[str, Any] | None, exception_info: Any
) -> dict[str, Any]:
    """One expectation's outcome from a whitelist of numeric fields (GX results may quote cell values)."""
    kwargs = dict(exp.get("kwargs") or {})
    summary: dict[str, Any] = {
        "type": exp["type"],
        "column": kwargs.pop("column", None),
        "severity": exp["meta"]["severity"],
        "success": bool(success),
        "kwargs": kwargs,  # from the versioned suite file, not from the data
    }
    result = result or {}
    for key in _RESULT_COUNT_KEYS:
        if isinstance(result.get(key), (int, float)) and not isinstance(result.get(key), bool):
            summary[key] = result[key]
    observed = result.get("observed_value")
    # Row counts and the like are numbers; anything else (value lists, strings) may be data.
    if isinstance(observed, (int, float)) and not isinstance(observed, bool):
        summary["observed_value"] = observed
    raised = False
    if isinstance(exception_info, dict):
        raised = bool(exception_info.get("raised_exception")) or any(
            isinstance(v, dict) and v.get("raised_exception") for v in exception_info.values()
        )
    if raised:
        # The GX message may quote values, so keep it out; rerun on the rows locally to see it.
        summary["raised_exception"] = True
    return summary


# ---------------------------------------------------------------------------
# Reports


def label(summary: dict[str, Any]) -> str:
    return f"{summary['type']}({summary['column']})" if summary.get("column") else summary["type"]


def render_markdown(report: dict[str, Any]) -> str:
    verdict = "PASSED" if report["success"] else "FAILED"
    lines = [
        f"# Data validation: {report['suite']}",
        "",
        f"**{verdict}** — {report['rows']} rows, {report['evaluated_expectations']} expectations, "
        f"{report['failed_fail']} failed (fail), {report['failed_warn']} failed (warn).",
        "",
        "| # | expectation | column | severity | result | unexpected |",
        "|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(report["expectations"], start=1):
        outcome = "pass" if s["success"] else ("FAIL" if s["severity"] == "fail" else "warn")
        if s.get("raised_exception"):
            outcome += " (error)"
        if "unexpected_count" in s:
            unexpected = f"{s['unexpected_count']} ({s.get('unexpected_percent') or 0:.2f}%)"
        elif "observed_value" in s:
            unexpected = f"observed {s['observed_value']}"
        else:
            unexpected = "—"
        lines.append(f"| {i} | {s['type']} | {s['column'] or '—'} | {s['severity']} | {outcome} | {unexpected} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as fh:
        fh.write(text)
    os.replace(fh.name, path)


# ---------------------------------------------------------------------------
# The stage


def validate(*, rows_path: Path, suite_path: Path, out_dir: Path) -> dict[str, Any]:
    """Run the suite on the staged rows, save validation.json/.md, raise ValidationFailed on a "fail" failure."""
    rows_path, suite_path, out_dir = Path(rows_path), Path(suite_path), Path(out_dir)
    spec = load_suite_spec(suite_path)
    rows = read_rows(rows_path)
    summaries, stats = run_suite(rows, spec)

    failed_fail = [s for s in summaries if not s["success"] and s["severity"] == "fail"]
    failed_warn = [s for s in summaries if not s["success"] and s["severity"] == "warn"]
    report = {
        "suite": spec["name"],
        "suite_path": str(suite_path),
        "rows_path": str(rows_path),
        "rows": len(rows),
        "success": not failed_fail,  # the gate: no "fail" expectation failed
        "all_passed": not failed_fail and not failed_warn,
        "evaluated_expectations": int(stats.get("evaluated_expectations", len(summaries))),
        "successful_expectations": int(stats.get("successful_expectations", 0)),
        "failed_fail": len(failed_fail),
        "failed_warn": len(failed_warn),
        "expectations": summaries,
    }
    result_path = out_dir / "validation.json"
    _write_atomic(result_path, json.dumps(report, indent=2) + "\n")
    _write_atomic(out_dir / "validation.md", render_markdown(report))

    for s in failed_warn:
        log.warning("validation warning: %s (%s unexpected)", label(s), s.get("unexpected_count", "n/a"))
    if failed_fail:
        names = [label(s) for s in failed_fail]
        raise ValidationFailed(
            f"{len(names)} 'fail' expectation(s) did not pass on {rows_path}: {', '.join(names)}. "
            f"Result saved to {result_path}; fix the landing data (bad rows) or the suite {suite_path}, then rerun.",
            result_path=result_path,
            failed=names,
        )
    log.info(
        "validation passed: %d rows, %d expectations, %d warnings", len(rows), report["evaluated_expectations"],
        len(failed_warn),
    )
    return {
        "success": True,
        "evaluated_expectations": report["evaluated_expectations"],
        "failed_fail": 0,
        "failed_warn": len(failed_warn),
        "warnings": [label(s) for s in failed_warn],
        "rows": len(rows),
        "result_path": str(result_path),
    }


def main(argv: list[str] | None = None) -> int:
    from tasks import offline
    from tasks.config import REPO_ROOT

    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, required=True, help="staged rows.jsonl from tasks.ingest")
    parser.add_argument("--suite", type=Path, default=REPO_ROOT / "include" / "gx" / "records_suite.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for validation.json and validation.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = validate(rows_path=args.rows, suite_path=args.suite, out_dir=args.out)
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
