"""The residual scan: a second, different detector reads the masked text and counts what still looks
like personal data.

Presidio's pattern recognizers for the masked types (no spaCy NER, no YAML recognizers, no context
boost, hence a lower threshold) and the plain regexes of the YAML's `residual:` section. The mask
stage (tasks.data.mask) fails with ResidualPiiError when too many records have a finding.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tasks.pii.engines import NER_RECOGNIZERS, build_registry, cache_key
from tasks.pii.pseudonyms import PLACEHOLDER
from tasks.pii.spec import MaskSpec

_RESIDUAL_RECOGNIZERS: dict[tuple[str, int, str], list] = {}


class ResidualPiiError(RuntimeError):
    """The residual scan found personal data left in too many masked records.

    The message holds counts, entity types and record ids only; `residual` (type → count),
    `share` and `record_ids` carry the same for callers.
    """

    def __init__(self, message: str, *, residual: dict[str, int], share: float, record_ids: list[str]):
        super().__init__(message)
        self.residual, self.share, self.record_ids = residual, share, record_ids


def residual_recognizers(recognizers_path: Path, language: str, spec: MaskSpec) -> list:
    """The second detector's Presidio half: the predefined pattern recognizers for the masked
    types, without the spaCy NER and without the YAML's recognizers. They run without NLP
    artifacts (no context boost), hence the residual scan's lower score threshold."""
    key = cache_key(recognizers_path, language)
    if key not in _RESIDUAL_RECOGNIZERS:
        registry = build_registry(recognizers_path, language, spec, None, custom=False)
        # Not PhoneRecognizer: libphonenumber scores every number it accepts 0.4, context or not,
        # so it re-finds only what the masking pass already replaced, at a third of this scan's cost.
        # The `residual.patterns` regex for PHONE_NUMBER stands in for it.
        _RESIDUAL_RECOGNIZERS[key] = [
            r
            for r in registry.get_recognizers(language=language, all_fields=True)
            if type(r).__name__ not in NER_RECOGNIZERS | {"PhoneRecognizer"}
            and set(r.supported_entities) & set(spec.entities)
        ]
    return _RESIDUAL_RECOGNIZERS[key]


def residual_presidio(text: str, recognizers: list, spec: MaskSpec) -> list:
    """The findings of `recognizers` (residual_recognizers) in `text`, at the residual score threshold."""
    results = []
    for recognizer in recognizers:
        wanted = [e for e in recognizer.supported_entities if e in spec.entities]
        results += [
            r
            for r in recognizer.analyze(text=text, entities=wanted, nlp_artifacts=None) or []
            if r.score >= spec.residual.score_threshold and r.entity_type in spec.entities
        ]
    return results


def residual_findings(
    text: str, presidio_results: list, spec: MaskSpec, kept: Iterable[tuple[int, int]] = ()
) -> Counter:
    """Count what still looks like personal data in a masked text, per entity type.

    Findings of Presidio's pattern recognizers (`presidio_results`) and the YAML's residual
    regexes are merged: overlapping findings count once, under the longest one's type. Only
    types the stage masks count; findings touching a placeholder, a `kept` span (a date the
    masker shifted) and allow-listed spans do not.
    """
    hidden = [m.span() for m in PLACEHOLDER.finditer(text)] + list(kept)
    spans = [(r.start, r.end, r.entity_type) for r in presidio_results]
    spans += [
        (m.start(), m.end(), etype)
        for etype, pattern in spec.residual.patterns
        if etype in spec.entities
        for m in pattern.finditer(text)
        if m.end() > m.start()
    ]
    allowed = set(spec.allow_list)
    spans = sorted(
        (s, e, t)
        for s, e, t in spans
        if t in spec.entities and text[s:e] not in allowed and not any(s < he and hs < e for hs, he in hidden)
    )
    counts: Counter = Counter()
    cluster: list[tuple[int, int, str]] = []
    for span in [*spans, (sys.maxsize, sys.maxsize, "")]:
        if cluster and span[0] >= max(e for _, e, _ in cluster):
            longest = max(cluster, key=lambda c: (c[1] - c[0], c[2]))
            counts[longest[2]] += 1
            cluster = []
        cluster.append(span)
    return counts
