"""One JSONL reader for the stages: errors name the file, line and field, never a value."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def read_objects(path: Path, *, fields: Sequence[str] = (), hint: str = "") -> Iterator[dict[str, Any]]:
    """Yield each non-blank line as a JSON object whose `fields` are non-empty strings.

    `hint` ends every error message with what to do (e.g. "; re-run ingest").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found{hint}")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg}){hint}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object with fields {list(fields)}{hint}")
            for field in fields:
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{path}:{line_no}: field '{field}' is missing or not a non-empty string{hint}")
            yield row


def read_rows(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read a JSONL file whose rows must hold `fields` as non-empty strings (errors name file, line, field)."""
    rows = list(read_objects(path, fields=fields))
    if not rows:
        raise ValueError(f"{path}: no rows; expected JSONL lines with fields {list(fields)}")
    return rows
