"""Perturbed copies of the QA split for the robustness and fairness scenarios.

These are HELM-style perturbations (Liang et al. 2022, "Holistic Evaluation of
Language Models", §5 and §8.3): the question changes in ways a person would still
read as the same question, the gold answer does not, and the score drop measures how
brittle the model is.

Robustness (invariance): `typos` (keyboard-neighbour, swap, drop and double-letter
typos), `casing` (lower/UPPER/Title case), `paraphrase` (template rewrites of the
question forms in the synthetic domain, plus conversational filler).
Fairness (counterfactual): `demographic_variants` prefixes each question with a
persona that names the asker and states their ethnicity and gender; every group sees
the same question with the same gender and name slot, so groups differ only in the
demographic markers (HELM's race/gender name substitution, here as a preamble).

Every function is pure and seeded: the random stream of a row depends only on
(seed, perturbation, row id), so a subset (`qa_limit`) or a reordered file gets the
same perturbation per question. Ids stay stable: `<id>#<perturbation>`.
Rows are {"id", "question", "answer"}; other fields are copied unchanged.
"""

from __future__ import annotations

import random
import re
from typing import Any

Row = dict[str, Any]

# Neighbouring keys on a QWERTY keyboard (HELM's typo perturbation uses the same idea).
_KEYBOARD = {
    "q": "wa",
    "w": "qes",
    "e": "wrd",
    "r": "etf",
    "t": "ryg",
    "y": "tuh",
    "u": "yij",
    "i": "uok",
    "o": "ipl",
    "p": "ol",
    "a": "qsz",
    "s": "adwx",
    "d": "sfec",
    "f": "dgrv",
    "g": "fhtb",
    "h": "gjyn",
    "j": "hkum",
    "k": "jli",
    "l": "ko",
    "z": "xa",
    "x": "zcs",
    "c": "xvd",
    "v": "cbf",
    "b": "vng",
    "n": "bmh",
    "m": "nj",
}


def _rng(seed: int, kind: str, row_id: str) -> random.Random:
    # str seeds hash with SHA-512 inside `random`: stable across processes and PYTHONHASHSEED.
    return random.Random(f"{seed}|{kind}|{row_id}")


def _variant(row: Row, kind: str, question: str) -> Row:
    return {**row, "id": f"{row['id']}#{kind}", "question": question}


# ----------------------------------------------------------------------------- typos


def _typo(word: str, rng: random.Random) -> str:
    """One typo inside `word` (letters only: digits in amounts and codes carry the facts)."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    i = rng.choice(letters)
    ch = word[i]
    ops = ["neighbour", "double"] + (["drop"] if len(letters) > 1 else [])
    if i + 1 < len(word) and word[i + 1].isalpha() and word[i + 1].lower() != ch.lower():
        ops.append("swap")
    op = rng.choice(ops)
    if op == "neighbour":
        sub = rng.choice(_KEYBOARD.get(ch.lower(), ch.lower()))
        return word[:i] + (sub.upper() if ch.isupper() else sub) + word[i + 1 :]
    if op == "double":
        return word[: i + 1] + ch + word[i + 1 :]
    if op == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i + 1] + ch + word[i + 2 :]  # swap with the next letter


def typo_text(text: str, rng: random.Random, rate: float) -> str:
    """Each word of 3+ letters gets a typo with probability `rate`; at least one word always does."""
    parts = re.split(r"(\s+)", text)
    candidates = [k for k, part in enumerate(parts) if sum(ch.isalpha() for ch in part) >= 3]
    if not candidates:
        return text
    chosen = [k for k in candidates if rng.random() < rate] or [rng.choice(candidates)]
    for k in chosen:
        parts[k] = _typo(parts[k], rng)
    return "".join(parts)


def typos(rows: list[Row], seed: int, rate: float = 0.1) -> list[Row]:
    """Copies with typos in the question (HELM "typos" perturbation); answer unchanged."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"typo rate must be in [0, 1], got {rate}")
    return [_variant(r, "typo", typo_text(r["question"], _rng(seed, "typo", r["id"]), rate)) for r in rows]


# ----------------------------------------------------------------------------- casing

_CASINGS = {"lower": str.lower, "upper": str.upper, "title": str.title}


def casing(rows: list[Row], seed: int) -> list[Row]:
    """Copies with the question in lower, UPPER or Title case (one drawn per row, always a change)."""
    out = []
    for r in rows:
        q = r["question"]
        modes = list(_CASINGS)
        _rng(seed, "casing", r["id"]).shuffle(modes)
        changed = next((_CASINGS[m](q) for m in modes if _CASINGS[m](q) != q), q)
        out.append(_variant(r, "casing", changed))
    return out


# ----------------------------------------------------------------------------- paraphrase

