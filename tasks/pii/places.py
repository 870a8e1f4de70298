"""The LOCATION gazetteer: city, town, county and region names from a place list (safe_harbor profile).

spaCy's small model finds "Springfield" in a sentence but misses "VEHMAA" on an address line or
"Schwänberg" alone; the list (include/presidio/places, built from Faker's providers) catches
them. Only capitalised or all-capital words count ("reading" is not Reading), a listed phrase of
up to four words wins over its parts ("Beli Manastir"), and words in not_places.txt never match.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from tasks.pii.spec import PlaceSpec

# A word with inner apostrophes, hyphens or dots ("Cluj-Napoca", "'s-Graveland", "St.").
_WORD = re.compile(r"[^\W\d_]+(?:['’.-][^\W\d_]+)*")
_MAX_WORDS = 4
_PLACES: dict[tuple, tuple[frozenset, frozenset]] = {}


def _read(paths: tuple[Path, ...]) -> frozenset[str]:
    words = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                words.add(" ".join(unicodedata.normalize("NFC", line).casefold().split()))
    return frozenset(words)


def place_lists(spec: PlaceSpec) -> tuple[frozenset, frozenset]:
    """(places, never places), case-folded; loaded once per process and file version."""
    files = spec.places + spec.not_places
    key = (files, tuple(p.stat().st_mtime_ns for p in files))
    if key not in _PLACES:
        never = _read(spec.not_places)
        _PLACES[key] = (_read(spec.places) - never, never)
    return _PLACES[key]


def _capitalised(word: str) -> bool:
    return word[0].isupper() or word[:2] in ("'s", "’s")


def place_spans(text: str, spec: PlaceSpec) -> list[tuple[int, int]]:
    """(start, end) of every listed place in `text`, longest phrase first, never overlapping."""
    places, _ = place_lists(spec)
    words = list(_WORD.finditer(text))
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        if not _capitalised(words[i].group()):
            i += 1
            continue
        for n in range(min(_MAX_WORDS, len(words) - i), 0, -1):
            group = words[i : i + n]
            # Words of one phrase are next to each other: one space or a hyphen between them.
            if any(text[a.end() : b.start()] not in (" ", "-", " - ") for a, b in zip(group, group[1:])):
                continue
            phrase = " ".join(unicodedata.normalize("NFC", text[group[0].start() : group[-1].end()]).casefold().split())
            if phrase in places and _capitalised(group[-1].group()):
                spans.append((group[0].start(), group[-1].end()))
                i += n
                break
        else:
            i += 1
    return spans


def place_recognizer(spec: PlaceSpec, language: str):
    """A Presidio recognizer for LOCATION over place_spans (built here: Presidio loads lazily)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class PlaceListRecognizer(EntityRecognizer):
        """LOCATION from the place list (include/presidio/places): places spaCy's NER misses."""

        def load(self) -> None:
            place_lists(spec)

        def analyze(self, text, entities, nlp_artifacts=None):
            if "LOCATION" not in entities:
                return []
            metadata = {
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            }
            return [
                RecognizerResult("LOCATION", s, e, spec.score, recognition_metadata=dict(metadata))
                for s, e in place_spans(text, spec)
            ]

    return PlaceListRecognizer(supported_entities=["LOCATION"], name="PlaceListRecognizer", supported_language=language)
