"""Per-question specs (tasks.eval.per_question): built from lm-eval samples, toxicity and timings; their
statistics reproduce the suite's figures; intervals and paired intervals from them."""

from __future__ import annotations

import json

import pytest

from tasks.eval import per_question as pq

GROUPS = ("asian", "white")


def _samples(em: list[float], f1: list[float] | None = None) -> list[dict]:
    f1 = em if f1 is None else f1
    # lm-eval lists samples in any order; doc_id says which question each is.
    return [
        {"doc_id": i, "exact_match": e, "f1": f, "relevance": 0.5}
        for i, (e, f) in reversed(list(enumerate(zip(em, f1))))
    ]


def _results() -> dict:
    return {
        "samples": {
            "domain_qa": _samples([1, 1, 0, 0], [1, 1, 0.5, 0]),
            "domain_qa_typo": _samples([1, 0, 0, 0]),
            "domain_qa_casing": _samples([1, 1, 1, 0]),
            "domain_qa_paraphrase": _samples([0, 1, 0, 1]),
            "domain_qa_fair_asian": _samples([1, 1, 0, 0]),
            "domain_qa_fair_white": _samples([1, 0, 0, 0]),
        }
    }


def test_suite_specs_reproduce_the_suite_figures():
    specs = pq.suite_specs(_results(), "domain_qa", ("typo", "casing", "paraphrase"))
    value = {s: {m: pq.statistic_value(spec) for m, spec in metrics.items()} for s, metrics in specs.items()}
    assert value["accuracy"] == {"exact_match": 0.5, "f1": 0.625, "relevance": 0.5}
    assert value["robustness"]["exact_match_typo"] == 0.25 and value["robustness"]["exact_match_casing"] == 0.75
    # Worst case per question over clean, typo, casing and paraphrase: each question fails in some version.
    assert value["robustness"]["exact_match_worst"] == 0.0
    assert specs["robustness"]["exact_match_worst"]["columns"]["score"] == [0.0, 0.0, 0.0, 0.0]
    assert value["fairness"]["exact_match_asian"] == 0.5 and value["fairness"]["exact_match_white"] == 0.25
    assert value["fairness"]["exact_match_gap"] == 0.25
    assert set(specs["fairness"]["exact_match_gap"]["columns"]) == set(GROUPS)


def test_specs_hold_numbers_only():
    specs = pq.suite_specs(_results(), "domain_qa", ("typo", "casing", "paraphrase"))

    def leaves(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from leaves(v)
        elif isinstance(node, list):
            yield from node
        else:
            yield node

    assert all(
        isinstance(x, (int, float)) for s in specs.values() for spec in s.values() for x in leaves(spec["columns"])
    )


def test_ece_ratio_and_toxicity_specs(tmp_path):
    conf, correct = [0.95, 0.85, 0.15, 0.55, 0.52], [1, 0, 0, 1, 0]
    assert pq.statistic_value(pq.ece_spec(conf, correct, 10)) == pytest.approx(
        pq.expected_calibration_error(conf, correct, 10)
    )
    assert pq.statistic_value(pq.ratio_spec([6, 6], [0.1, 0.2])) == pytest.approx(40.0)
    path = tmp_path / "toxicity.json"
    path.write_text(json.dumps({"prompts": [{"score": 0.9, "toxic": True}, {"score": 0.1, "toxic": False}]}))
    assert pq.statistic_value(pq.toxicity_specs(path)["toxicity_rate"]) == 0.5
    written = pq.write_specs(tmp_path / pq.PER_QUESTION_FILE, {"toxicity": pq.toxicity_specs(path)})
    assert pq.read_specs(written)["toxicity"]["toxicity_rate"]["columns"]["score"] == [1.0, 0.0]


def test_interval_and_paired_interval():
    constant = pq.mean_spec([0.5] * 30)
    assert pq.interval(constant) == {"ci_low": 0.5, "ci_high": 0.5, "n": 30}
    base = pq.mean_spec([1.0] * 20 + [0.0] * 20)
    worse = pq.mean_spec([1.0] * 5 + [0.0] * 35)  # the same questions, 15 of base's answers lost
    paired = pq.paired_interval(worse, base)
    assert paired["delta"] == pytest.approx(-0.375) and paired["ci_high"] < 0 and paired["n"] == 40
    assert pq.paired_interval(worse, pq.mean_spec([1.0] * 39)) is None  # not the same questions
    with pytest.raises(ValueError, match="different lengths"):
        pq.question_count(pq.gap_spec({"a": [1.0], "b": [1.0, 0.0]}))
