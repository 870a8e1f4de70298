"""Ingest: read raw landing files (JSONL, CSV, Parquet), normalise text, stage good rows, quarantine bad ones.

Raw zone in, raw zone out. Every input row ends in exactly one place:
`staging_dir/rows.jsonl`, `quarantine_dir/quarantine.jsonl` (with a reason code), or
`staging_dir/duplicates.jsonl` (a later exact copy of an earlier row's text; ids only), so
`rows_in == rows_valid + rows_quarantined + duplicates_removed` always holds. A Parquet
file that cannot be read at all counts as one row, quarantined at line 0. The return
value holds counts and paths only; record text never leaves the output files.

Landing is partitioned by month (`landing/YYYY-MM/`); `partition="2026-01"` reads only
that folder, so a scheduled run ingests exactly its own data interval.

Hostile input costs a row, never the stage: a line over `max_line_bytes` is skipped unparsed
(read in bounded pieces, never whole), and JSON nested deeper than MAX_JSON_DEPTH or holding
an integer over MAX_INT_DIGITS digits is quarantined. Symbolic links in landing are refused
(`follow_symlinks="inside"` reads a file link that resolves inside landing), and file names
are escaped wherever they are logged.
"""

from __future__ import annotations

import argparse
import csv
import errno
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from tasks.common.textnorm import clean as strip_invisible
from tasks.common.textnorm import shown

log = logging.getLogger(__name__)

STAGED_NAME = "rows.jsonl"
QUARANTINE_NAME = "quarantine.jsonl"
DUPLICATES_NAME = "duplicates.jsonl"
INGEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
# Right-to-erasure requests (subject ids) land in landing/YYYY-MM/erasure/: read by tasks.stages.monthly_refinetune, never ingested.
ERASURE_DIRNAME = "erasure"
PARTITION_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# Fields a staged row carries, besides its provenance (source_file, source_line).
RECORD_FIELDS = ("record_id", "record_type", "created_at", "text")
# A record is a flat object of short strings: these bounds only ever stop hostile or broken rows.
DEFAULT_MAX_LINE_BYTES = 1024 * 1024  # per physical line, checked before decoding or parsing
MAX_JSON_DEPTH = 64  # nesting levels of arrays and objects in one JSONL line
MAX_INT_DIGITS = 100  # digits in one JSON integer (Python refuses over 4300, and converting is quadratic)
RAW_PREFIX_BYTES = 1024  # what quarantine keeps of a line too long to parse
FOLLOW_SYMLINKS = ("never", "inside")

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
    "line_too_long": "the line is longer than data.max_line_bytes: not parsed; raw keeps its start only",
    "too_deep": f"the JSON line nests arrays/objects deeper than {MAX_JSON_DEPTH} levels",
    "number_too_large": f"the JSON line holds an integer of more than {MAX_INT_DIGITS} digits",
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

_HSPACE_RE = re.compile(r"[^\S\n]+")
_BLANK_LINES_RE = re.compile(r"\n\s*\n+")


def normalize_text(value: str, counts: Counter[str] | None = None) -> str:
    """Drop invisible characters, NFKC, collapse spaces, keep single line breaks, strip.

    Invisible characters (zero-width, bidi controls, soft hyphen, BOM, control characters; see
    tasks.common.textnorm, which the masker shares) go first: inside "MBR-12345678" they would hide it
    from masking. `counts` (if given) gains "invisible" (removed) and "spaces" (odd whitespace
    made a space). Line breaks carry structure the model must learn (FAQ "Question: …\nAnswer: …"
    lines), so they survive; runs of blank lines and every other whitespace run collapse.
    """
    cleaned = strip_invisible(value)
    if counts is not None:
        counts["invisible"] += cleaned.removed
        counts["spaces"] += cleaned.spaces
    value = unicodedata.normalize("NFKC", cleaned.text).replace("\r\n", "\n").replace("\r", " ")
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
    counts: Counter[str] | None = None,
    optional_fields: Sequence[str] = (),
) -> tuple[dict[str, Any] | None, Problem | None]:
    """Validate and normalise one parsed record: (row, None) when good, (None, problem) when not.

    `counts` gains what normalisation removed (see normalize_text). `optional_fields` (such as the
    privacy subject's `member_id`) are kept when present, checked like the others, None when absent."""
    for name in required_fields:
        if values.get(name) is None:
            return None, Problem(name, "missing_field", f"required field '{name}' is missing or null")
    row: dict[str, Any] = {}
    for name in dict.fromkeys([*RECORD_FIELDS, *required_fields, *optional_fields]):
        value = values.get(name)
        if value is None:
            row[name] = None
            continue
        if not isinstance(value, str):
            return None, Problem(name, "wrong_type", f"field '{name}' must be a string, got {type(value).__name__}")
        if not _encodable(value):
            return None, Problem(name, "invalid_utf8", f"field '{name}' holds an unpaired surrogate (not UTF-8)")
        normalized = normalize_text(value, counts)
        row[name] = normalized if name == "text" else " ".join(normalized.split())

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
    for name in ("created_at", *optional_fields):
        if row[name] == "":
            row[name] = None  # optional: blank means unknown (a CSV row of a record without a subject)
    return row, None


