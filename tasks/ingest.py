"""Ingest: read raw landing files (JSONL, CSV, Parquet), normalise text, stage good rows, quarantine bad ones.

Raw zone in, raw zone out. Every input row ends in exactly one place:
`staging_dir/rows.jsonl`, `quarantine_dir/quarantine.jsonl` (with a reason code), or
`staging_dir/duplicates.jsonl` (a later exact copy of an earlier row's text; ids only), so
`rows_in == rows_valid + rows_quarantined + duplicates_removed` always holds. A Parquet
file that cannot be read at all counts as one row, quarantined at line 0. The return
value holds counts and paths only; record text never leaves the output files.

Landing is partitioned by month (`landing/YYYY-MM/`); `partition="2026-01"` reads only
that folder, so a scheduled run ingests exactly its own data interval.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

STAGED_NAME = "rows.jsonl"
QUARANTINE_NAME = "quarantine.jsonl"
DUPLICATES_NAME = "duplicates.jsonl"
INGEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
# Right-to-erasure requests (subject ids) land in landing/YYYY-MM/erasure/: read by tasks.monthly, never ingested.
ERASURE_DIRNAME = "erasure"
PARTITION_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# Fields a staged row carries, besides its provenance (source_file, source_line).
RECORD_FIELDS = ("record_id", "record_type", "created_at", "text")

# Quarantine reason codes → what they mean. The code goes into quarantine.jsonl and
# the result's `quarantine_reasons`; the readable message goes next to it.
REASONS = {
    "invalid_utf8": "the line is not valid UTF-8 (or a field holds an unpaired surrogate)",
    "malformed_json": "the line is not valid JSON",
    "not_object": "the JSON value is not an object",
    "missing_field": "a required field is missing, null or blank",
    "wrong_type": "a field is not a string",
    "empty_text": "text is empty after normalisation",
    "text_too_short": "text is shorter than min_text_chars after normalisation",
    "text_too_long": "text is longer than max_text_chars after normalisation",
    "duplicate_id": "record_id was already seen earlier in this ingest (the first occurrence is kept)",
    "bad_header": "the CSV header is missing or lacks required columns; the whole file is quarantined",
    "column_count": "the CSV row has a different number of columns than the header",
    "malformed_csv": "the CSV row cannot be parsed",
    "truncated_line": "the file's last line has no line ending and does not parse: the file was cut off",
    "bad_schema": "the Parquet file lacks a required column or a column is not a string; every row is quarantined",
    "unreadable_file": "the Parquet file (or a part of it) cannot be decoded: truncated or corrupt",
}


class EmptyLandingError(FileNotFoundError):
    """No landing file to ingest: nothing to train on, so fail loudly and say what to do."""


class MissingPartitionError(EmptyLandingError):
    """The requested month partition has no folder under landing/."""


class InvalidPartitionError(ValueError):
    """A partition name that is not YYYY-MM."""


class QuarantineThresholdExceeded(ValueError):
    """Too large a share of the rows was quarantined; the outputs are written, the run must stop.

    The message and attributes hold counts, reason codes and paths only, never row text.
    """

    def __init__(self, message: str, *, share: float, threshold: float, quarantine_path: str, result: dict[str, Any]):
        super().__init__(message)
        self.share, self.threshold, self.quarantine_path, self.result = share, threshold, quarantine_path, result


@dataclass(frozen=True)
class Problem:
    """Why one row is quarantined. `message` never quotes the row's values."""

    field: str | None
    reason: str
    message: str


# ---------------------------------------------------------------------------
# Normalisation and per-record checks (pure functions)

_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_SPACE_CONTROLS = frozenset("\t\r\x0b\x0c")
_HSPACE_RE = re.compile(r"[^\S\n]+")
_BLANK_LINES_RE = re.compile(r"\n\s*\n+")


def normalize_text(value: str) -> str:
    """NFKC, drop control characters, collapse spaces, keep single line breaks, strip.

    Line breaks carry structure the model must learn (FAQ "Question: …\nAnswer: …" lines),
    so they survive; runs of blank lines and every other whitespace run collapse.
    """
    value = unicodedata.normalize("NFKC", value).replace("\r\n", "\n")
    value = _CONTROL_RE.sub(lambda m: " " if m.group() in _SPACE_CONTROLS else "", value)
    value = _HSPACE_RE.sub(" ", value)
    value = _BLANK_LINES_RE.sub("\n", value)
    return "\n".join(line.strip() for line in value.split("\n")).strip()


