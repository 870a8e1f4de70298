"""The LOCATION gazetteer: city, town, county and region names from a place list (safe_harbor profile).

spaCy's small model finds "Springfield" in a sentence but misses "VEHMAA" on an address line or
"Schwänberg" alone; the list (include/presidio/places, built from Faker's providers) catches
them. Only capitalised or all-capital words count ("reading" is not Reading), a listed phrase of
up to four words wins over its parts ("Beli Manastir"), and words in not_places.txt never match.
"""

from __future__ import annotations

import re
import unicodedata

from tasks.pii.names import english_lexicon, is_english, name_lists, read_word_list
from tasks.pii.spec import NameListSpec, PlaceSpec

# A word with inner apostrophes, hyphens or dots ("Cluj-Napoca", "'s-Graveland", "St.").
_WORD = re.compile(r"[^\W\d_]+(?:['’.-][^\W\d_]+)*")
_MAX_WORDS = 4
# A preposition of place, not at a sentence start: the words after it may be a place ("in Sauðarkrókur").
# After a company's abbreviation a full stop ends no sentence ("Vexa Inc. in Knutbyholm").
_PREPOSITION = re.compile(
    r"(?:(?<=[^.!?:\n\s] )|(?<=\bInc\. )|(?<=\bLtd\. )|(?<=\bCo\. )|(?<=\bCorp\. )|(?<=\bN\.V\. )|(?<=\bS\.A\. ))"
    r"(?:in|to|near|from)\s+"
)
_PLACES: dict[tuple, tuple[frozenset, frozenset]] = {}


def place_lists(spec: PlaceSpec) -> tuple[frozenset, frozenset]:
    """(places, never places), case-folded; loaded once per process and file version."""
    files = spec.places + spec.not_places
    key = (files, tuple(p.stat().st_mtime_ns for p in files))
    if key not in _PLACES:
        never = read_word_list(spec.not_places)
        _PLACES[key] = (read_word_list(spec.places) - never, never)
    return _PLACES[key]


def _capitalised(word: str) -> bool:
    return word[0].isupper() or word[:2] in ("'s", "’s")


# Address context, within 40 characters before a word: a street, address or residence word.
_ADDRESS_CUE = re.compile(
    r"(?i)\b(?:address|street|st|ave|avenue|road|rd|lane|ln|drive|dr|blvd|boulevard|way|court|ct|"
    r"lives?|living|moved|reside[sd]?|zip|postcode|city|town)\b"
)


def _address_context(text: str, start: int, spec: PlaceSpec) -> bool:
    return spec.english_model is not None and _ADDRESS_CUE.search(text, max(0, start - 40), start) is not None


def place_spans(text: str, spec: PlaceSpec) -> list[tuple[int, int]]:
    """(start, end) of every listed place in `text`, longest phrase first, never overlapping. In
    lower case only in address context (after_prepositions): a street, address or residence word
    shortly before ("12 elm st, utrecht", "moved to madrid")."""
    places, _ = place_lists(spec)
    words = list(_WORD.finditer(text))
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        lower = not _capitalised(words[i].group()) and _address_context(text, words[i].start(), spec)
        if not (_capitalised(words[i].group()) or lower):
            i += 1
            continue
        for n in range(min(_MAX_WORDS, len(words) - i), 0, -1):
            group = words[i : i + n]
            # Words of one phrase are next to each other: one space or a hyphen between them.
            if any(text[a.end() : b.start()] not in (" ", "-", " - ") for a, b in zip(group, group[1:])):
                continue
            phrase = " ".join(unicodedata.normalize("NFC", text[group[0].start() : group[-1].end()]).casefold().split())
            # In lower case, four letters or more: "utrecht" (WordNet knows famous places, so the
            # English word list cannot tell them apart; the address context and not_places.txt do).
            if phrase in places and (_capitalised(group[-1].group()) or (lower and len(phrase) >= 4)):
                spans.append((group[0].start(), group[-1].end()))
                i += n
                break
        else:
            i += 1
    return spans


def unknown_places(text: str, spec: PlaceSpec, names: NameListSpec | None = None) -> list[tuple[int, int]]:
    """Capitalised words after "in", "to", "near" or "from" (not at a sentence start) that are no
    English word (the spaCy model's word list), no never-place and none of `names` (listed names,
    which the PERSON gazetteer reads), four letters or more, not an acronym of four capitals or
    fewer unless one is no ASCII letter ("in ÖRBY"): "in Sauðarkrókur", "to GLAUBENDORF"; not "in Medicare",
    "to CPT", "in Gold Premier"."""
    if spec.english_model is None:
        return []
    lexicon, (_, never) = english_lexicon(spec.english_model), place_lists(spec)
    lists = name_lists(names) if names is not None else None

    def listed(word: str) -> bool:
        return word in never or (lists is not None and (word in lists.first or word in lists.last))

    def place_word(w: str) -> bool:
        return (
            w[0].isupper()
            and len(w) >= 4
            and not (w.isupper() and len(w) <= 4 and w.isascii())
            and not listed(w.casefold())
            and not is_english(w.casefold(), lexicon)
        )

    spans = []
    for m in _PREPOSITION.finditer(text):
        start = end = m.end()
        for _ in range(3):  # up to three words, a space or a hyphen apart
            w = _WORD.match(text, end)
            if w is None or not place_word(w.group()) or (end > start and text[end - 1] not in " -"):
                break
            end = w.end() + (text[w.end() : w.end() + 1] in (" ", "-"))
        end = end if end == start or text[end - 1].isalpha() else end - 1
        if end > start:
            spans.append((start, end))
    return spans


def place_recognizer(spec: PlaceSpec, language: str, names: NameListSpec | None = None):
    """A Presidio recognizer for LOCATION over place_spans and unknown_places (built here: Presidio
    loads lazily)."""
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
                for s, e in place_spans(text, spec) + unknown_places(text, spec, names)
            ]

    return PlaceListRecognizer(supported_entities=["LOCATION"], name="PlaceListRecognizer", supported_language=language)