# ---------------------------------------------------------------------------
# Readers: each yields (line, raw, values-or-problem) per input row


_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 64 * 1024


def _open_landing(path: Path) -> BinaryIO:
    """Open a landing file for reading without following a symlink in its last component.

    The listing refused links already; O_NOFOLLOW closes the gap of a file swapped for a
    link after it was listed (the open fails with ELOOP instead of reading the target).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


def _byte_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes, bool, int | None]]:
    """Physical lines: (1-based number, bytes without the line ending, ended with a line break, size).

    `size` is None for a line within `max_line_bytes`; for a longer one it is the line's length
    in bytes, and the bytes are only its first RAW_PREFIX_BYTES: the rest is skipped in bounded
    reads, so no line is ever held whole. A leading BOM is dropped. Only a file's last line can
    lack a line break.
    """
    with _open_landing(path) as fh:
        number = 0
        while True:
            limit = max_line_bytes + (5 if number == 0 else 2)  # room for "\r\n" (and a BOM on line 1)
            line = fh.readline(limit)
            if not line:
                return
            number += 1
            cut = len(line) == limit and not line.endswith(b"\n")  # the read stopped mid-line: too long
            if number == 1 and line.startswith(_BOM):
                line = line[3:]
            body = line.rstrip(b"\r\n")
            if not cut and len(body) <= max_line_bytes:
                yield number, body, line.endswith(b"\n"), None
                continue
            size, last = len(line), line
            while not last.endswith(b"\n") and (last := fh.readline(_SKIP_CHUNK)):
                size += len(last)
            size -= len(last) - len(last.rstrip(b"\r\n"))
            yield number, body[:RAW_PREFIX_BYTES], last.endswith(b"\n"), size


def _line_too_long(size: int, max_line_bytes: int) -> Problem:
    return Problem(
        None,
        "line_too_long",
        f"line has {size} bytes, over the maximum of {max_line_bytes} "
        f"(data.max_line_bytes): not parsed; raw keeps its first "
        f"{RAW_PREFIX_BYTES} bytes only",
    )


def _truncated(detail: str) -> Problem:
    return Problem(
        None,
        "truncated_line",
        f"last line has no line ending and {detail}: the file looks cut off; re-deliver the complete file",
    )


def _raw(line: bytes) -> str:
    return line.decode("utf-8", errors="backslashreplace")


class _NumberTooLarge(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _NumberTooLarge(f"an integer has {len(digits.lstrip('-'))} digits; the maximum is {MAX_INT_DIGITS}")
    return int(digits)


# A JSON string (escapes included) or a bracket: what a nesting-depth scan needs to see.
_JSON_DEPTH_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _too_deep(text: str, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit`; brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= limit:  # the usual case: cannot nest that deep
        return False
    depth = 0
    for m in _JSON_DEPTH_TOKENS.finditer(text):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


def _parse_json(text: str) -> tuple[Any, Problem | None]:
    """json.loads with the depth and integer bounds checked: (value, None) or (None, problem).

    Without them a line nested 200k deep raises RecursionError and a 5,000-digit integer a
    ValueError, and either stopped the whole ingest. Problems name positions, never values.
    """
    too_deep = Problem(None, "too_deep", f"JSON nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    if _too_deep(text, MAX_JSON_DEPTH):
        return None, too_deep
    try:
        return json.loads(text, parse_int=_bounded_int), None
    except json.JSONDecodeError as exc:
        return None, Problem(None, "malformed_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
    except _NumberTooLarge as exc:
        return None, Problem(None, "number_too_large", str(exc))
    except RecursionError:  # the scan's approximation missed it (malformed strings): the parser's own limit
        return None, too_deep


def read_jsonl(
    path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Decode and parse line by line, so one bad line costs one row, not the file. Blank lines are skipped.

    An unterminated last line that does not parse is a cut-off file (`truncated_line`), not a
    bad record: the fix is re-delivering the file, not editing a row. A line over
    `max_line_bytes` is not decoded or parsed at all (`line_too_long`).
    """
    for number, line, ended, size in _byte_lines(path, max_line_bytes):
        if size is not None:
            yield number, _raw(line), _line_too_long(size, max_line_bytes)
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = Problem(None, "invalid_utf8", f"invalid UTF-8 byte at offset {exc.start}")
            yield number, _raw(line), problem if ended else _truncated("is not valid UTF-8")
            continue
        value, problem = _parse_json(text)
        if problem is not None:
            cut_off = not ended and problem.reason == "malformed_json"
            detail = problem.message.removeprefix("invalid JSON: ")
            yield number, text, _truncated(f"is not valid JSON ({detail})") if cut_off else problem
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