def _encodable(value: str) -> bool:
    # JSON escapes like "\ud800" decode to lone surrogates that cannot be written as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_record(
    values: dict[str, Any],
    *,
    required_fields: Sequence[str],
    min_text_chars: int,
    max_text_chars: int,
) -> tuple[dict[str, Any] | None, Problem | None]:
    """Validate and normalise one parsed record: (row, None) when good, (None, problem) when not."""
    for name in required_fields:
        if values.get(name) is None:
            return None, Problem(name, "missing_field", f"required field '{name}' is missing or null")
    row: dict[str, Any] = {}
    for name in dict.fromkeys([*RECORD_FIELDS, *required_fields]):
        value = values.get(name)
        if value is None:
            row[name] = None
            continue
        if not isinstance(value, str):
            return None, Problem(name, "wrong_type", f"field '{name}' must be a string, got {type(value).__name__}")
        if not _encodable(value):
            return None, Problem(name, "invalid_utf8", f"field '{name}' holds an unpaired surrogate (not UTF-8)")
        row[name] = normalize_text(value) if name == "text" else " ".join(normalize_text(value).split())

    text = row["text"]
    if text is not None:
        if not text:
            return None, Problem("text", "empty_text", "text is empty after normalisation")
        if len(text) < min_text_chars:
            return None, Problem(
                "text", "text_too_short", f"text has {len(text)} characters; the minimum is {min_text_chars}"
            )
        if len(text) > max_text_chars:
            return None, Problem(
                "text", "text_too_long", f"text has {len(text)} characters; the maximum is {max_text_chars}"
            )
    for name in required_fields:
        if name != "text" and row[name] == "":
            return None, Problem(name, "missing_field", f"required field '{name}' is blank")
    if row["created_at"] == "":
        row["created_at"] = None  # optional: blank means unknown
    return row, None


# ---------------------------------------------------------------------------
# Readers: each yields (line, raw, values-or-problem) per input row


def _byte_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Physical lines: (1-based number, bytes without the line ending, ended with a line break).

    A leading BOM is dropped. Only a file's last line can lack a line break.
    """
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            yield number, line.rstrip(b"\r\n"), line.endswith(b"\n")


def _truncated(detail: str) -> Problem:
    return Problem(None, "truncated_line", f"last line has no line ending and {detail}: the file looks cut off; "
                                           "re-deliver the complete file")


def _raw(line: bytes) -> str:
    return line.decode("utf-8", errors="backslashreplace")


def read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Decode and parse line by line, so one bad line costs one row, not the file. Blank lines are skipped.

    An unterminated last line that does not parse is a cut-off file (`truncated_line`), not a
    bad record: the fix is re-delivering the file, not editing a row.
    """
    for number, line, ended in _byte_lines(path):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = Problem(None, "invalid_utf8", f"invalid UTF-8 byte at offset {exc.start}")
            yield number, _raw(line), problem if ended else _truncated("is not valid UTF-8")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            detail = f"{exc.msg} at column {exc.colno}"
            problem = Problem(None, "malformed_json", f"invalid JSON: {detail}")
            yield number, text, problem if ended else _truncated(f"is not valid JSON ({detail})")
            continue
        if not isinstance(value, dict):
            yield number, text, Problem(None, "not_object", f"expected a JSON object, got {type(value).__name__}")
            continue
        yield number, text, value


def _header_problem(header: list[str] | None, required_fields: Sequence[str], bad_bytes: bool) -> Problem | None:
    expected = ",".join(RECORD_FIELDS)
    if header is None:
        return Problem("header", "bad_header", f"CSV header line cannot be parsed; expected '{expected}'")
    if bad_bytes:
        return Problem("header", "bad_header", "CSV header is not valid UTF-8")
    names = [name.strip().lower() for name in header]
    if len(set(names)) != len(names):
        return Problem("header", "bad_header", f"CSV header repeats a column; expected '{expected}'")
    missing = [name for name in required_fields if name not in names]
    if missing:
        # Name only what is missing: without a header, line 1 is data (PII), so never echo it.
        return Problem(
            "header",
            "bad_header",
            f"CSV header lacks column(s) {', '.join(missing)}; expected '{expected}' as the first line",
        )
    return None


