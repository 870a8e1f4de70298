"""Right to erasure, on the raw side: the subjects named in erasure requests, and their keyed pseudonyms.

Requests land in `landing/<month>/erasure/` next to the month's records (ingest never reads them):

    *.csv   header `subject_id` (optional `id_type`, default monthly.erasure_id_type: MEMBER_ID)
    *.jsonl {"subject_id": "...", "id_type": "..."}
    *.txt   one subject id per line (# comments)

A subject id is raw personal data: it is read here and turned into the keyed pseudonym the masker
writes for it (tasks.pii), and only the pseudonyms cross into the clean zone, where the monthly
dataset build finds and drops the subject's records. Requests of earlier months keep applying.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.data.ingest import ERASURE_DIRNAME
from tasks.data.months import landed_months

ERASURE_SUFFIXES = (".csv", ".jsonl", ".txt")


class ErasureRequestError(ValueError):
    """An erasure request file that cannot be read; names the file, line and field (never the id)."""


@dataclass(frozen=True)
class Subject:
    id_type: str
    subject_id: str
    month: str
    source: str  # landing-relative file path and line, for error messages and counts


def read_erasure_requests(landing: Path, month: str, default_type: str) -> list[Subject]:
    """The subjects named in landing/<month>/erasure/; a bad line raises ErasureRequestError."""
    folder = landing / month / ERASURE_DIRNAME
    subjects: list[Subject] = []
    if not folder.is_dir():
        return subjects
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        rel = path.relative_to(landing).as_posix()
        suffix = path.suffix.lower()
        if suffix not in ERASURE_SUFFIXES:
            raise ErasureRequestError(
                f"{rel}: unsupported erasure request file (use .csv with a subject_id column, "
                ".jsonl with subject_id, or .txt with one id per line)"
            )
        for line, fields in _request_rows(path, rel, suffix):
            subject_id = (fields.get("subject_id") or "").strip() if isinstance(fields.get("subject_id"), str) else ""
            if not subject_id:
                raise ErasureRequestError(f"{rel}: line {line}: field subject_id is missing or empty")
            id_type = fields.get("id_type") or default_type
            if not isinstance(id_type, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", id_type.strip()):
                raise ErasureRequestError(f"{rel}: line {line}: field id_type must be an entity type such as MEMBER_ID")
            subjects.append(Subject(id_type.strip(), subject_id, month, f"{rel}:{line}"))
    return subjects


def _request_rows(path: Path, rel: str, suffix: str) -> Iterable[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ErasureRequestError(f"{rel}: not valid UTF-8") from None
    if suffix == ".txt":
        for number, raw in enumerate(text.splitlines(), 1):
            value = raw.split("#", 1)[0].strip()
            if value:
                yield number, {"subject_id": value}
    elif suffix == ".jsonl":
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                raise ErasureRequestError(f"{rel}: line {number}: not valid JSON") from None
            if not isinstance(obj, dict):
                raise ErasureRequestError(f"{rel}: line {number}: expected an object with subject_id")
            yield number, obj
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "subject_id" not in [f.strip() for f in reader.fieldnames]:
            raise ErasureRequestError(f"{rel}: line 1: the header has no subject_id column")
        for row in reader:
            yield reader.line_num, {(k or "").strip(): v for k, v in row.items()}


def erasure_subjects(landing: Path, month: str, default_type: str) -> tuple[list[Subject], list[Subject]]:
    """(requests of this month, requests of earlier months): both apply, so a subject erased once never
    comes back with a later delivery."""
    this, earlier = [], []
    for m in landed_months(landing, up_to=month):
        (this if m == month else earlier).extend(read_erasure_requests(landing, m, default_type))
    return this, earlier


def subject_pseudonyms(subjects: Iterable[Subject], key: bytes, recognizers_path: Path) -> dict[str, Subject]:
    """pseudonym → subject. Only types the masker pseudonymises can be found again in the clean zone."""
    from tasks.pii import load_spec, pseudonym

    spec = load_spec(recognizers_path)
    out = {}
    for s in subjects:
        op = spec.entities.get(s.id_type)
        if op is None or op.name != "pseudonym":
            how = "not masked" if op is None else f"masked with '{op.name}'"
            raise ErasureRequestError(
                f"{s.source}: field id_type {s.id_type} is {how} in {recognizers_path}; "
                "erasure finds records by the keyed pseudonym of the subject id, so the type "
                "must use the pseudonym operator"
            )
        out[pseudonym(s.id_type, s.subject_id, key)] = s
    return out
