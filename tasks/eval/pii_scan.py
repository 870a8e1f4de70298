"""Scan everything a run leaves outside the raw zone for known raw PII values.

The proof behind "raw text never leaves the raw zone": given the raw values of the source
(the generator's key in the demo, or an export from the source system), every file under
the data root except the raw zone (landing, staging, quarantine, synth, secrets) is read —
datasets, the DVC cache and remote, MLflow's database and artifacts, Airflow's database and
logs, run folders, reports — and each value found is counted by location. Values themselves
are never printed, only their type and where they were found.

    python -m tasks.eval.pii_scan --values $PFT_HOME/synth/pii_key.json [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

RAW_ZONE = ("landing", "staging", "quarantine", "synth", "secrets")
# Model weights and archives hold no text; everything else (JSON, logs, SQLite, HTML, git objects
# of the data registry are compressed, so the DVC cache / remote are read instead) is scanned.
SKIP_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".gz", ".zip", ".pkl", ".npy"}
# Tokens split on whitespace and the punctuation that wraps values in JSON, logs and markup.
_WORD = re.compile(r"[^\s\"'()\[\]{}<>,;:=|]+")


# Dates of events near the present (the generator's and Safe Harbor's): in logs and databases the same strings
# are timestamps ("2026-12-07"), so a match by value is no evidence of a leak.
EVENT_DATE_TYPES = frozenset({"DATE", "SERVICE_DATE", "ADMISSION_DATE", "DISCHARGE_DATE", "DATE_OF_DEATH"})


def chance_prone(kind: str, value: str) -> bool:
    """A value that machine text holds by chance: a number of fewer than 6 digits (a 5-digit ZIP code is also a
    port, a process id, a byte count) or an event date (EVENT_DATE_TYPES). Scans of logs and databases skip
    them; whether masking removed them is checked on the masked records themselves, with every value."""
    return (value.isdigit() and len(value) < 6) or kind in EVENT_DATE_TYPES


def load_values(path: Path, min_chars: int = 4, *, keep_chance_prone: bool = False) -> list[tuple[str, str]]:
    """(type, value) pairs from a JSON list of {"type", "value"}; values shorter than min_chars are dropped
    (a 3-character fragment matches by chance), and so are `chance_prone` ones unless `keep_chance_prone`
    (for masked record text, where a surviving ZIP code or date is a masking miss)."""
    from tasks.eval.safety import load_raw_values  # the same reader (and errors) as the leakage evaluation

    rows = [(r["type"], r["value"]) for r in load_raw_values(Path(path)) if len(r["value"]) >= min_chars]
    return rows if keep_chance_prone else [(k, v) for k, v in rows if not chance_prone(k, v)]


class Matcher:
    """Finds which of many literal values occur in a text: index each value by its first token (and
    where that token sits in the value), so a text is read once, token by token."""

    def __init__(self, values: list[tuple[str, str]]):
        self.by_first: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for kind, value in values:
            first = _WORD.search(value)
            if first is not None:
                self.by_first[first.group()].append((kind, value, first.start()))

    def find(self, text: str) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for match in _WORD.finditer(text):
            token = match.group()
            # a token may carry the sentence's full stop: "… ssn 123-45-6789."
            for key in {token, token.rstrip(".!?")}:
                for kind, value, offset in self.by_first.get(key, ()):
                    if text.startswith(value, match.start() - offset):
                        found.add((kind, value))
        return found


def scan(home: Path, values: list[tuple[str, str]]) -> dict:
    """{"files_scanned", "bytes_scanned", "hits": {relative path: {type: count}}, "values_found"}."""
    home = Path(home)
    matcher = Matcher(values)
    hits: dict[str, Counter] = {}
    files = total = 0
    distinct: set[str] = set()
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if not path.is_file() or rel.parts[0] in RAW_ZONE or path.suffix in SKIP_SUFFIXES:
            continue
        data = path.read_bytes()
        files, total = files + 1, total + len(data)
        found = matcher.find(data.decode("utf-8", errors="replace"))
        if found:
            hits[str(rel)] = Counter(kind for kind, _ in found)
            distinct |= {value for _, value in found}
    return {
        "files_scanned": files,
        "bytes_scanned": total,
        "hits": {k: dict(v) for k, v in hits.items()},
        "values_found": len(distinct),
    }


def main(argv: list[str] | None = None) -> int:
    from tasks.config import Paths

    parser = argparse.ArgumentParser(prog="python -m tasks.eval.pii_scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="data root (default: $PFT_HOME or .local)")
    parser.add_argument("--values", type=Path, required=True, help="JSON list of {type, value}: the raw PII values")
    args = parser.parse_args(argv)
    values = load_values(args.values)
    result = scan(Paths(args.home).home, values)
    result["values_skipped_as_chance_prone"] = len(load_values(args.values, keep_chance_prone=True)) - len(values)
    print(json.dumps(result, indent=2))
    print(
        f"{result['values_found']} raw PII values found outside the raw zone in {len(result['hits'])} files "
        f"({result['files_scanned']} files, {result['bytes_scanned'] / 1e6:.1f} MB scanned)",
        file=sys.stderr,
    )
    return 1 if result["hits"] else 0


if __name__ == "__main__":
    sys.exit(main())
