"""Validate: run the versioned Great Expectations suite on the staged rows and gate the run.

The suite lives in `include/gx/records_suite.json` (GX 1.x suite JSON); each
expectation's `meta.severity` is "fail" (stops the run) or "warn" (reported
only). GX results quote cell values (`partial_unexpected_list` and friends), and
staged rows hold PII, so the saved summary is built from a whitelist of counts:
no cell value reaches validation.json, validation.md, the return dict, logs or
the exception. Great Expectations is imported inside the functions that need it
(it takes seconds), so importing this module stays cheap.

Drift: each dataset version carries a profile of the rows it was built from
(`build_profile`: row count, text-length histogram, record-type counts; no record
values). Given the previous version's profile, two GX
`expect_column_kl_divergence_to_be_less_than` expectations are added at run time:
text length and record-type mix. Their severity and threshold come from config;
with no previous version they are reported as skipped.

Data Docs: the GX results are scrubbed to the same whitelist (counts, KL partitions
over bins and allowed record types) before GX renders its HTML, so the saved
`data_docs/` holds no cell value either.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import numbers
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.common.jsonl import read_objects

if TYPE_CHECKING:
    from tasks.config import DataConfig, Paths

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

PROFILE_VERSION = 1
KL_TYPE = "expect_column_kl_divergence_to_be_less_than"
# Derived columns the drift checks run on. The type column holds an allowed record type or
# OTHER_TYPE, never the raw cell: GX's KL result lists every observed category by value.
LENGTH_COLUMN = "text_chars"
TYPE_COLUMN = "record_type_group"
OTHER_TYPE = "(other)"
# Weight shared by the bins/categories that were empty in the previous version, so data
# landing there gives a large but finite KL instead of infinity. A fixed share (not a
# pseudo-count) keeps identical data at KL ≈ 0.005 whatever the row count.
_EMPTY_HOLDOUT = 0.005
# Weight GX sets aside for lengths outside the previous bins (only after a raised length limit).
_TAIL_WEIGHT_HOLDOUT = 0.001


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
# Profile and drift (no GX needed)


def length_bin_edges(min_chars: int, max_chars: int, bins: int) -> list[int]:
    """0, then geometric edges from min_chars to max_chars: short texts get fine bins, long ones coarse."""
    lo, hi = max(1, int(min_chars)), max(int(max_chars), int(min_chars) + 1)
    edges = {0, hi}
    for i in range(bins):
        edges.add(round(lo * (hi / lo) ** (i / bins)))
    return sorted(edges)


def type_group(value: Any, record_types: list[str]) -> str:
    return value if isinstance(value, str) and value in record_types else OTHER_TYPE


def _text_chars(row: dict[str, Any]) -> int | None:
    text = row.get("text")
    return len(text) if isinstance(text, str) else None


def build_profile(rows: list[dict[str, Any]], data: DataConfig) -> dict[str, Any]:
    """Counts describing the rows (deterministic: identical rows → identical profile, no timestamps).

    Bins follow np.histogram (what GX uses): [e0, e1), ..., [e_n-1, e_n].
    """
    edges = length_bin_edges(data.min_text_chars, data.max_text_chars, data.drift_length_bins)
    counts, below, above, missing = [0] * (len(edges) - 1), 0, 0, 0
    for row in rows:
        n = _text_chars(row)
        if n is None:
            missing += 1
        elif n < edges[0]:
            below += 1
        elif n > edges[-1]:
            above += 1
        else:
            counts[min(bisect.bisect_right(edges, n) - 1, len(counts) - 1)] += 1
    types = Counter(type_group(row.get("record_type"), data.record_types) for row in rows)
    values = [*data.record_types, OTHER_TYPE]
    return {
        "profile_version": PROFILE_VERSION,
        "rows": len(rows),
        "text_chars": {"bins": edges, "counts": counts, "below": below, "above": above, "missing": missing},
        "record_type": {"values": values, "counts": [types.get(v, 0) for v in values]},
    }


def _expected_weights(counts: list[int]) -> list[float]:
    """Previous counts as weights, with _EMPTY_HOLDOUT spread over the empty ones."""
    total, empty = sum(counts), sum(1 for c in counts if c == 0)
    if total == 0:
        return [1 / len(counts)] * len(counts)
    if empty == 0:
        return [c / total for c in counts]
    return [c / total * (1 - _EMPTY_HOLDOUT) if c else _EMPTY_HOLDOUT / empty for c in counts]


def _check_profile(profile: Any) -> str | None:
    """Why a stored profile cannot be compared against, or None when it can."""
    try:
        if profile["profile_version"] != PROFILE_VERSION:
            return f"profile_version {profile['profile_version']!r}, expected {PROFILE_VERSION}"
        tc, rt = profile["text_chars"], profile["record_type"]
        if len(tc["bins"]) != len(tc["counts"]) + 1 or len(tc["counts"]) < 1:
            return "text_chars bins and counts do not match"
        if len(rt["values"]) != len(rt["counts"]) or not rt["values"]:
            return "record_type values and counts do not match"
        if not all(isinstance(v, numbers.Real) for v in [*tc["bins"], *tc["counts"], *rt["counts"]]):
            return "non-numeric bins or counts"
    except (KeyError, TypeError):
        return "missing profile fields"
    return None


def drift_plan(previous: dict[str, Any] | None, rows: int, data: DataConfig) -> tuple[list[dict], dict[str, Any]]:
    """(drift expectations in suite-JSON form, the drift block of the report before results).

    `previous` is `tasks.data.version.previous_profile(...)`: {"rev", "tags", "profile"} or None.
    """
    drift: dict[str, Any] = {"status": "skipped", "severity": data.drift_severity, "max_kl": data.drift_max_kl}
    if previous is None:
        return [], {**drift, "reason": "no previous version"}
    drift.update(previous_rev=previous["rev"], previous_tags=previous.get("tags", []))
    problem = _check_profile(previous.get("profile"))
    if problem:
        log.warning("drift check skipped: the profile of version %s is unusable (%s)", previous["rev"][:12], problem)
        return [], {**drift, "reason": f"previous profile unusable: {problem}"}
    profile = previous["profile"]
    drift["previous_rows"] = profile["rows"]
    if rows == 0:
        return [], {**drift, "reason": "no rows"}
    tc, rt = profile["text_chars"], profile["record_type"]
    meta = {"severity": data.drift_severity, "previous_rev": previous["rev"]}
    expectations = [
        {
            "type": KL_TYPE,
            "kwargs": {
                "column": LENGTH_COLUMN,
                "threshold": data.drift_max_kl,
                "partition_object": {"bins": list(tc["bins"]), "weights": _expected_weights(tc["counts"])},
                "tail_weight_holdout": _TAIL_WEIGHT_HOLDOUT,
            },
            "meta": {**meta, "drift": "text_chars", "why": "text-length distribution vs the previous dataset version"},
        },
        {
            "type": KL_TYPE,
            "kwargs": {
                "column": TYPE_COLUMN,
                "threshold": data.drift_max_kl,
                "partition_object": {"values": list(rt["values"]), "weights": _expected_weights(rt["counts"])},
                "tail_weight_holdout": _TAIL_WEIGHT_HOLDOUT,
            },
            "meta": {**meta, "drift": "record_type", "why": "record-type mix vs the previous dataset version"},
        },
    ]
    return expectations, {**drift, "status": "pending"}


# ---------------------------------------------------------------------------
# Great Expectations


def _quiet_gx_loggers() -> None:
    # Some GX modules pin their own logger to INFO at import, so set every GX logger, not only the parent.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (
            isinstance(logger, logging.Logger)
            and "great_expectations" in name
            and (logger.level == logging.NOTSET or logger.level < logging.WARNING)
        ):
            logger.setLevel(logging.WARNING)


def _import_gx():
    from tasks.common import offline

    offline.apply()  # analytics/telemetry off before GX is imported
    _quiet_gx_loggers()
    import great_expectations as gx

    _quiet_gx_loggers()
    return gx


def run_suite(
    rows: list[dict[str, Any]],
    spec: dict[str, Any],
    *,
    extra: list[dict[str, Any]] = (),
    record_types: list[str] = (),
    docs_dir: Path | None = None,
    run_name: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the suite (plus `extra` expectations, e.g. drift) on the rows with an ephemeral GX context.

    With `docs_dir`, GX Data Docs are built there from the scrubbed results.
    Returns (one summary per expectation in order: suite, then extra; GX statistics), holding counts only.
    """
    gx = _import_gx()
    import pandas as pd
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)

    expectations = [*spec["expectations"], *extra]
    suite = gx.ExpectationSuite(name=spec["name"])
    for i, exp in enumerate(expectations, start=1):
        meta = dict(exp.get("meta") or {})
        try:
            expectation = ExpectationConfiguration(
                type=exp["type"],
                kwargs=dict(exp.get("kwargs") or {}),
                meta=meta,
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
    if extra and rows:
        frame[LENGTH_COLUMN] = [_text_chars(r) for r in rows]
        frame[TYPE_COLUMN] = [type_group(r.get("record_type"), list(record_types)) for r in rows]
    run_id = RunIdentifier(run_name=run_name, run_time=None)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT, run_id=run_id)
    del frame

    scrub_validation_result(result, safe_values={*record_types, OTHER_TYPE})
    if docs_dir is not None:
        build_data_docs(context, result, Path(docs_dir))

    summaries: list[dict[str, Any] | None] = [None] * len(expectations)
    for res in result.results:
        i = position[str(res.expectation_config.id)]
        summaries[i] = summarize_result(expectations[i], res.success, res.result, res.exception_info)
    stats = dict(result.statistics)
    return [s for s in summaries if s is not None], stats


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _safe_partition(part: Any, safe_values: set[str]) -> dict[str, Any] | None:
    """A KL partition if it holds only numbers and allowed category names, else None."""
    if not isinstance(part, dict):
        return None
    out: dict[str, Any] = {}
    for key in ("bins", "weights", "tail_weights"):
        if key in part:
            values = list(part[key])
            if not all(_is_number(v) for v in values):
                return None
            out[key] = [float(v) for v in values]
    if "values" in part:
        if not all(isinstance(v, str) and v in safe_values for v in part["values"]):
            return None
        out["values"] = list(part["values"])
    return out


