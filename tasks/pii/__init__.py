"""Finding and masking personal data (Presidio, keyed pseudonyms, residual scan): the engine every zone
boundary uses. The mask stage (tasks.data.mask), the evaluation's PII-leakage scan (tasks.eval.safety)
and the serving output filter (tasks.serve) import from here."""

from tasks.pii.engine import (
    PLACEHOLDER,
    MaskedText,
    MaskSpec,
    MissingKeyError,
    Operator,
    ResidualPiiError,
    build_registry,
    load_spec,
    mask_chars,
    mask_records,
    mask_texts,
    mask_workers,
    name_list_spans,
    normalise,
    pseudonym,
    refine_results,
    residual_findings,
    resolve_key,
    usable_workers,
)

__all__ = [
    "PLACEHOLDER", "MaskedText", "MaskSpec", "MissingKeyError", "Operator", "ResidualPiiError", "build_registry",
    "load_spec", "mask_chars", "mask_records", "mask_texts", "mask_workers", "name_list_spans", "normalise",
    "pseudonym", "refine_results", "residual_findings", "resolve_key", "usable_workers",
]
