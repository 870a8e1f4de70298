"""Masking in one process: a list of texts in, a MaskedText per text out.

Invisible characters out (tasks.common.textnorm), batched analysis (NER through the gate),
clean-up (tasks.pii.refine), anonymisation with the YAML's operators, then the residual scan
(tasks.pii.residual). tasks.pii.workers spreads chunks of a large input over processes that each
run mask_chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from tasks.common.textnorm import clean as strip_invisible
from tasks.common.textnorm import kept_offsets
from tasks.pii import engines
from tasks.pii.dateshift import DATE_TYPES, DateShift, offset_days, shift_date
from tasks.pii.gate import any_case_words, ner_gate
from tasks.pii.names import english_lexicon, is_english, name_lists
from tasks.pii.pseudonyms import PLACEHOLDER, pseudonym
from tasks.pii.refine import refine_results
from tasks.pii.residual import residual_findings, residual_presidio, residual_recognizers
from tasks.pii.spec import MaskSpec, cached_spec, terms_regex

log = logging.getLogger(__name__)


class MaskedText(NamedTuple):
    """One masked text. `spans` are (entity type, start, end) of what was masked, as offsets into
    the input text (for benchmarks; no text); `residual` counts what the residual scan found.
    `text` has lost the input's invisible characters and has plain spaces for odd ones
    (tasks.common.textnorm), masked or not."""

    text: str
    entities: Counter
    spans: tuple[tuple[str, int, int], ...]
    residual: Counter


@dataclass(frozen=True)
class MaskJob:
    """Everything a worker needs for a chunk (picklable; the key travels over the pipe only)."""

    key: bytes
    recognizers_path: str
    score_threshold: float
    language: str
    batch_size: int
    residual: bool
    date_shift: DateShift | None = None  # None: dates get the YAML's operator


_WARNED: set[tuple] = set()


def _resolve(anonymizer, text: str, results: list) -> list:
    """The findings the anonymizer will replace, overlaps resolved as it resolves them, so that
    MaskedText.spans says what was masked (a phone-shaped run inside a claim id is not).
    Passing these to anonymize() changes nothing: resolving resolved findings is a no-op."""
    from presidio_anonymizer.entities import ConflictResolutionStrategy

    if not results:
        return results
    try:
        resolved = anonymizer._remove_conflicts_and_get_text_manipulation_data(
            sorted(anonymizer._copy_recognizer_results(results), key=lambda r: (r.start, r.end)),
            ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
        )
        return anonymizer._merge_entities_with_spaces_between(text, resolved)
    except AttributeError:  # another Presidio version: report the findings as they are
        return results


def _shift_operators(text: str, found: list, operators: dict, job: MaskJob) -> dict:
    """The operators for one text: with the date shift on and a subject in the text, its date types
    shift by the subject's keyed offset; a date the shift cannot read gets a keyed placeholder. No
    subject: the YAML's operators, unchanged."""
    from presidio_anonymizer.entities import OperatorConfig

    shift = job.date_shift
    subjects = sorted((r.start, r.entity_type) for r in found if shift and r.entity_type in shift.subject_types)
    if not subjects or not any(r.entity_type in DATE_TYPES for r in found):
        return operators
    start, subject_type = subjects[0]
    end = next(r.end for r in found if (r.start, r.entity_type) == (start, subject_type))
    days = offset_days(subject_type, text[start:end], job.key, shift.max_days)

    def shifted(etype: str):
        return lambda value: shift_date(value, days) or pseudonym(etype, value, job.key)

    dated = {etype: OperatorConfig("custom", {"lambda": shifted(etype)}) for etype in DATE_TYPES if etype in operators}
    return {**operators, **dated}


def _shifted_spans(out) -> list[tuple[int, int]]:
    """Where the output holds a shifted date (not a placeholder): the residual scan must not count it."""
    return [
        (item.start, item.end)
        for item in out.items
        if item.entity_type in DATE_TYPES and not PLACEHOLDER.fullmatch(item.text or "")
    ]


def _input_spans(original: str, cleaned: str, spans: tuple) -> tuple:
    """Spans found in the cleaned text, as offsets into the original (where invisible characters were)."""
    if len(original) == len(cleaned):  # nothing removed (spaces are replaced one for one)
        return spans
    offsets = kept_offsets(original)
    return tuple((etype, offsets[start], offsets[end - 1] + 1) for etype, start, end in spans)


