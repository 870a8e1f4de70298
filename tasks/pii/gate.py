"""The NER gate: which parts of a text the spaCy NER reads.

The NER only feeds PERSON here, so a sentence without a capitalised word that may be a name gives
it nothing to find; that is most of the text in plan documents and FAQs, and it is not read.
"""

from __future__ import annotations

import functools
import re

from tasks.pii.names import name_lists
from tasks.pii.places import place_lists
from tasks.pii.spec import MaskSpec, NameListSpec, PlaceSpec, terms_regex

# Sentence ends: ". ", "? ", line breaks, a template's literal "\\n".
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”)\]]*\s+|\n+|\\n")
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Sr|Jr|No|Nr|vs|etc|approx|Inc|Ltd|Co|e\.g|i\.e)|\b[A-Z])\.$", re.IGNORECASE
)
_GATE_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


class NerGate:
    """Which parts of a text the spaCy NER reads: the sentences holding a capitalised word that
    may be a name. The NER only feeds PERSON here; a sentence whose capitalised words are all
    stop words, not_names words that no name list has, parts of a domain term ("Silver Saver")
    or all capitals ("CPT") gives it nothing to find, and it is most of the text in plan
    documents and FAQs. Consecutive kept sentences are read together (the NER sees their context).
    """

    def __init__(self, skip: frozenset, terms: re.Pattern | None, any_case: frozenset = frozenset()):
        # any_case: listed names and places that may hold a name or place in lower case or
        # capitals too ("maria gonzalez", "LAHTI"; mask.ner_any_case)
        self.skip, self.terms, self.any_case = skip, terms, any_case

    def _may_hold_a_name(self, text: str, start: int, end: int, blanked: list[tuple[int, int]]) -> bool:
        for m in _GATE_WORD.finditer(text, start, end):
            w = m.group()
            cased = w[0].isupper() and not w.isupper()
            if (
                (cased or w.casefold() in self.any_case)
                and w.casefold() not in self.skip
                and not any(s <= m.start() < e for s, e in blanked)
            ):
                return True
        return False

    def segments(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of the parts of `text` the NER must read."""
        blanked = [m.span() for m in self.terms.finditer(text)] if self.terms is not None else []
        bounds, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            if m.group()[0] in ".!?" and _ABBREVIATION.search(text, max(0, m.start() - 8), m.start() + 1):
                continue  # "Mr. Gábor", "Maria B. Lopez": not a sentence end
            bounds.append((start, m.end()))
            start = m.end()
        if start < len(text):
            bounds.append((start, len(text)))
        keep = [self._may_hold_a_name(text, s, e, blanked) for s, e in bounds]
        # A kept sentence is read with its neighbours: the NER's view reaches a few words past
        # a sentence end, and a name at a line start ("Fumio Okuno\n...") needs that.
        context = [keep[k] or (k > 0 and keep[k - 1]) or (k + 1 < len(keep) and keep[k + 1]) for k in range(len(keep))]
        out: list[tuple[int, int]] = []
        for (s, e), needed in zip(bounds, context, strict=True):
            if needed:
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)  # next to the previous kept sentence: one segment
                else:
                    out.append((s, e))
        return out


def ner_gate(spec: MaskSpec) -> NerGate | None:
    """The gate for `spec`, or None when the YAML turns it off (`mask.ner_gate: false`)."""
    if not spec.ner_gate:
        return None
    if spec.name_lists is not None:
        skip = name_lists(spec.name_lists).gate_skip
    else:
        from spacy.lang.en.stop_words import STOP_WORDS

        skip = frozenset(w.casefold() for w in STOP_WORDS)
    return NerGate(skip, terms_regex(spec.domain_terms), any_case_words(spec))


def any_case_words(spec: MaskSpec) -> frozenset:
    """With mask.ner_any_case, the words that may be a name or a place in any casing: listed first
    and last names and one-word places, three letters or more, never a never-name. Empty otherwise."""
    if not spec.ner_any_case:
        return frozenset()
    return _any_case_words(spec.name_lists, spec.places)


@functools.lru_cache(maxsize=8)
def _any_case_words(names: NameListSpec | None, places: PlaceSpec | None) -> frozenset:
    words: set[str] = set()
    never: frozenset = frozenset()
    if names is not None:
        lists = name_lists(names)
        words |= lists.first | lists.last
        never = lists.never
    if places is not None:
        words |= {p for p in place_lists(places)[0] if " " not in p}
    return frozenset(w for w in words if len(w) >= 3 and w not in never)