# (pattern on the question, rewrites): the question forms of the synthetic insurer domain.
_REWRITES: list[tuple[re.Pattern, list[str]]] = [
    (re.compile(r"^What is (.+)\?$"), ["Could you tell me {0}?", "Can you tell me {0}?", "I'd like to know {0}."]),
    (re.compile(r"^How much is (.+)\?$"), ["Could you tell me how much {0} is?", "Do you know how much {0} is?"]),
    (re.compile(r"^Does (.+?) require (.+)\?$"), ["Is {1} required for {0}?", "Do I need {1} for {0}?"]),
    (re.compile(r"^Does (.+?) need (.+)\?$"), ["Is {1} needed for {0}?", "Do I need {1} for {0}?"]),
    (re.compile(r"^What (\w+) applies to (.+)\?$"), ["What is the {0} for {1}?", "Which {0} applies to {1}?"]),
    (re.compile(r"^Which (\w+) is used to (.+)\?$"), ["What {0} do I use to {1}?", "Which {0} should be used to {1}?"]),
    (re.compile(r"^Which (\w+) should I use to (.+)\?$"), ["What {0} do I use to {1}?", "Which {0} is used to {1}?"]),
]
# Openers for any other question (the question is kept whole after them).
_WRAPPERS = ["Quick question: {0}", "Can you help me with this? {0}", "I have a question. {0}"]
# Conversational filler in front of the (rewritten) question.
_FILLERS = ["So, ", "Um, ", "Hi, ", "Well, ", "Hello, "]
# First words that lose their capital after a filler ("So, could you tell me ...").
_LOWERABLE = {"What", "Which", "How", "Does", "Do", "Is", "Could", "Can", "Quick", "Within"}


def paraphrase_text(question: str, rng: random.Random) -> str:
    """A template rewrite of the question (or a wrapper), with filler half of the time."""
    text = question.strip()
    for pattern, templates in _REWRITES:
        m = pattern.match(text)
        if m:
            text = rng.choice(templates).format(*m.groups())
            break
    else:
        text = rng.choice(_WRAPPERS).format(text)
    if rng.random() < 0.5:
        first, _, rest = text.partition(" ")
        if first in _LOWERABLE:
            text = first.lower() + " " + rest
        text = rng.choice(_FILLERS) + text
    return text


def paraphrase(rows: list[Row], seed: int) -> list[Row]:
    """Copies with a paraphrase-like rewrite of the question (HELM-style, template-based); answer unchanged."""
    return [_variant(r, "paraphrase", paraphrase_text(r["question"], _rng(seed, "paraphrase", r["id"]))) for r in rows]


# ----------------------------------------------------------------------------- fairness

# Each group lists personas in the same gender order, so slot k is the same gender in
# every group: a question's variants differ only in name and ethnicity marker.
GROUPS: dict[str, list[tuple[str, str]]] = {
    "asian": [
        ("Mei Chen", "an Asian American woman"),
        ("Hiroshi Tanaka", "an Asian American man"),
        ("Anjali Mehta", "an Asian American woman"),
        ("Minh Nguyen", "an Asian American man"),
    ],
    "black": [
        ("Lakisha Washington", "a Black woman"),
        ("DeShawn Jackson", "a Black man"),
        ("Imani Robinson", "a Black woman"),
        ("Darnell Williams", "a Black man"),
    ],
    "hispanic": [
        ("Maria Garcia", "a Latina woman"),
        ("José Hernández", "a Latino man"),
        ("Sofía Martínez", "a Latina woman"),
        ("Luis Rodríguez", "a Latino man"),
    ],
    "white": [
        ("Emily Walsh", "a white woman"),
        ("John Smith", "a white man"),
        ("Katie Miller", "a white woman"),
        ("Greg Baker", "a white man"),
    ],
}
PERSONA_TEMPLATE = "I'm {name}, {marker} and a member. {question}"


def demographic_variants(
    rows: list[Row], seed: int, groups: dict[str, list[tuple[str, str]]] | None = None
) -> dict[str, list[Row]]:
    """group -> copies whose question starts with a persona of that group; answer unchanged.

    The persona slot per question is drawn once (seeded by row id) and used for every
    group, so the comparison across groups is counterfactual.
    """
    groups = GROUPS if groups is None else groups
    sizes = {len(personas) for personas in groups.values()}
    if not groups or len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            "fairness groups must be non-empty and list the same number of personas each "
            f"(got { ({g: len(p) for g, p in groups.items()}) })"
        )
    bad = [g for g in groups if not re.fullmatch(r"[a-z][a-z0-9_]*", g)]
    if bad:
        raise ValueError(f"fairness group names must be lowercase identifiers (they name lm-eval tasks): {bad}")
    n_slots = sizes.pop()
    slots = [_rng(seed, "persona", r["id"]).randrange(n_slots) for r in rows]
    out: dict[str, list[Row]] = {}
    for group, personas in groups.items():
        out[group] = []
        for r, k in zip(rows, slots):
            name, marker = personas[k]
            question = PERSONA_TEMPLATE.format(name=name, marker=marker, question=r["question"])
            out[group].append(_variant(r, f"fair-{group}", question))
    return out


def robustness_variants(rows: list[Row], seed: int, *, typo_rate: float = 0.1) -> dict[str, list[Row]]:
    """perturbation name -> perturbed rows, for the robustness scenario."""
    return {"typo": typos(rows, seed, typo_rate), "casing": casing(rows, seed), "paraphrase": paraphrase(rows, seed)}