def safe_result(result: dict[str, Any] | None, safe_values: set[str]) -> dict[str, Any]:
    """What of one GX expectation result may be kept: counts, numeric observed values, safe KL partitions."""
    result = dict(result or {})
    kept: dict[str, Any] = {k: result[k] for k in _RESULT_COUNT_KEYS if _is_number(result.get(k))}
    if _is_number(result.get("observed_value")):
        kept["observed_value"] = result["observed_value"]
    details = result.get("details")
    if isinstance(details, dict):
        partitions = {
            k: _safe_partition(details.get(k), safe_values) for k in ("observed_partition", "expected_partition")
        }
        if all(partitions.values()):
            kept["details"] = partitions
    return kept


def scrub_validation_result(result: Any, *, safe_values: set[str]) -> None:
    """Reduce a GX ExpectationSuiteValidationResult in place to what may be saved or rendered."""
    for res in result.results:
        res.result = safe_result(res.result, safe_values)
        if _raised(res.exception_info):
            res.exception_info = {
                "raised_exception": True,
                "exception_traceback": None,
                "exception_message": "withheld: GX messages may quote cell values",
            }
        else:
            res.exception_info = {"raised_exception": False, "exception_traceback": None, "exception_message": None}
    markers = result.meta.get("batch_markers")
    if isinstance(markers, dict):
        markers.pop("pandas_data_fingerprint", None)  # a hash of the raw rows