# One physical line as read_csv saw it: (number, bytes, bad UTF-8, ended with a line break, size if over the cap)
_CsvLine = tuple[int, bytes, bool, bool, int | None]


def read_csv(
    path: Path, required_fields: Sequence[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Parse CSV records (quoted fields may span lines), decoding each physical line on its own.

    A wrong or missing header quarantines every record of the file, line 1 included,
    since without a header line 1 may itself be a data row. A record with a line over
    `max_line_bytes` is quarantined (`line_too_long`); the csv module bounds a field to
    csv.field_size_limit() characters (a longer one is `malformed_csv`).
    """
    # the lines of the current record: filled by the text feed as the reader pulls them
    consumed: list[_CsvLine] = []
    reader = csv.reader(_csv_text_lines(path, max_line_bytes, consumed))
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
        too_long = next((size for *_, size in consumed if size is not None), None)
        if record == [] and too_long is None:
            continue  # blank line
        start = consumed[0][0]
        raw = "\n".join(_raw(line) for _, line, _, _, _ in consumed)
        bad_bytes = any(bad for _, _, bad, _, _ in consumed)
        cut_off = not consumed[-1][3]  # the record runs into the end of a file that lacks its last line break
        if at_header:
            at_header = False
            header_problem = _csv_header_check(record, required_fields, bad_bytes, too_long, max_line_bytes)
            if header_problem is None and record is not None:
                header = [name.strip().lower() for name in record]
                continue
        if header_problem is not None:
            yield start, raw, header_problem
        else:
            yield start, raw, _csv_row(record, error, header, raw, bad_bytes, cut_off, too_long, max_line_bytes)


def _csv_text_lines(path: Path, max_line_bytes: int, consumed: list[_CsvLine]) -> Iterator[str]:
    """Decoded lines for csv.reader; each line read is also appended to `consumed`, so the caller
    knows which physical lines (and their raw bytes) made up the record the reader returned."""
    for number, line, ended, size in _byte_lines(path, max_line_bytes):
        if size is not None:  # the parser sees an empty line in its place; the record is refused later
            consumed.append((number, line, False, ended, size))
            yield "\n"
            continue
        try:
            text, bad = line.decode("utf-8"), False
        except UnicodeDecodeError:
            text, bad = _raw(line), True
        consumed.append((number, line, bad, ended, None))
        yield text + "\n"


def _csv_header_check(
    record: list[str] | None,
    required_fields: Sequence[str],
    bad_bytes: bool,
    too_long: int | None,
    max_line_bytes: int,
) -> Problem | None:
    if too_long is not None:
        return Problem(
            "header",
            "bad_header",
            f"CSV header line is longer than {max_line_bytes} bytes (data.max_line_bytes)",
        )
    return _header_problem(record, required_fields, bad_bytes)


def _csv_row(
    record: list[str] | None,
    error: str | None,
    header: list[str],
    raw: str,
    bad_bytes: bool,
    cut_off: bool,
    too_long: int | None,
    max_line_bytes: int,
) -> dict[str, Any] | Problem:
    """A data record under a good header: its values by column, or why it is quarantined.

    A problem in a record that runs into the end of an unterminated file is reported as a cut-off
    file (`truncated_line`): the fix is re-delivering the file, not editing a row.
    """
    if too_long is not None:
        return _line_too_long(too_long, max_line_bytes)
    if error is not None or record is None:
        detail = error or "CSV row cannot be parsed"
        return _truncated(f"cannot be parsed ({detail})") if cut_off else Problem(None, "malformed_csv", detail)
    if bad_bytes:
        problem = Problem(None, "invalid_utf8", "the row holds bytes that are not valid UTF-8")
        return _truncated("is not valid UTF-8") if cut_off else problem
    if _quote_left_open(raw):
        return Problem(
            None,
            "truncated_line",
            "a quoted field is still open at the end of the file: the file looks cut off; re-deliver the complete file",
        )
    if len(record) != len(header):
        detail = f"row has {len(record)} columns; the header has {len(header)}"
        return _truncated(f"is incomplete ({detail})") if cut_off else Problem(None, "column_count", detail)
    return dict(zip(header, record))


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
        return Problem(
            missing[0],
            "bad_schema",
            f"Parquet file lacks required column(s) {', '.join(missing)}; "
            f"expected string columns {', '.join(RECORD_FIELDS)}",
        ), columns
    for name in dict.fromkeys([*RECORD_FIELDS, *required_fields]):
        if name in columns:
            arrow_type = schema.field(columns[name]).type
            if not _is_text_type(arrow_type):
                return Problem(
                    name,
                    "bad_schema",
                    f"Parquet column '{name}' has type {arrow_type}; it must be a "
                    "string column (cast it before landing the file)",
                ), columns
    return None, columns


def _detail(exc: BaseException) -> str:
    # Arrow's messages describe the file's structure (magic bytes, thrift, page sizes), not its values.
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _raw_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def read_parquet(
    path: Path, required_fields: Sequence[str], optional_fields: Sequence[str] = ()
) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Rows of a Parquet file; the line number is the 1-based row index.

    Unreadable footer → one `unreadable_file` entry at line 0 (its rows cannot be counted).
    Wrong schema → every row quarantined as `bad_schema` (raw = the row as JSON), or one
    line-0 entry when even that cannot be read. A row group that fails to decode costs its
    own rows (counted from the footer), not the rest of the file.
    """
    import pyarrow.parquet as pq

    with _open_landing(path) as fh:  # opened here, so a vanished file raises FileNotFoundError like the text readers
        try:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
        except _PARQUET_ERRORS as exc:
            yield (
                0,
                "",
                Problem(
                    None,
                    "unreadable_file",
                    f"not a readable Parquet file ({_detail(exc)}); re-deliver the complete file",
                ),
            )
            return
        schema_problem, columns = _parquet_schema_problem(schema, required_fields)
        # A good file: read only the record's columns. A bad one: read all, so raw keeps the whole row.
        wanted = (
            None
            if schema_problem
            else list(
                dict.fromkeys(
                    columns[name] for name in [*RECORD_FIELDS, *required_fields, *optional_fields] if name in columns
                )
            )
        )
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
                    yield (
                        0,
                        "",
                        Problem(
                            schema_problem.field,
                            "bad_schema",
                            f"{schema_problem.message}; the rows cannot be decoded either ({detail})",
                        ),
                    )
                    return
                problem = Problem(
                    None,
                    "unreadable_file",
                    f"row group {group} cannot be decoded ({detail}); re-deliver the complete file",
                )
                for _ in range(group_rows - done):
                    row_number += 1
                    yield row_number, "", problem


# ---------------------------------------------------------------------------
# Files and atomic outputs


_LINK = "a symbolic link (data.follow_symlinks is 'never')"
_DIR_LINK = "a symbolic link to a directory (never followed)"
_LINK_OUTSIDE = "a symbolic link that does not resolve to a file inside landing"


def symlink_refusal(path: Path, landing_dir: Path, follow_symlinks: str = "never") -> str | None:
    """Why `path` (under landing_dir) may not be read because of a symbolic link; None if it may.

    A link can point anywhere (a secret file, /dev/zero), so by default none is read. With
    follow_symlinks="inside" a link to a file is read when it resolves to a regular file inside
    landing_dir. A linked directory is never entered: it may loop, or lead out of landing.
    """
    parts = path.relative_to(landing_dir).parts
    here = landing_dir
    for depth, part in enumerate(parts, start=1):
        here = here / part
        if here.is_symlink():
            if depth < len(parts) or here.is_dir():
                return _DIR_LINK
            break
    else:
        return None
    if follow_symlinks != "inside":
        return _LINK
    target = Path(os.path.realpath(path))  # realpath, not resolve(): a link loop must not raise
    inside = target.is_relative_to(os.path.realpath(landing_dir)) and target.is_file()
    return None if inside else _LINK_OUTSIDE


def refused_links(landing_dir: Path, root: Path, follow_symlinks: str = "never") -> dict[str, str]:
    """Every symbolic link at or under `root` that will not be read: {path relative to landing_dir: why}.

    A linked directory is listed once and not entered; erasure folders are tasks.stages.monthly_refinetune's.
    """
    refused: dict[str, str] = {}
    if root != landing_dir and symlink_refusal(root, landing_dir) is not None:
        return {root.relative_to(landing_dir).as_posix(): _DIR_LINK}
    for folder, dirnames, filenames in os.walk(root):  # followlinks=False: linked directories are not entered
        dirnames[:] = [d for d in dirnames if d != ERASURE_DIRNAME]
        for name in dirnames + filenames:
            path = Path(folder) / name
            if path.is_symlink() and (why := symlink_refusal(path, landing_dir, follow_symlinks)) is not None:
                refused[path.relative_to(landing_dir).as_posix()] = why
    return dict(sorted(refused.items()))


def landing_files(
    landing_dir: Path, glob: str = "**/*", root: Path | None = None, *, follow_symlinks: str = "never"
) -> tuple[list[Path], list[Path]]:
    """(files to ingest, other files) under `root` (default landing_dir), sorted by path relative to landing_dir.

    Files behind a symbolic link are left out (see symlink_refusal; refused_links lists them).
    """
    root = landing_dir if root is None else root
    if not root.is_dir():
        return [], []
    found = sorted(
        (
            p
            for p in root.glob(glob)
            if p.is_file()
            and ERASURE_DIRNAME not in p.relative_to(landing_dir).parts[:-1]
            and symlink_refusal(p, landing_dir, follow_symlinks) is None
        ),
        key=lambda p: p.relative_to(landing_dir).as_posix(),
    )
    wanted = [p for p in found if p.suffix.lower() in INGEST_SUFFIXES]
    others = [p for p in found if p.suffix.lower() not in INGEST_SUFFIXES]
    return wanted, others


def _open_temp(target: Path, stack: ExitStack) -> IO[str]:
    """A temp file next to `target`; renamed over it only when the whole ingest succeeded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the ExitStack callback below (or _commit)
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


def _read_rows(
    path: Path,
    required: Sequence[str],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    optional: Sequence[str] = (),
) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path, required, max_line_bytes)
    if suffix == ".parquet":
        return read_parquet(path, required, optional)
    return read_jsonl(path, max_line_bytes)


# ---------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class _Rules:
    """What a row must satisfy, from the stage's arguments."""

    required: tuple[str, ...]
    min_text_chars: int
    max_text_chars: int
    max_line_bytes: int
    optional: tuple[str, ...] = ()  # kept when present: the privacy subject's raw field


@dataclass
class _Tally:
    """What the stage counts while it reads: counts, ids, hashes and paths, never row text."""

    rows_in: int = 0
    rows_valid: int = 0
    duplicates_removed: int = 0
    files_empty: int = 0
    files_missing: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    normalised: Counter[str] = field(default_factory=Counter)  # over staged rows: invisible, spaces, rows
    seen_ids: set[str] = field(default_factory=set)
    seen_texts: dict[str, str | None] = field(default_factory=dict)  # text hash → record_id of the row kept
    notes: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # path relative to landing → why not read


def _classify(
    parsed: dict[str, Any] | Problem, seen_ids: set[str], rules: _Rules, counts: Counter[str]
) -> tuple[dict[str, Any] | None, Problem | None]:
    """A reader's output → (staged row, None) or (None, why quarantined)."""
    if isinstance(parsed, Problem):
        return None, parsed
    row, problem = check_record(
        parsed,
        required_fields=rules.required,
        min_text_chars=rules.min_text_chars,
        max_text_chars=rules.max_text_chars,
        counts=counts,
        optional_fields=rules.optional,
    )
    if row is not None and row["record_id"] is not None and row["record_id"] in seen_ids:
        return None, Problem("record_id", "duplicate_id", "record_id already staged from an earlier row")
    return row, problem


def _source_name(rel: str) -> str:
    # A name that is not UTF-8 reaches Python with surrogate escapes, which no UTF-8 output can hold.
    return rel if _encodable(rel) else shown(rel)


def _ingest_file(
    path: Path,
    rel: str,
    rules: _Rules,
    tally: _Tally,
    out: tuple[IO[str], IO[str], IO[str]],
) -> tuple[int, int, int]:
    """Read one landing file into (staged, duplicates, quarantined); return its (rows, quarantined, duplicates)."""
    staged, duplicates, quarantined = out
    source = _source_name(rel)
    file_in = file_bad = file_dup = 0
    for line, raw, parsed in _read_rows(path, rules.required, rules.max_line_bytes, rules.optional):
        tally.rows_in += 1
        file_in += 1
        found: Counter[str] = Counter()
        row, problem = _classify(parsed, tally.seen_ids, rules, found)
        if problem is not None:
            file_bad += 1
            tally.reasons[problem.reason] += 1
            quarantined.write(
                _dumps(
                    {
                        "source_file": source,
                        "line": line,
                        "field": problem.field,
                        "reason": problem.reason,
                        "message": problem.message,
                        "raw": raw,
                    }
                )
            )
            continue
        assert row is not None
        if row["record_id"] is not None:
            tally.seen_ids.add(row["record_id"])
        digest = text_hash(row["text"] or "")
        if digest in tally.seen_texts:
            # Same text under another id: a re-export, not a conflict. Keep the first,
            # record the later one's id (never its text) for audit.
            file_dup += 1
            tally.duplicates_removed += 1
            duplicates.write(
                _dumps(
                    {
                        "record_id": row["record_id"],
                        "source_file": source,
                        "source_line": line,
                        "duplicate_of": tally.seen_texts[digest],
                        "text_sha256": digest,
                    }
                )
            )
            continue
        tally.seen_texts[digest] = row["record_id"]
        tally.rows_valid += 1
        tally.normalised.update(found)
        tally.normalised["rows"] += int(found["invisible"] > 0)
        staged.write(_dumps({**row, "source_file": source, "source_line": line}))
    return file_in, file_bad, file_dup


def _read_landing_file(
    path: Path,
    landing_dir: Path,
    rules: _Rules,
    follow_symlinks: str,
    tally: _Tally,
    out: tuple[IO[str], IO[str], IO[str]],
) -> None:
    """One listed file: refused, empty, vanished, or read into the outputs; logged under its escaped name."""
    rel = path.relative_to(landing_dir).as_posix()
    why = symlink_refusal(path, landing_dir, follow_symlinks)  # again: a link may have appeared since the listing
    if why is not None:
        tally.refused[rel] = why
        return
    source = Path(os.path.realpath(path)) if path.is_symlink() else path  # an accepted link: read its target
    try:
        if source.stat().st_size == 0:
            tally.files_empty += 1
            tally.notes.append(f"empty file: {shown(rel)}")
            return
        counts = _ingest_file(source, rel, rules, tally, out)
    except FileNotFoundError:
        if source.exists():
            raise  # something else is missing: not the landing file vanishing
        # Listed, then gone (a producer moved or deleted it mid-run): record it, keep going.
        # Rows already read from it (none, on POSIX, once open) stay accounted for.
        tally.files_missing += 1
        tally.notes.append(f"file disappeared during the run: {shown(rel)}")
        log.warning("ingest %s: the file disappeared after it was listed; skipped", shown(rel))
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (EMLINK on the BSDs)
            raise
        tally.refused[rel] = _LINK  # swapped for a link after the listing: nothing was read
        return
    log.info("ingest %s: %d rows, %d quarantined, %d duplicates", shown(rel), *counts)


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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    follow_symlinks: str = "never",
    optional_fields: Iterable[str] = (),
) -> dict[str, Any]:
    """Stage every valid row of the landing files, quarantine the bad ones, drop exact duplicates; return counts.

    `partition` ("YYYY-MM") reads only landing_dir/<partition>/; source_file stays relative
    to landing_dir either way. A line over `max_line_bytes` is quarantined unparsed. Symbolic
    links are not read (`follow_symlinks="inside"`: a file link that resolves inside landing
    is); each refused one is counted in `files_refused` and named in `notes`. Raises
    InvalidPartitionError / MissingPartitionError for a bad or absent partition,
    EmptyLandingError when there is no *.jsonl / *.csv / *.parquet file, and, after writing
    every output, QuarantineThresholdExceeded when more than `max_quarantine_share` of the rows
    were quarantined. Rerunning replaces the output files (written to temp files, then renamed).
    """
    landing_dir, staging_dir, quarantine_dir = Path(landing_dir), Path(staging_dir), Path(quarantine_dir)
    if not 0.0 <= max_quarantine_share <= 1.0:
        raise ValueError(f"max_quarantine_share must be between 0 and 1, got {max_quarantine_share}")
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be a whole number of bytes >= 1, got {max_line_bytes!r}")
    if follow_symlinks not in FOLLOW_SYMLINKS:
        raise ValueError(f"follow_symlinks must be one of {FOLLOW_SYMLINKS}, got {follow_symlinks!r}")
    rules = _Rules(tuple(required_fields), min_text_chars, max_text_chars, max_line_bytes, tuple(optional_fields))
    root = partition_root(landing_dir, partition)
    tally = _Tally(refused=refused_links(landing_dir, root, follow_symlinks))
    files, skipped = landing_files(landing_dir, glob, root, follow_symlinks=follow_symlinks)
    if not files:
        links = f"; {len(tally.refused)} symbolic link(s) there were refused" if tally.refused else ""
        raise EmptyLandingError(
            f"no landing files under {root} (looked for *.jsonl, *.csv and *.parquet matching {glob!r}{links}); "
            "put JSONL/CSV/Parquet files in landing/YYYY-MM/ or run `make demo` to generate sample data"
        )

    staged_path = staging_dir / STAGED_NAME
    duplicates_path = staging_dir / DUPLICATES_NAME
    quarantine_path = quarantine_dir / QUARANTINE_NAME
    with ExitStack() as stack:
        out = (_open_temp(staged_path, stack), _open_temp(duplicates_path, stack), _open_temp(quarantine_path, stack))
        for path in files:
            _read_landing_file(path, landing_dir, rules, follow_symlinks, tally, out)
        for handle, target in zip(out, (staged_path, duplicates_path, quarantine_path)):
            _commit(handle, target)

    for rel, why in sorted(tally.refused.items()):
        tally.notes.append(f"refused {shown(rel)}: {why}")
        log.warning("ingest %s: not read, %s", shown(rel), why)
    result = _result(
        tally,
        files=len(files),
        skipped=len(skipped),
        partition=partition,
        paths=(staged_path, duplicates_path, quarantine_path),
    )
    _check_quarantine_share(result, tally, max_quarantine_share)
    return result


def _result(tally: _Tally, *, files: int, skipped: int, partition: str | None, paths: tuple[Path, Path, Path]) -> dict:
    """The stage's counts and paths (never row text); checks its promise rows_in = valid + quarantined + duplicates."""
    rows_quarantined = sum(tally.reasons.values())
    if tally.rows_in != tally.rows_valid + rows_quarantined + tally.duplicates_removed:
        raise AssertionError(
            f"ingest accounting broken: {tally.rows_in} in != {tally.rows_valid} valid + {rows_quarantined} "
            f"quarantined + {tally.duplicates_removed} duplicates"
        )
    staged_path, duplicates_path, quarantine_path = paths
    result = {
        "rows_in": tally.rows_in,
        "rows_valid": tally.rows_valid,
        "rows_quarantined": rows_quarantined,
        "duplicates_removed": tally.duplicates_removed,
        "files": files,
        "files_skipped": skipped,
        "files_empty": tally.files_empty,
        "files_missing": tally.files_missing,
        "files_refused": len(tally.refused),
        "partition": partition,
        "quarantine_share": round(rows_quarantined / tally.rows_in, 6) if tally.rows_in else 0.0,
        "quarantine_reasons": dict(sorted(tally.reasons.items())),
        # What normalisation took out of the staged rows (tasks.common.textnorm): hidden characters are
        # how personal data slips past masking, so a sudden rise is worth a look.
        "invisible_chars_removed": tally.normalised["invisible"],
        "rows_with_invisible_chars": tally.normalised["rows"],
        "odd_spaces_replaced": tally.normalised["spaces"],
        "notes": tally.notes,
        "staged_path": str(staged_path),
        "duplicates_path": str(duplicates_path),
        "quarantine_path": str(quarantine_path),
    }
    log.info(
        "ingest done: %d files (%d skipped, %d empty, %d missing, %d refused), %d rows in, %d valid, "
        "%d quarantined %s, %d duplicates removed, %d invisible characters removed from %d rows",
        files,
        skipped,
        tally.files_empty,
        tally.files_missing,
        len(tally.refused),
        tally.rows_in,
        tally.rows_valid,
        rows_quarantined,
        result["quarantine_reasons"],
        tally.duplicates_removed,
        result["invisible_chars_removed"],
        result["rows_with_invisible_chars"],
    )
    return result


def _check_quarantine_share(result: dict, tally: _Tally, max_share: float) -> None:
    """After every output is written: too large a quarantined share stops the run, naming the top reasons."""
    rows_in, rows_quarantined = result["rows_in"], result["rows_quarantined"]
    if rows_in and rows_quarantined / rows_in > max_share:
        share = rows_quarantined / rows_in
        raise QuarantineThresholdExceeded(
            f"ingest quarantined {rows_quarantined} of {rows_in} rows ({share:.1%}), above the threshold "
            f"data.max_quarantine_share = {max_share:.1%}; top reasons: {_top_reasons(tally.reasons)}. "
            f"Inspect {result['quarantine_path']} (raw zone), fix or re-deliver the landing files, then rerun "
            "(or raise data.max_quarantine_share if this share is expected)",
            share=share,
            threshold=max_share,
            quarantine_path=result["quarantine_path"],
            result=result,
        )


def main(argv: list[str] | None = None) -> int:
    from tasks.common import offline

    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.data.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, required=True, help="landing folder (JSONL/CSV/Parquet)")
    parser.add_argument("--staging", type=Path, required=True, help="folder for rows.jsonl")
    parser.add_argument("--quarantine", type=Path, required=True, help="folder for quarantine.jsonl")
    parser.add_argument("--required-fields", default="record_id,record_type,text", help="comma-separated")
    parser.add_argument("--min-text-chars", type=int, default=8)
    parser.add_argument("--max-text-chars", type=int, default=4000)
    parser.add_argument("--glob", default="**/*", help="files under --landing to consider")
    parser.add_argument("--partition", default=None, help="read only landing/<YYYY-MM>/ (default: all of it)")
    parser.add_argument(
        "--max-quarantine-share",
        type=float,
        default=0.2,
        help="fail when more than this share of rows is quarantined (0..1)",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="quarantine longer lines unparsed (default %(default)s)",
    )
    parser.add_argument(
        "--follow-symlinks",
        choices=FOLLOW_SYMLINKS,
        default="never",
        help="never read symbolic links, or read those resolving inside --landing",
    )
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
            max_line_bytes=args.max_line_bytes,
            follow_symlinks=args.follow_symlinks,
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
