"""Ingest: read raw landing files (JSONL, CSV), normalise text, stage good rows, quarantine bad ones.

Raw zone in, raw zone out. Every input row ends in exactly one place:
`staging_dir/rows.jsonl` or `quarantine_dir/quarantine.jsonl` (with a reason code),
so `rows_in == rows_valid + rows_quarantined` always holds. The return value
holds counts and paths only; record text never leaves the two output files.
"""

from __future__ import annotations

import argparse
import csv
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
INGEST_SUFFIXES = (".jsonl", ".csv")
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
}


class EmptyLandingError(FileNotFoundError):
    """No JSONL/CSV file to ingest: nothing to train on, so fail loudly and say what to do."""


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


def _byte_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Physical lines (1-based number, bytes without the line ending); a leading BOM is dropped."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            yield number, line.rstrip(b"\r\n")


def _raw(line: bytes) -> str:
    return line.decode("utf-8", errors="backslashreplace")


def read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Decode and parse line by line, so one bad line costs one row, not the file. Blank lines are skipped."""
    for number, line in _byte_lines(path):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, _raw(line), Problem(None, "invalid_utf8", f"invalid UTF-8 byte at offset {exc.start}")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, text, Problem(None, "malformed_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
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


def read_csv(path: Path, required_fields: Sequence[str]) -> Iterator[tuple[int, str, dict[str, Any] | Problem]]:
    """Parse CSV records (quoted fields may span lines), decoding each physical line on its own.

    A wrong or missing header quarantines every record of the file, line 1 included,
    since without a header line 1 may itself be a data row.
    """
    consumed: list[tuple[int, bytes, bool]] = []  # (number, bytes, bad UTF-8) of the record being parsed

    def text_lines() -> Iterator[str]:
        for number, line in _byte_lines(path):
            try:
                text, bad = line.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad = _raw(line), True
            consumed.append((number, line, bad))
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
        raw = "\n".join(_raw(line) for _, line, _ in consumed)
        bad_bytes = any(bad for _, _, bad in consumed)
        if at_header:
            at_header = False
            header_problem = _header_problem(record, required_fields, bad_bytes)
            if header_problem is None and record is not None:
                header = [name.strip().lower() for name in record]
                continue
        if header_problem is not None:
            yield start, raw, header_problem
        elif error is not None or record is None:
            yield start, raw, Problem(None, "malformed_csv", error or "CSV row cannot be parsed")
        elif bad_bytes:
            yield start, raw, Problem(None, "invalid_utf8", "the row holds bytes that are not valid UTF-8")
        elif len(record) != len(header):
            message = f"row has {len(record)} columns; the header has {len(header)}"
            yield start, raw, Problem(None, "column_count", message)
        else:
            yield start, raw, dict(zip(header, record))


# ---------------------------------------------------------------------------
# Files and atomic outputs


def landing_files(landing_dir: Path, glob: str = "**/*") -> tuple[list[Path], list[Path]]:
    """(files to ingest, other files), both sorted by their path relative to landing_dir."""
    if not landing_dir.is_dir():
        return [], []
    found = sorted(
        (p for p in landing_dir.glob(glob) if p.is_file()), key=lambda p: p.relative_to(landing_dir).as_posix()
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
) -> dict[str, Any]:
    """Stage every valid row of the landing files and quarantine the rest; return counts and paths.

    Raises EmptyLandingError when landing_dir holds no *.jsonl / *.csv file.
    Rerunning replaces both output files (written to temp files, then renamed).
    """
    landing_dir, staging_dir, quarantine_dir = Path(landing_dir), Path(staging_dir), Path(quarantine_dir)
    required = tuple(required_fields)
    files, skipped = landing_files(landing_dir, glob)
    if not files:
        raise EmptyLandingError(
            f"no landing files under {landing_dir} (looked for *.jsonl and *.csv matching {glob!r}); "
            "put JSONL/CSV files in landing/YYYY-MM/ or run `make demo` to generate sample data"
        )

    staged_path = staging_dir / STAGED_NAME
    quarantine_path = quarantine_dir / QUARANTINE_NAME
    rows_in = rows_valid = 0
    reasons: Counter[str] = Counter()
    seen_ids: set[str] = set()
    notes: list[str] = []
    files_empty = 0

    with ExitStack() as stack:
        staged = _open_temp(staged_path, stack)
        quarantined = _open_temp(quarantine_path, stack)
        for path in files:
            rel = path.relative_to(landing_dir).as_posix()
            if path.stat().st_size == 0:
                files_empty += 1
                notes.append(f"empty file: {rel}")
                continue
            rows = read_csv(path, required) if path.suffix.lower() == ".csv" else read_jsonl(path)
            file_in = file_bad = 0
            for line, raw, parsed in rows:
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
                rows_valid += 1
                staged.write(_dumps({**row, "source_file": rel, "source_line": line}))
            log.info("ingest %s: %d rows, %d quarantined", rel, file_in, file_bad)
        _commit(staged, staged_path)
        _commit(quarantined, quarantine_path)

    rows_quarantined = sum(reasons.values())
    if rows_in != rows_valid + rows_quarantined:  # the accounting identity is the stage's promise
        raise AssertionError(
            f"ingest accounting broken: {rows_in} in != {rows_valid} valid + {rows_quarantined} quarantined"
        )
    result = {
        "rows_in": rows_in,
        "rows_valid": rows_valid,
        "rows_quarantined": rows_quarantined,
        "files": len(files),
        "files_skipped": len(skipped),
        "files_empty": files_empty,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "notes": notes,
        "staged_path": str(staged_path),
        "quarantine_path": str(quarantine_path),
    }
    log.info(
        "ingest done: %d files (%d skipped, %d empty), %d rows in, %d valid, %d quarantined %s",
        len(files), len(skipped), files_empty, rows_in, rows_valid, rows_quarantined, result["quarantine_reasons"],
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from tasks import offline

    offline.apply()
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, required=True, help="landing folder (JSONL/CSV, e.g. landing/2026-01/)")
    parser.add_argument("--staging", type=Path, required=True, help="folder for rows.jsonl")
    parser.add_argument("--quarantine", type=Path, required=True, help="folder for quarantine.jsonl")
    parser.add_argument("--required-fields", default="record_id,record_type,text", help="comma-separated")
    parser.add_argument("--min-text-chars", type=int, default=8)
    parser.add_argument("--max-text-chars", type=int, default=4000)
    parser.add_argument("--glob", default="**/*", help="files under --landing to consider")
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
        )
    except EmptyLandingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