def build_data_docs(context: Any, result: Any, docs_dir: Path) -> Path:
    """Render GX Data Docs for this one (scrubbed) validation result into docs_dir; returns index.html."""
    # The ephemeral context stored the raw result when it ran; replace it with the scrubbed one.
    store = context.validation_results_store
    for key in store.list_keys():
        store.set(key, result)
    if docs_dir.exists():
        shutil.rmtree(docs_dir)  # a retried task leaves no page of an earlier attempt
    docs_dir.mkdir(parents=True)
    # Replace the ephemeral context's default site (a temp folder) so nothing is rendered elsewhere.
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    context.add_data_docs_site(
        "run",
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    context.build_data_docs(site_names=["run"])
    index = docs_dir / "index.html"
    if not index.is_file():
        raise RuntimeError(f"GX did not write Data Docs to {docs_dir}")
    for page in docs_dir.rglob("*.html"):
        page.write_text(make_offline(page.read_text(encoding="utf-8")), encoding="utf-8")
    return index


# GX's page templates pull Bootstrap, jQuery and Vega from public CDNs: a reviewer opening the page
# inside the customer network would make calls out. Drop those tags (the tables stay readable) and
# add a CSP so the browser refuses any other remote load.
_REMOTE_ASSET = re.compile(
    r"<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|<link\b[^>]*\bhref=[\"']https?://[^>]*>", re.IGNORECASE
)
_OFFLINE_CSP = (
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self' 'unsafe-inline' "
    "data:; connect-src 'none'\">"
)


def make_offline(html: str) -> str:
    html = _REMOTE_ASSET.sub("", html)
    return re.sub(r"(<head[^>]*>)", r"\1" + _OFFLINE_CSP, html, count=1, flags=re.IGNORECASE)


def _raised(exception_info: Any) -> bool:
    if not isinstance(exception_info, dict):
        return False
    return bool(exception_info.get("raised_exception")) or any(
        isinstance(v, dict) and v.get("raised_exception") for v in exception_info.values()
    )


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
    if _raised(exception_info):
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
            unexpected = (
                f"observed {s['observed_value']:.4g}"
                if isinstance(s["observed_value"], float)
                else f"observed {s['observed_value']}"
            )
        else:
            unexpected = "—"
        lines.append(f"| {i} | {s['type']} | {s['column'] or '—'} | {s['severity']} | {outcome} | {unexpected} |")
    if report.get("drift"):
        lines += ["", f"Drift vs the previous dataset version: {_drift_line(report['drift'])}."]
    if report.get("data_docs_path"):
        lines += ["", f"GX Data Docs: {report['data_docs_path']}"]
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


def _finish_drift(drift: dict[str, Any], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Fill the drift block from the drift expectations' summaries (their column names the check)."""
    if drift["status"] != "pending":
        return drift
    drifted = False
    for s in summaries:
        name = {LENGTH_COLUMN: "text_chars", TYPE_COLUMN: "record_type"}[s["column"]]
        # GX reports an infinite divergence as observed_value None.
        kl = s.get("observed_value")
        drift[f"{name}_kl"] = None if kl is None else round(float(kl), 6)
        drifted |= not s["success"]
    drift["status"] = "drifted" if drifted else "passed"
    return drift


def validate(
    *,
    rows_path: Path,
    suite_path: Path,
    out_dir: Path,
    previous: dict[str, Any] | None = None,
    data: DataConfig | None = None,
    run_name: str | None = None,
    data_docs: bool = True,
) -> dict[str, Any]:
    """Run the suite (+ drift checks against `previous`) on the staged rows; save validation.json/.md,
    profile.json and data_docs/; raise ValidationFailed on a "fail" failure.

    `previous` is `tasks.data.version.previous_profile(...)` (None: first version, drift skipped);
    `data` supplies allowed record types, length limits and drift settings (default: DataConfig()).
    """
    from tasks.config import DataConfig

    rows_path, suite_path, out_dir = Path(rows_path), Path(suite_path), Path(out_dir)
    data = data or DataConfig()
    spec = load_suite_spec(suite_path)
    rows = read_rows(rows_path)
    profile = build_profile(rows, data)
    extra, drift = drift_plan(previous, len(rows), data)
    docs_dir = out_dir / "data_docs" if data_docs else None
    summaries, stats = run_suite(
        rows, spec, extra=extra, record_types=list(data.record_types), docs_dir=docs_dir, run_name=run_name
    )
    n_suite = len(spec["expectations"])
    drift = _finish_drift(drift, summaries[n_suite:])
    for s in summaries[n_suite:]:
        s["kwargs"] = {"threshold": data.drift_max_kl}  # not the previous partition: the profile is committed

    report = _report(spec, suite_path, rows_path, len(rows), summaries, stats, drift, docs_dir)
    result_path = out_dir / "validation.json"
    _write_atomic(result_path, json.dumps(report, indent=2) + "\n")
    _write_atomic(out_dir / "validation.md", render_markdown(report))
    # Committed with the dataset version by the version stage: the next run's drift baseline.
    profile_path = out_dir / "profile.json"
    _write_atomic(profile_path, json.dumps(profile, indent=2, sort_keys=True) + "\n")
    return _verdict(report, result_path, profile_path, suite_path)


def _report(
    spec: dict,
    suite_path: Path,
    rows_path: Path,
    n_rows: int,
    summaries: list[dict],
    stats: dict,
    drift: dict,
    docs_dir: Path | None,
) -> dict[str, Any]:
    """validation.json: the suite's outcome, counts per severity, drift, and every expectation's summary."""
    failed = {sev: [s for s in summaries if not s["success"] and s["severity"] == sev] for sev in ("fail", "warn")}
    return {
        "suite": spec["name"],
        "suite_path": str(suite_path),
        "rows_path": str(rows_path),
        "rows": n_rows,
        "success": not failed["fail"],  # the gate: no "fail" expectation failed
        "all_passed": not failed["fail"] and not failed["warn"],
        "evaluated_expectations": int(stats.get("evaluated_expectations", len(summaries))),
        "successful_expectations": int(stats.get("successful_expectations", 0)),
        "failed_fail": len(failed["fail"]),
        "failed_warn": len(failed["warn"]),
        "drift": drift,
        "data_docs_path": str(docs_dir / "index.html") if docs_dir else None,
        "expectations": summaries,
    }


def _verdict(report: dict, result_path: Path, profile_path: Path, suite_path: Path) -> dict[str, Any]:
    """Warnings logged; a failed "fail" expectation raises ValidationFailed; else the stage's small result."""
    failed_fail = [s for s in report["expectations"] if not s["success"] and s["severity"] == "fail"]
    failed_warn = [s for s in report["expectations"] if not s["success"] and s["severity"] == "warn"]
    for s in failed_warn:
        log.warning("validation warning: %s (%s unexpected)", label(s), s.get("unexpected_count", "n/a"))
    log.info("drift vs previous dataset version: %s", _drift_line(report["drift"]))
    if failed_fail:
        names = [label(s) for s in failed_fail]
        raise ValidationFailed(
            f"{len(names)} 'fail' expectation(s) did not pass on {report['rows_path']}: {', '.join(names)}. "
            f"Result saved to {result_path}; fix the landing data (bad rows) or the suite {suite_path}, then rerun.",
            result_path=result_path,
            failed=names,
        )
    log.info(
        "validation passed: %d rows, %d expectations, %d warnings",
        report["rows"],
        report["evaluated_expectations"],
        len(failed_warn),
    )
    return {
        "success": True,
        "evaluated_expectations": report["evaluated_expectations"],
        "successful_expectations": report["successful_expectations"],
        "failed_fail": 0,
        "failed_warn": len(failed_warn),
        "warnings": [label(s) for s in failed_warn],
        "rows": report["rows"],
        "result_path": str(result_path),
        "profile_path": str(profile_path),
        "data_docs_path": report["data_docs_path"],
        "drift": report["drift"],
    }


def _drift_line(drift: dict[str, Any]) -> str:
    if drift["status"] == "skipped":
        return f"skipped: {drift['reason']}"
    kl = ", ".join(
        f"{name} KL {'inf' if drift.get(f'{name}_kl') is None else round(drift[f'{name}_kl'], 4)}"
        for name in ("text_chars", "record_type")
    )
    return (
        f"{drift['status']} vs {drift['previous_rev'][:12]} ({kl}; max {drift['max_kl']}, severity {drift['severity']})"
    )


def log_to_mlflow(paths: Paths, run_id: str, out_dir: Path) -> str:
    """Log validation counts and drift KL as metrics, and data_docs/ + the summaries as artifacts,
    into the pipeline run's MLflow run. Returns the MLflow run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tasks.common.tracking import pipeline_mlflow_run

    out_dir = Path(out_dir)
    report = json.loads((out_dir / "validation.json").read_text(encoding="utf-8"))
    mlflow_run_id = pipeline_mlflow_run(paths, run_id)
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri)
    values = {
        "validation_rows": report["rows"],
        "validation_expectations_evaluated": report["evaluated_expectations"],
        "validation_expectations_passed": report["successful_expectations"],
        "validation_failed_fail": report["failed_fail"],
        "validation_failed_warn": report["failed_warn"],
        "validation_success": int(report["success"]),
    }
    drift = report.get("drift") or {}
    if drift.get("status") in ("passed", "drifted"):
        values["drift_detected"] = int(drift["status"] == "drifted")
        for name in ("text_chars", "record_type"):
            kl = drift.get(f"{name}_kl")
            values[f"drift_{name}_kl"] = float("inf") if kl is None else float(kl)
    now = int(time.time() * 1000)
    client.log_batch(mlflow_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    for name in ("validation.json", "validation.md", "profile.json"):
        if (out_dir / name).is_file():
            client.log_artifact(mlflow_run_id, str(out_dir / name), artifact_path="validation")
    if (out_dir / "data_docs").is_dir():
        client.log_artifacts(mlflow_run_id, str(out_dir / "data_docs"), artifact_path="validation/data_docs")
    return mlflow_run_id


def main(argv: list[str] | None = None) -> int:
    from tasks.common import offline
    from tasks.config import REPO_ROOT

    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.data.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, required=True, help="staged rows.jsonl from tasks.data.ingest")
    parser.add_argument("--suite", type=Path, default=REPO_ROOT / "include" / "gx" / "records_suite.json")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for validation.json/.md, profile.json and data_docs/"
    )
    parser.add_argument("--registry", type=Path, help="data registry: check drift against its latest version's profile")
    parser.add_argument("--run-id", help="this pipeline run (its own dataset version is not the baseline)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    previous = None
    if args.registry:
        from tasks.data.version import previous_profile

        previous = previous_profile(args.registry, exclude_run_id=args.run_id)
    try:
        result = validate(
            rows_path=args.rows, suite_path=args.suite, out_dir=args.out, previous=previous, run_name=args.run_id
        )
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