def _analyze(texts: list[str], job: MaskJob, spec: MaskSpec) -> list[list]:
    """Presidio's raw findings per text: one batched NER pass (through the gate unless the YAML
    turns it off), then the recognizers for the masked types the analyzer supports."""
    from presidio_analyzer import BatchAnalyzerEngine

    analyzer = engines.analyzer(job.recognizers_path, job.language, spec)
    supported = set(analyzer.get_supported_entities(job.language))
    entities = sorted(e for e in spec.entities if e in supported)
    missing = sorted(set(spec.entities) - supported)
    if missing and (job.recognizers_path, tuple(missing)) not in _WARNED:
        _WARNED.add((job.recognizers_path, tuple(missing)))
        log.warning(
            "no recognizer for entity types %s; they are listed in %s but cannot be found",
            missing,
            job.recognizers_path,
        )
    allow_list = list(spec.allow_list) or None
    # Via the engine default rather than analyze(score_threshold=...), so a recognizer's own
    # score_thresholds in the YAML still apply.
    analyzer.default_score_threshold = job.score_threshold
    gate = ner_gate(spec)
    if gate is None:
        # BatchAnalyzerEngine hands the whole list to nlp.pipe(batch_size=...): spaCy batches the NER.
        return BatchAnalyzerEngine(analyzer_engine=analyzer).analyze_iterator(
            texts, language=job.language, batch_size=job.batch_size, entities=entities, allow_list=allow_list
        )
    # What BatchAnalyzerEngine does, with the NER run only where a name may be.
    return [
        analyzer.analyze(
            text=text, language=job.language, nlp_artifacts=artifacts, entities=entities, allow_list=allow_list
        )
        for text, artifacts in analyzer.nlp_engine.process_gated(texts, job.language, job.batch_size, gate)
    ]


def _unknown_word(spec: MaskSpec):
    """With mask.ner_any_case and the English word list (name_lists.lowercase_not_english): a test for a
    word (case-folded) that is no English word and no never-name; else None."""
    names = spec.name_lists
    if not spec.ner_any_case or names is None or not names.english_model:
        return None
    lexicon, never = english_lexicon(names.english_model), name_lists(names).never
    return lambda word: word not in never and not is_english(word, lexicon)


def mask_chunk(texts: list[str], job: MaskJob) -> list[MaskedText]:
    """Mask a list of texts in this process: invisible characters out, batched analysis, clean-up,
    anonymisation, residual scan."""
    from presidio_anonymizer.entities import ConflictResolutionStrategy

    # A zero-width space or a bidi control inside "MBR-12345678" hides it from every recognizer:
    # they go first, exactly as ingest drops them (tasks.common.textnorm), so the serving filter, which
    # masks raw model output through here, gets the same treatment.
    originals, texts = texts, [strip_invisible(t).text for t in texts]

    spec = cached_spec(job.recognizers_path)
    found_all = _analyze(texts, job, spec)
    operators = engines.operators(spec, job.key)
    terms = terms_regex(spec.domain_terms)
    not_names = name_lists(spec.name_lists).never if spec.name_lists is not None else frozenset()
    any_case = any_case_words(spec)
    unknown = _unknown_word(spec)
    anonymizer = engines.anonymizer()

    masked: list[tuple[str, Counter, tuple]] = []
    kept: dict[int, list[tuple[int, int]]] = {}  # per text: shifted dates, which are no residual
    gazetteers = engines.gazetteer_finder(job.recognizers_path, job.language, spec)
    for text, found in zip(texts, found_all, strict=True):
        found = refine_results(text, found, terms, not_names, any_case, unknown=unknown, gazetteers=gazetteers)
        found = _resolve(anonymizer, text, found)
        if not found:
            masked.append((text, Counter(), ()))
            continue
        out = anonymizer.anonymize(
            text=text,
            analyzer_results=found,
            operators=_shift_operators(text, found, operators, job) if job.date_shift else operators,
            conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
        )
        spans = tuple(sorted((r.entity_type, r.start, r.end) for r in found))
        kept[len(masked)] = _shifted_spans(out) if job.date_shift else []
        masked.append((out.text, Counter(item.entity_type for item in out.items), spans))
    masked = [(t, c, _input_spans(o, clean, s)) for (t, c, s), o, clean in zip(masked, originals, texts, strict=True)]

    residual: list[Counter] = [Counter() for _ in masked]
    if job.residual:
        checkers = residual_recognizers(job.recognizers_path, job.language, spec)
        residual = [
            residual_findings(t, residual_presidio(t, checkers, spec), spec, kept.get(i, ()))
            for i, (t, _, _) in enumerate(masked)
        ]
    return [MaskedText(t, c, s, r) for (t, c, s), r in zip(masked, residual, strict=True)]
