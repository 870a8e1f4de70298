"""Clean-up of Presidio's raw findings before they are applied: domain terms protected, NER findings
cut back to what the pattern recognizers did not find, and every occurrence of a found value masked."""

from __future__ import annotations

import itertools
import re

from tasks.pii.engines import NER_RECOGNIZER

_NAME_LIKE_TYPES = {"PERSON", "LOCATION"}
_TRAILING_PUNCT_TYPES = {"URL", "EMAIL_ADDRESS"}


def _has_word(s: str) -> bool:
    """A capital followed by a small letter, in any alphabet ("Gábor" yes, "ID" no)."""
    return any(a.isupper() and b.islower() for a, b in itertools.pairwise(s))


def _listed_word(s: str, listed: frozenset) -> bool:
    """A word of `listed` (names and places, case-folded) in any casing ("LAHTI", "maria" yes; "CPT" no)."""
    return any(w.casefold() in listed for w in re.findall(r"[^\W\d_]+", s))


def _unknown_capitals(s: str, unknown) -> bool:
    """A word of five capitals or more that `unknown` calls no English word ("EDMONDSHAM"; not "CPT", "CLAIM")."""
    return unknown is not None and any(
        len(w) >= 5 and w.isupper() and unknown(w.casefold()) for w in re.findall(r"[^\W\d_]+", s)
    )


def _subtract(span: tuple[int, int], cut: tuple[int, int]) -> list[tuple[int, int]]:
    (s, e), (cs, ce) = span, cut
    if ce <= s or cs >= e:
        return [span]
    return [p for p in ((s, cs), (ce, e)) if p[1] > p[0]]


def _strip(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and not text[s].isalnum():
        s += 1
    while e > s and not text[e - 1].isalnum():
        e -= 1
    return s, e


def _hidden_gazetteer_findings(text: str, dropped: list, kept: list, found: list, protected: list) -> list:
    """The gazetteer findings inside a dropped NER finding of their type, not yet kept, overlapping no
    domain term and no kept finding."""
    out = []
    for g in found:
        inside = any(g.entity_type == t and s <= g.start and g.end <= e for t, s, e in dropped)
        clash = any(g.start < e and s < g.end for s, e in protected) or any(
            g.start < k.end and k.start < g.end for k in kept
        )
        if inside and not clash and text[g.start : g.end].strip():
            out.append(g)
    return out


def _ner_outside_patterns(text: str, ner: list, patterns: list, any_case: frozenset, unknown) -> tuple[list, list]:
    """Each NER finding cut back to its pieces outside the pattern findings: (pieces kept, as results;
    (type, start, end) of pieces with no word that counts, where a gazetteer's finding may hide)."""
    from presidio_analyzer import RecognizerResult

    kept, dropped = [], []
    for r in ner:
        pieces = [(r.start, r.end)]
        for p in patterns:
            pieces = [piece for span in pieces for piece in _subtract(span, (p.start, p.end))]
        whole = pieces == [(r.start, r.end)]
        for s, e in pieces:
            s, e = _strip(text, s, e)
            if e <= s:
                continue
            keep = _has_word(text[s:e]) or (
                whole and (_listed_word(text[s:e], any_case) or _unknown_capitals(text[s:e], unknown))
            )
            if keep:
                kept.append(RecognizerResult(r.entity_type, s, e, r.score, recognition_metadata=r.recognition_metadata))
            else:
                dropped.append((r.entity_type, s, e))
    return kept, dropped


def refine_results(
    text: str,
    results: list,
    domain_terms: re.Pattern | None = None,
    not_names: frozenset = frozenset(),
    any_case: frozenset = frozenset(),
    unknown=None,
    gazetteers=None,
) -> list:
    """Make Presidio's raw findings safer to apply; three fixes, in order.

    1. A PERSON/LOCATION finding overlapping a configured domain term ("Bronze Basic" plan)
       is dropped: the small spaCy model reads some product names as people.
    2. An NER finding overlapping a pattern finding is cut back to the part outside it, and
       dropped if no word is left: spaCy sometimes tags "ID MBR-48213377" as a PERSON, which
       would swallow the typed MEMBER_ID (Presidio drops a finding contained in another).
       With `any_case` (mask.ner_any_case: listed names and places, tasks.pii.gate.any_case_words),
       an NER finding no pattern touched also counts with no capitalised word when a word of it
       is listed ("LAHTI", "maria gonzalez"; not "CPT"), or, with `unknown` (a test for words no English word
       list holds), when a word of it is five capitals or more that is no English word ("grew up in
       EDMONDSHAM": Presidio keeps the NER's finding over a pattern's of the same span and lower score).
       An NER finding dropped all the same gives back what `gazetteers(text)` (the name and place lists'
       findings) found inside it: Presidio keeps one of two equal findings, or the longer, so the NER's
       "GRACE KOWALSKI" had hidden the name list's.
    3. Every other verbatim occurrence of a found value in the same text is masked too: the
       NER finds "Maria Gonzalez" in one sentence and misses her in the next. So is each word
       of a found full name ("Maria" alone later), unless it is in `not_names`.
    """
    from presidio_analyzer import RecognizerResult

    def from_ner(r) -> bool:
        return (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY) == NER_RECOGNIZER

    protected: list[tuple[int, int]] = []
    if domain_terms is not None:
        protected = [m.span() for m in domain_terms.finditer(text)]
        if protected:
            results = [
                r
                for r in results
                if r.entity_type not in _NAME_LIKE_TYPES or not any(r.start < e and s < r.end for s, e in protected)
            ]

    for r in results:
        if r.entity_type in _TRAILING_PUNCT_TYPES:  # "see https://x.example/a." keeps its full stop
            while r.end > r.start and text[r.end - 1] in ".,;:!?)]'\"":
                r.end -= 1
    ner = [r for r in results if from_ner(r)]
    patterns = [r for r in results if not from_ner(r)]
    kept, dropped = _ner_outside_patterns(text, ner, patterns, any_case, unknown)
    kept = patterns + kept
    if dropped and gazetteers is not None:
        kept += _hidden_gazetteer_findings(text, dropped, kept, gazetteers(text), protected)

    covered = [(r.start, r.end) for r in kept]
    extra = []
    values = {(text[r.start : r.end], r.entity_type, r.score) for r in kept}
    # The words of a full name count on their own: "Muriz Panković ... everyone calls me Muriz"
    # (in any casing with any_case: "sylwia ostrowska ... ostrowska said").
    values |= {
        (word, "PERSON", score)
        for value, etype, score in values
        if etype == "PERSON"
        for word in value.split()[1:] and value.split()
        if len(word) >= 3 and (_has_word(word[:2]) or any_case) and word.casefold() not in not_names
    }
    # Longest first, then by text: the same result in every process (set order is not).
    for value, etype, score in sorted(values, key=lambda v: (-len(v[0]), v)):
        if len(value.strip()) < 3:
            continue
        for m in re.finditer(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text):
            if not any(m.start() < e and s < m.end() for s, e in covered):
                metadata = {RecognizerResult.RECOGNIZER_NAME_KEY: "propagated"}
                extra.append(RecognizerResult(etype, m.start(), m.end(), score, recognition_metadata=metadata))
                covered.append(m.span())
    return kept + extra