def _quote_left_open(raw: str) -> bool:
    """True when a quoted field never closes: the lenient reader then ran to the end of the file."""
    if raw.count('"') % 2 == 0:
        return False
    try:
        list(csv.reader([raw + "\n"], strict=True))
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def read_csv(path: Path, required_fields: Sequence[str]) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Parse CSV records (quoted fields may span lines), decoding each physical line on its own.

    A wrong or missing header quarantines every record of the file, line 1 included,
    since without a header line 1 may itself be a data row.
    """
    consumed: list[tuple[int, bytes, bool, bool]] = []  # (number, bytes, bad UTF-8, ended) of the current record

    def text_lines() -> Iterator[str]:
        for number, line, ended in _byte_lines(path):
            try:
                text, bad = line.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad = _raw(line), True
            consumed.append((number, line, bad, ended))
            yield text + "\n"

    reader = csv.reader(text_lines())
    header: list[str] = []
    header_problem: Problem | None = None
    at_header = True
    while True:
        consumed.clear()
        error: str | None = None
        try:
            record: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader resets itself, so parsing goes on with the next record
            record, error = None, f"CSV row cannot be parsed: {exc}"
        if not consumed:
            return  # nothing more was read: end of file
        if record == []:
            continue  # blank line
        start = consumed[0][0]
        raw = "\n".join(_raw(line) for _, line, _, _ in consumed)
        bad_bytes = any(bad for _, _, bad, _ in consumed)
        cut_off = not consumed[-1][3]  # the record runs into the end of a file that lacks its last line break
        if at_header:
            at_header = False
            header_problem = _header_problem(record, required_fields, bad_bytes)
            if header_problem is None and record is not None:
                header = [name.strip().lower() for name in record]
                continue
        if header_problem is not None:
            yield start, raw, header_problem
        elif error is not None or record is None:
            detail = error or "CSV row cannot be parsed"
            yield start, raw, _truncated(f"cannot be parsed ({detail})") if cut_off else Problem(
                None, "malformed_csv", detail)
        elif bad_bytes:
            problem = Problem(None, "invalid_utf8", "the row holds bytes that are not valid UTF-8")
            yield start, raw, _truncated("is not valid UTF-8") if cut_off else problem
        elif _quote_left_open(raw):
            yield start, raw, Problem(None, "truncated_line", "a quoted field is still open at the end of the file: "
                                                              "the file looks cut off; re-deliver the complete file")
        elif len(record) != len(header):
            detail = f"row has {len(record)} columns; the header has {len(header)}"
            yield start, raw, _truncated(f"is incomplete ({detail})") if cut_off else Problem(
                None, "column_count", detail)
        else:
            yield start, raw, dict(zip(header, record))


_PARQUET_BATCH_ROWS = 4096
# Parquet readers raise these for truncated or corrupt data (ArrowInvalid is a ValueError;
# undecodable string bytes surface as UnicodeDecodeError, also a ValueError).
_PARQUET_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError)


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or is_view(arrow_type)


def _parquet_schema_problem(schema: Any, required_fields: Sequence[str]) -> tuple[Problem | None, dict[str, str]]:
    """(problem or None, normalised field name → the file's column name). Messages name columns and types only."""
    names = [name.strip().lower() for name in schema.names]
    if len(set(names)) != len(names):
        return Problem("schema", "bad_schema", "Parquet file repeats a column name"), {}
    columns = dict(zip(names, schema.names))
    missing = [name for name in required_fields if name not in columns]
    if missing:
        return Problem(missing[0], "bad_schema", f"Parquet file lacks required column(s) {', '.join(missing)}; "
                                                 f"expected string columns {', '.join(RECORD_FIELDS)}"), columns
    for name in dict.fromkeys([*RECORD_FIELDS, *required_fields]):
        if name in columns:
            arrow_type = schema.field(columns[name]).type
            if not _is_text_type(arrow_type):
                return Problem(name, "bad_schema", f"Parquet column '{name}' has type {arrow_type}; it must be a "
                                                   "string column (cast it before landing the file)"), columns
    return None, columns


def _detail(exc: BaseException) -> str:
    # Arrow's messages describe the file's structure (magic bytes, thrift, page sizes), not its values.
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _raw_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def read_parquet(path: Path, required_fields: Sequence[str]) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Rows of a Parquet file; the line number is the 1-based row index.

    Unreadable footer → one `unreadable_file` entry at line 0 (its rows cannot be counted).
    Wrong schema → every row quarantined as `bad_schema` (raw = the row as JSON), or one
    line-0 entry when even that cannot be read. A row group that fails to decode costs its
    own rows (counted from the footer), not the rest of the file.
    """
    import pyarrow.parquet as pq

    with path.open("rb") as fh:  # opened here, so a vanished file raises FileNotFoundError like the text readers
        try:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
        except _PARQUET_ERRORS as exc:
            yield 0, "", Problem(None, "unreadable_file", f"not a readable Parquet file ({_detail(exc)}); "
                                                          "re-deliver the complete file")
            return
        schema_problem, columns = _parquet_schema_problem(schema, required_fields)
        # A good file: read only the record's columns. A bad one: read all, so raw keeps the whole row.
        wanted = None if schema_problem else list(dict.fromkeys(
            columns[name] for name in [*RECORD_FIELDS, *required_fields] if name in columns))
        row_number = 0
        for group in range(pf.num_row_groups):
            group_rows = pf.metadata.row_group(group).num_rows
            done = 0
            try:
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group], columns=wanted):
                    for row in batch.to_pylist():
                        done += 1
                        row_number += 1
                        raw = _raw_row(row)
                        if schema_problem is not None:
                            yield row_number, raw, schema_problem
                        else:
                            yield row_number, raw, {name.strip().lower(): value for name, value in row.items()}
            except _PARQUET_ERRORS as exc:
                detail = _detail(exc)
                if schema_problem is not None and row_number == 0 and group == 0:
                    # A wrong schema and undecodable data: one entry for the whole file.
                    yield 0, "", Problem(schema_problem.field, "bad_schema",
                                         f"{schema_problem.message}; the rows cannot be decoded either ({detail})")
                    return
                problem = Problem(None, "unreadable_file", f"row group {group} cannot be decoded ({detail}); "
                                                           "re-deliver the complete file")
                for _ in range(group_rows - done):
                    row_number += 1
                    yield row_number, "", problem


# ---------------------------------------------------------------------------
# Files and atomic outputs


def landing_files(landing_dir: Path, glob: str = "**/*", root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(files to ingest, other files) under `root` (default landing_dir), sorted by path relative to landing_dir."""
    root = landing_dir if root is None else root
    if not root.is_dir():
        return [], []
    found = sorted(
        (p for p in root.glob(glob) if p.is_file() and ERASURE_DIRNAME not in p.relative_to(landing_dir).parts[:-1]),
        key=lambda p: p.relative_to(landing_dir).as_posix(),
    )
    wanted = [p for p in found if p.suffix.lower() in INGEST_SUFFIXES]
    others = [p for p in found if p.suffix.lower() not in INGEST_SUFFIXES]
    return wanted, others


def _open_temp(target: Path, stack: ExitStack) -> IO[str]:
    """A temp file next to `target`; renamed over it only when the whole ingest succeeded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", newline="\n", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )

    def cleanup() -> None:
        fh.close()
        Path(fh.name).unlink(missing_ok=True)

    stack.callback(cleanup)
    return fh


def _commit(fh: IO[str], target: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(fh.name, target)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def partition_root(landing_dir: Path, partition: str | None) -> Path:
    """The folder to read: landing_dir itself, or landing_dir/<YYYY-MM> (which must exist)."""
    if partition is None:
        return landing_dir
    if not PARTITION_RE.match(partition):
        raise InvalidPartitionError(
            f"invalid partition {partition!r} for {landing_dir / partition}: expected a month folder name "
            "YYYY-MM, e.g. '2026-01'"
        )
    root = landing_dir / partition
    if not root.is_dir():
        raise MissingPartitionError(
            f"partition folder {root} does not exist: land this month's files in {root}/ "
            "(or run without a partition to read all of landing/)"
        )
    return root


def text_hash(text: str) -> str:
    """Content hash of normalised text: equal hashes are exact duplicates."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _top_reasons(reasons: Counter[str], n: int = 3) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in reasons.most_common(n)) or "none"


def _read_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path, required)
    if suffix == ".parquet":
        return read_parquet(path, required)
    return read_jsonl(path)


