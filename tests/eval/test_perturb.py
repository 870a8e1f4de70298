"""Tests for tasks.eval.perturb: seeded, answer-preserving, id-stable HELM-style perturbations."""

from __future__ import annotations

import random

import pytest

from tasks.eval import perturb

ROWS = [
    {
        "id": "deductible:Bronze Basic",
        "question": "How much is the deductible on the Bronze Basic plan?",
        "answer": "$3,000",
    },
    {
        "id": "oop_max:Silver Saver",
        "question": "What is the out-of-pocket maximum for the Silver Saver plan?",
        "answer": "$6,000",
    },
    {"id": "prior_auth:70551", "question": "Does CPT 70551 require prior authorization?", "answer": "yes"},
    {"id": "prior_auth:45378", "question": "Does a colonoscopy (CPT 45378) need prior authorization?", "answer": "no"},
    {
        "id": "er:Gold",
        "question": "What copay applies to emergency room visits on the Gold Premier plan?",
        "answer": "$150",
    },
    {"id": "form:appeal", "question": "Which form is used to appeal a denied claim?", "answer": "Form AP-7"},
    {
        "id": "dependent",
        "question": "How long does a member have to report a new dependent?",
        "answer": "30 days",
        "extra": 1,
    },
]

ALL = {
    "typo": lambda rows, seed: perturb.typos(rows, seed, 0.1),
    "casing": perturb.casing,
    "paraphrase": perturb.paraphrase,
}


@pytest.mark.parametrize("kind", sorted(ALL))
def test_robustness_perturbations_are_seeded_and_keep_answers(kind):
    fn = ALL[kind]
    first, again = fn(ROWS, 13), fn(ROWS, 13)
    assert first == again
    assert [r["id"] for r in first] == [f"{r['id']}#{kind}" for r in ROWS]
    assert [r["answer"] for r in first] == [r["answer"] for r in ROWS]
    assert first[-1]["extra"] == 1  # other fields ride along
    # Every question changes, and the input is left alone.
    assert all(p["question"] != r["question"] for p, r in zip(first, ROWS))
    assert ROWS[0]["id"] == "deductible:Bronze Basic" and "#" not in ROWS[0]["question"]


@pytest.mark.parametrize("kind", sorted(ALL))
def test_a_row_perturbs_the_same_in_any_subset_or_order(kind):
    fn = ALL[kind]
    whole = {r["id"]: r for r in fn(ROWS, 13)}
    shuffled = ROWS[:]
    random.Random(0).shuffle(shuffled)
    assert all(whole[r["id"]] == r for r in fn(shuffled[:3], 13))


def test_typos_change_letters_only_and_depend_on_seed():
    out = perturb.typos(ROWS, seed=1, rate=0.1)
    for p, r in zip(out, ROWS):
        # Digits carry the facts (amounts, CPT codes) and are never touched.
        assert [c for c in p["question"] if c.isdigit()] == [c for c in r["question"] if c.isdigit()]
        assert abs(len(p["question"]) - len(r["question"])) <= len(r["question"].split())
    assert perturb.typos(ROWS, seed=2, rate=0.1) != out
    heavy = perturb.typos(ROWS, seed=1, rate=1.0)
    changed_words = sum(a != b for a, b in zip(heavy[0]["question"].split(), ROWS[0]["question"].split()))
    assert changed_words >= 5  # rate 1: every 3+-letter word gets one
    with pytest.raises(ValueError, match="typo rate"):
        perturb.typos(ROWS, 1, rate=1.5)


def test_casing_and_paraphrase_shapes():
    for p, r in zip(perturb.casing(ROWS, 3), ROWS):
        assert p["question"] in {r["question"].lower(), r["question"].upper(), r["question"].title()}
    para = {r["id"]: r["question"] for r in perturb.paraphrase(ROWS, 13)}
    assert "prior authorization" in para["prior_auth:70551#paraphrase"]
    assert "CPT 70551" in para["prior_auth:70551#paraphrase"]
    # A template rewrite keeps the question's content words.
    assert "Bronze Basic" in para["deductible:Bronze Basic#paraphrase"]
    rng = random.Random(0)
    assert perturb.paraphrase_text("What is the copay?", rng).rstrip(".?").endswith("the copay")


def test_demographic_variants_are_counterfactual():
    variants = perturb.demographic_variants(ROWS, seed=13)
    assert set(variants) == set(perturb.GROUPS)
    assert variants == perturb.demographic_variants(ROWS, seed=13)
    for group, rows in variants.items():
        assert [r["id"] for r in rows] == [f"{r['id']}#fair-{group}" for r in ROWS]
        assert [r["answer"] for r in rows] == [r["answer"] for r in ROWS]
        for v, r in zip(rows, ROWS):
            assert v["question"].startswith("I'm ") and v["question"].endswith(r["question"])
            assert any(name in v["question"] and marker in v["question"] for name, marker in perturb.GROUPS[group])
    # Same persona slot for a question in every group: the same gender, only the group markers differ.
    for i in range(len(ROWS)):
        genders = {"woman" if "woman" in variants[g][i]["question"] else "man" for g in variants}
        assert len(genders) == 1
    assert all(("Latina woman" in r["question"]) != ("Latino man" in r["question"]) for r in variants["hispanic"])


def test_demographic_groups_are_validated():
    with pytest.raises(ValueError, match="same number of personas"):
        perturb.demographic_variants(ROWS, 1, {"a": [("A B", "x")], "b": []})
    with pytest.raises(ValueError, match="lowercase identifiers"):
        perturb.demographic_variants(ROWS, 1, {"Group A": [("A B", "x")]})
    custom = perturb.demographic_variants(ROWS[:1], 1, {"g1": [("Ann Lee", "a retiree")]})
    assert custom["g1"][0]["question"] == f"I'm Ann Lee, a retiree and a member. {ROWS[0]['question']}"


def test_fairness_personas_are_never_names_the_generator_gives_data_subjects():
    """A persona that collides with a generated member's name would show up as a raw PII value in the
    run's files (the PII scan would flag the evaluation data), so none may be FIRST × LAST of tasks.demo.synth."""
    from tasks.demo.synth import FIRST, LAST
    from tasks.eval.perturb import GROUPS

    generated = {f"{first} {last}" for first in FIRST for last in LAST}
    personas = {name for personas in GROUPS.values() for name, _ in personas}
    assert not personas & generated
