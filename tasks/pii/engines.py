"""Presidio's engines, built once per process: the analyzer (spaCy NER, Presidio's predefined
recognizers made offline and tuned, the YAML's pattern recognizers, the name lists) and the
anonymizer with one operator per entity type.

Every cache here is keyed by the recognizers file's path and modification time, so an edited YAML
is read again; the spaCy model itself loads once per process (tasks.pii.spacy_ner).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from tasks.pii.names import name_list_recognizer
from tasks.pii.places import place_recognizer
from tasks.pii.pseudonyms import mask_chars, pseudonym
from tasks.pii.spec import MaskSpec, read_doc, source_files

log = logging.getLogger(__name__)

# The recognizer Presidio feeds from the NLP engine's entities (spaCy here), and every NER-based one.
NER_RECOGNIZER = "SpacyRecognizer"
NER_RECOGNIZERS = {"SpacyRecognizer", "StanzaRecognizer", "TransformersRecognizer", "GLiNERRecognizer"}

_NLP_ENGINES: dict[tuple[str, str], Any] = {}
_ANALYZERS: dict[tuple, Any] = {}
_ANONYMIZER: Any = None
_OFFLINE_TLD: Any = None


def _offline_tld_extract():
    """tldextract with the bundled public-suffix snapshot: no HTTP fetch, no cache writes."""
    global _OFFLINE_TLD
    if _OFFLINE_TLD is None:
        import tldextract

        _OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
    return _OFFLINE_TLD


def _offline_email_recognizer(language: str):
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    class OfflineEmailRecognizer(EmailRecognizer):
        # Presidio's EmailRecognizer validates with module-level tldextract.extract, whose default
        # extractor downloads the public suffix list on first use; this one never goes online.
        def validate_result(self, pattern_text: str) -> bool:
            return _offline_tld_extract()(pattern_text).fqdn != ""

    return OfflineEmailRecognizer(supported_language=language)


def ner_engine(model: str, language: str):
    """spaCy with its NER only, as Presidio's NLP engine (tasks.pii.spacy_ner); loaded once per process."""
    key = (model, language)
    if key not in _NLP_ENGINES:
        from tasks.pii.spacy_ner import load_engine

        _NLP_ENGINES[key] = load_engine(model, language)
    return _NLP_ENGINES[key]


# Card-like groupings only: one run of digits, groups of four ("2221 0000 0000 0009"), or
# Amex-like 4-6-5; a phone's "21 218 920 4879" (Luhn-valid by chance) is not a card.
_CARD_DIGITS = r"(?<![\w-])(?:\d{12,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\w-])"


def _quiet_presidio() -> None:
    # Presidio's DEBUG lines quote text (context words around a finding): keep them off.
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        if logging.getLogger(name).level < logging.INFO:  # unset or DEBUG
            logging.getLogger(name).setLevel(logging.WARNING)


def build_registry(recognizers_path: Path, language: str, spec: MaskSpec, nlp_engine, *, custom: bool = True):
    """Presidio's predefined recognizers (offline email check, the YAML's phone regions) and,
    when `custom`, the YAML's pattern recognizers. Public so the benchmark's plain-loop
    baseline runs exactly the same recognizers."""
    from presidio_analyzer import Pattern, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, PhoneRecognizer

    path = Path(recognizers_path).resolve()
    _quiet_presidio()
    presidio_log = logging.getLogger("presidio-analyzer")
    registry = RecognizerRegistry(supported_languages=[language])
    level = presidio_log.level
    presidio_log.setLevel(logging.ERROR)
    try:  # one warning per recognizer of another language otherwise
        registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
    finally:
        presidio_log.setLevel(level)
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(_offline_email_recognizer(language))
    # libphonenumber tries every listed region on every text: a third of the analysis time
    # with Presidio's eight defaults. The YAML names the regions the data comes from.
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(PhoneRecognizer(supported_language=language, supported_regions=spec.phone_regions))
    # Presidio's card pattern wants 13+ digits and a 3/4/5/6/1 first digit: it misses Mastercard's
    # 2-series, JCB 2131 and 12-digit Maestro numbers. Any 12-19 digits in a card grouping count
    # here, and the Luhn check the recognizer runs on every match keeps the rest out.
    registry.remove_recognizer("CreditCardRecognizer")
    registry.add_recognizer(
        CreditCardRecognizer(
            supported_language=language,
            patterns=[*CreditCardRecognizer.PATTERNS, Pattern("12-19 digits (Luhn-checked)", _CARD_DIGITS, 0.3)],
        )
    )
    if custom:
        # The profile's recognizers, with those of the file it extends (tasks.pii.spec.read_doc).
        for i, rec in enumerate(read_doc(path).get("recognizers") or []):
            try:
                registry.add_pattern_recognizer_from_dict(rec)
            except Exception as exc:
                name = rec.get("name") if isinstance(rec, dict) else None
                raise ValueError(
                    f"{path}: recognizer {i} ('{name}') could not be loaded ({exc}); check its fields and regex"
                ) from None
        if spec.name_lists is not None:
            registry.add_recognizer(name_list_recognizer(spec.name_lists, language))
        if spec.places is not None:
            registry.add_recognizer(place_recognizer(spec.places, language, spec.name_lists))
    return registry