# ---------------------------------------------------------------------------
# The stage


def _classify(
    parsed: dict[str, Any] | Problem,
    seen_ids: set[str],
    required_fields: Sequence[str],
    min_text_chars: int,
    max_text_chars: int,
) -> tuple[dict[str, Any] | None, Problem | None]:
    """A reader's output → (staged row, None) or (None, why quarantined)."""
    if isinstance(parsed, Problem):
        return None, parsed
    row, problem = check_record(
        parsed, required_fields=required_fields, min_text_chars=min_text_chars, max_text_chars=max_text_chars
    )
    if row is not None and row["record_id"] is not None and row["record_id"] in seen_ids:
        return None, Problem("record_id", "duplicate_id", "record_id already staged from an earlier row")
    return row, problem


def ingest(
    *,
    landing_dir: Path,
    staging_dir: Path,
    quarantine_dir: Path,
    required_fields: Iterable[str] = ("record_id", "record_type", "text"),
    min_text_chars: int = 8,
    max_text_chars: int = 4000,
    glob: str = "**/*",
    partition: str | None = None,
    max_quarantine_share: float = 0.2,
) -> dict[str, Any]:
    """Stage every valid row of the landing files, quarantine the bad ones, drop exact duplicates; return counts.

    `partition` ("YYYY-MM") reads only landing_dir/<partition>/; source_file stays relative
    to landing_dir either way. Raises InvalidPartitionError / MissingPartitionError for a bad
    or absent partition, EmptyLandingError when there is no *.jsonl / *.csv / *.parquet file,
    and, after writing every output, QuarantineThresholdExceeded when more than
    `max_quarantine_share` of the rows were quarantined. Rerunning replaces the output files
    (written to temp files, then renamed).
    """
    landing_dir, staging_dir, quarantine_dir = Path(landing_dir), Path(staging_dir), Path(quarantine_dir)
    required = tuple(required_fields)
    if not 0.0 <= max_quarantine_share <= 1.0:
        raise ValueError(f"max_quarantine_share must be between 0 and 1, got {max_quarantine_share}")
    root = partition_root(landing_dir, partition)
    files, skipped = landing_files(landing_dir, glob, root)
    if not files:
        raise EmptyLandingError(
            f"no landing files under {root} (looked for *.jsonl, *.csv and *.parquet matching {glob!r}); "
            "put JSONL/CSV/Parquet files in landing/YYYY-MM/ or run `make demo` to generate sample data"
        )

    staged_path = staging_dir / STAGED_NAME
    duplicates_path = staging_dir / DUPLICATES_NAME
    quarantine_path = quarantine_dir / QUARANTINE_NAME
    rows_in = rows_valid = duplicates_removed = 0
    reasons: Counter[str] = Counter()
    seen_ids: set[str] = set()
    seen_texts: dict[str, str | None] = {}  # text hash → record_id of the row kept
    notes: list[str] = []
    files_empty = files_missing = 0

    with ExitStack() as stack:
        staged = _open_temp(staged_path, stack)
        duplicates = _open_temp(duplicates_path, stack)
        quarantined = _open_temp(quarantine_path, stack)
        for path in files:
            rel = path.relative_to(landing_dir).as_posix()
            file_in = file_bad = file_dup = 0
            try:
                if path.stat().st_size == 0:
                    files_empty += 1
                    notes.append(f"empty file: {rel}")
                    continue
                for line, raw, parsed in _read_rows(path, required):
                    rows_in += 1
                    file_in += 1
                    row, problem = _classify(parsed, seen_ids, required, min_text_chars, max_text_chars)
                    if problem is not None:
                        file_bad += 1
                        reasons[problem.reason] += 1
                        quarantined.write(_dumps({
                            "source_file": rel, "line": line, "field": problem.field,
                            "reason": problem.reason, "message": problem.message, "raw": raw,
                        }))
                        continue
                    assert row is not None
                    if row["record_id"] is not None:
                        seen_ids.add(row["record_id"])
                    digest = text_hash(row["text"] or "")
                    if digest in seen_texts:
                        # Same text under another id: a re-export, not a conflict. Keep the first,
                        # record the later one's id (never its text) for audit.
                        file_dup += 1
                        duplicates_removed += 1
                        duplicates.write(_dumps({
                            "record_id": row["record_id"], "source_file": rel, "source_line": line,
                            "duplicate_of": seen_texts[digest], "text_sha256": digest,
                        }))
                        continue
                    seen_texts[digest] = row["record_id"]
                    rows_valid += 1
                    staged.write(_dumps({**row, "source_file": rel, "source_line": line}))
            except FileNotFoundError:
                if path.exists():
                    raise  # something else is missing: not the landing file vanishing
                # Listed, then gone (a producer moved or deleted it mid-run): record it, keep going.
                # Rows already read from it (none, on POSIX, once open) stay accounted for.
                files_missing += 1
                notes.append(f"file disappeared during the run: {rel}")
                log.warning("ingest %s: the file disappeared after it was listed; skipped", rel)
                continue
            log.info("ingest %s: %d rows, %d quarantined, %d duplicates", rel, file_in, file_bad, file_dup)
        _commit(staged, staged_path)
        _commit(duplicates, duplicates_path)
        _commit(quarantined, quarantine_path)

    rows_quarantined = sum(reasons.values())
    if rows_in != rows_valid + rows_quarantined + duplicates_removed:  # the stage's promise
        raise AssertionError(
            f"ingest accounting broken: {rows_in} in != {rows_valid} valid + {rows_quarantined} quarantined "
            f"+ {duplicates_removed} duplicates"
        )
    result = {
        "rows_in": rows_in,
        "rows_valid": rows_valid,
        "rows_quarantined": rows_quarantined,
        "duplicates_removed": duplicates_removed,
        "files": len(files),
        "files_skipped": len(skipped),
        "files_empty": files_empty,
        "files_missing": files_missing,
        "partition": partition,
        "quarantine_share": round(rows_quarantined / rows_in, 6) if rows_in else 0.0,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "notes": notes,
        "staged_path": str(staged_path),
        "duplicates_path": str(duplicates_path),
        "quarantine_path": str(quarantine_path),
    }
    log.info(
        "ingest done: %d files (%d skipped, %d empty, %d missing), %d rows in, %d valid, %d quarantined %s, "
        "%d duplicates removed",
        len(files), len(skipped), files_empty, files_missing, rows_in, rows_valid, rows_quarantined,
        result["quarantine_reasons"], duplicates_removed,
    )
    if rows_in and rows_quarantined / rows_in > max_quarantine_share:
        share = rows_quarantined / rows_in
        raise QuarantineThresholdExceeded(
            f"ingest quarantined {rows_quarantined} of {rows_in} rows ({share:.1%}), above the threshold "
            f"data.max_quarantine_share = {max_quarantine_share:.1%}; top reasons: {_top_reasons(reasons)}. "
            f"Inspect {quarantine_path} (raw zone), fix or re-deliver the landing files, then rerun "
            "(or raise data.max_quarantine_share if this share is expected)",
            share=share, threshold=max_quarantine_share, quarantine_path=str(quarantine_path), result=result,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    from tasks import offline

    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, required=True, help="landing folder (JSONL/CSV/Parquet)")
    parser.add_argument("--staging", type=Path, required=True, help="folder for rows.jsonl")
    parser.add_argument("--quarantine", type=Path, required=True, help="folder for quarantine.jsonl")
    parser.add_argument("--required-fields", default="record_id,record_type,text", help="comma-separated")
    parser.add_argument("--min-text-chars", type=int, default=8)
    parser.add_argument("--max-text-chars", type=int, default=4000)
    parser.add_argument("--glob", default="**/*", help="files under --landing to consider")
    parser.add_argument("--partition", default=None, help="read only landing/<YYYY-MM>/ (default: all of it)")
    parser.add_argument("--max-quarantine-share", type=float, default=0.2,
                        help="fail when more than this share of rows is quarantined (0..1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = ingest(
            landing_dir=args.landing,
            staging_dir=args.staging,
            quarantine_dir=args.quarantine,
            required_fields=[f.strip() for f in args.required_fields.split(",") if f.strip()],
            min_text_chars=args.min_text_chars,
            max_text_chars=args.max_text_chars,
            glob=args.glob,
            partition=args.partition,
            max_quarantine_share=args.max_quarantine_share,
        )
    except (EmptyLandingError, InvalidPartitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except QuarantineThresholdExceeded as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