def cache_key(recognizers_path: Path, language: str) -> tuple:
    """What the per-process caches are keyed by: the file's resolved path, its version and the
    versions of the files it extends, and the language."""
    path = Path(recognizers_path).resolve()
    return str(path), tuple(f.stat().st_mtime_ns for f in source_files(path)), language


def analyzer(recognizers_path: Path, language: str, spec: MaskSpec):
    """The masking pass's AnalyzerEngine: the NER engine, build_registry's recognizers, and every
    masked type's context words; once per file version, language and process."""
    key = cache_key(recognizers_path, language)
    if key not in _ANALYZERS:
        from presidio_analyzer import AnalyzerEngine

        nlp_engine = ner_engine(spec.nlp_model, language)
        registry = build_registry(recognizers_path, language, spec, nlp_engine)
        nlp_engine.add_context_words(
            w
            for r in registry.recognizers
            if set(r.supported_entities) & set(spec.entities)
            for w in (getattr(r, "context", None) or [])
        )
        _ANALYZERS[key] = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])
        log.info("analyzer ready: %d recognizers", len(registry.recognizers))
    return _ANALYZERS[key]


GAZETTEERS = ("NameListRecognizer", "PlaceListRecognizer")


def gazetteer_finder(recognizers_path: Path, language: str, spec: MaskSpec):
    """A callable giving the name and place lists' findings for a text (tasks.pii.refine gives back those an
    NER finding hid), or None when the profile has neither list."""
    found_by = [r for r in analyzer(recognizers_path, language, spec).registry.recognizers if r.name in GAZETTEERS]
    if not found_by:
        return None
    entities = sorted({e for r in found_by for e in r.supported_entities})
    return lambda text: [f for r in found_by for f in r.analyze(text, entities)]


def anonymizer():
    """Presidio's AnonymizerEngine, once per process."""
    global _ANONYMIZER
    if _ANONYMIZER is None:
        from presidio_anonymizer import AnonymizerEngine

        _ANONYMIZER = AnonymizerEngine()
    return _ANONYMIZER


def operators(spec: MaskSpec, key: bytes) -> dict:
    """Entity type → Presidio OperatorConfig, from the YAML's operator per type (keyed pseudonyms with `key`)."""
    from presidio_anonymizer.entities import OperatorConfig

    ops = {}
    for etype, op in spec.entities.items():
        if op.name == "pseudonym":
            ops[etype] = OperatorConfig("custom", {"lambda": partial(pseudonym, etype, key=key)})
        elif op.name == "replace":
            ops[etype] = OperatorConfig("replace", {"new_value": f"<{etype}>"})
        elif op.name == "mask":
            # Presidio's own "mask" hides a fixed count of characters; values vary in length.
            ops[etype] = OperatorConfig(
                "custom", {"lambda": partial(mask_chars, keep_last=op.keep_last, masking_char=op.masking_char)}
            )
        else:
            ops[etype] = OperatorConfig("redact", {})
    return ops
