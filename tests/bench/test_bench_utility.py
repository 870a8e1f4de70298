"""The utility benchmark's recipe search tunes on validation only; its scoring and summaries are sound."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_utility", REPO / "bench" / "bench_utility.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_gives_bucket_cis_and_paired_gain():
    bench = _bench()
    tuned = [{"bucket": "common", "em": 1.0, "f1": 1.0}] * 6 + [{"bucket": "tail", "em": 0.0, "f1": 0.5}] * 4
    base = [{"bucket": "common", "em": 0.0, "f1": 0.0}] * 6 + [{"bucket": "tail", "em": 0.0, "f1": 0.0}] * 4
    summary = bench.summarise(tuned, base)
    assert summary["all"]["n"] == 10 and summary["common"]["n"] == 6 and summary["tail"]["n"] == 4
    assert summary["common"]["em"]["mean"] == 1.0 and summary["common"]["gain"]["ci_low"] == 1.0
    assert summary["tail"]["gain"] == {**summary["tail"]["gain"], "mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert summary["all"]["em"]["ci_low"] < 0.6 < summary["all"]["em"]["ci_high"]


def test_share_of_nonprivate_gain_is_per_n():
    bench = _bench()

    def run(name, mult, eps, gain):
        return {"name": name, "multiplier": mult, "epsilon": eps, "metrics": {"common": {"gain": {"mean": gain}}}}

    runs = [
        run("a", 1, 8.0, 0.05),
        run("b", 1, float("inf"), 0.10),
        run("c", 4, 8.0, 0.09),
        run("d", 4, float("inf"), 0.0),
    ]
    shares = bench.share_of_nonprivate_gain({"runs": runs})
    assert shares["a"]["mean"] == 0.5 and shares["b"]["mean"] == 1.0
    assert shares["a"]["ci_low"] is None  # no per-question scores in the file: the point estimate alone
    assert shares["c"] is None  # non-private gained nothing at that N: no ratio to claim


def _paired_doc(dp_right: int, np_right: int, n: int = 100) -> dict:
    """Base answers none of n common questions; DP the first dp_right, non-private the first np_right."""

    def run(name, eps, right):
        em = [1.0 if i < right else 0.0 for i in range(n)]
        metrics = {"common": {"gain": {"mean": right / n}}}
        return {"name": name, "multiplier": 1, "epsilon": eps, "metrics": metrics, "em_per_question": em}

    base = [{"id": f"q{i}", "bucket": "common", "em": 0.0} for i in range(n)]
    return {"base_per_question": base, "runs": [run("dp", 8.0, dp_right), run("np", float("inf"), np_right)]}


def test_share_interval_is_a_paired_bootstrap_over_questions():
    bench = _bench()
    # DP answers exactly what non-private answers: every resample's share is 1, however few questions.
    same = bench.share_of_nonprivate_gain(_paired_doc(40, 40))["dp"]
    assert same == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    # DP right on 30 of the 40 non-private gets right: 0.75. Resampling the 100 questions, the share is
    # 30-of-40 drawn again: a binomial proportion, so the interval is about 0.75 ± 1.96·sqrt(.75·.25/40).
    share = bench.share_of_nonprivate_gain(_paired_doc(30, 40))["dp"]
    assert share["mean"] == 0.75
    assert 0.59 < share["ci_low"] < 0.65 and 0.85 < share["ci_high"] < 0.90
    line = bench._share(share)
    assert line.startswith("0.75 [0.") and bench._verdict(share, 0.8).startswith("NOT met, and 0.8 lies inside")
    assert bench._verdict({"mean": 0.95, "ci_low": 0.91, "ci_high": 0.99}, 0.9) == "met"


def test_same_compute_keeps_batch_and_steps():
    bench = _bench()
    train = {"epochs": 2.5, "batch_size": 128}
    scaled = bench.same_compute(train, 4000, 64000)
    assert scaled["batch_size"] == 128 and scaled["epochs"] * 64000 == pytest.approx(2.5 * 4000)


def test_pseudonymise_replaces_every_keyed_value():
    bench = _bench()
    rows = [{"record_id": "R-1", "text": "Member: Maria Gonzalez, SSN 123-45-6789, Maria Gonzalez again."}]
    key = [
        {"type": "PERSON", "value": "Maria Gonzalez", "record_id": "R-1"},
        {"type": "US_SSN", "value": "123-45-6789", "record_id": "R-1"},
    ]
    (out,) = bench.pseudonymise(rows, key)
    assert "Maria" not in out["text"] and "6789" not in out["text"]
    assert out["text"].count("<PERSON_") == 2 and "<US_SSN_" in out["text"]


@pytest.mark.slow
def test_tuning_never_opens_the_test_split(tmp_path):
    """The recipe search scores validation only: with the test split made unreadable (a folder in its place)
    it still runs to the end, and no process of it opens that path."""
    bench = _bench()
    work = tmp_path / "work"
    data = bench.prepare_data(work / "data_1x", 240)
    test_file = Path(data["synth"]) / "qa_test.jsonl"
    test_file.unlink()
    test_file.mkdir()  # any open() of it now raises IsADirectoryError, in this process or a child
    opened: list[str] = []

    def audit(event, args):
        if event == "open" and args and str(args[0]).endswith("qa_test.jsonl"):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    out = tmp_path / "tuning.json"
    candidates = json.dumps([{"learning_rate": 0.01, "optimizer": "adamw"}])
    bench.main(
        ["tune", "--quick", "--records", "240", "--work", str(work), "--out", str(out), "--candidates", candidates]
    )
    doc = json.loads(out.read_text())
    assert doc["split"] == "validation" and len(doc["candidates"]) == 1
    assert doc["candidates"][0]["metrics"]["all"]["n"] >= 300  # every validation question was scored
    assert opened == []
    shutil.rmtree(work, ignore_errors=True)


def test_figures_are_never_rounded_into_a_better_claim():
    bench = _bench()
    assert bench._cut(0.14375) == "0.143" and bench._cut(0.2999) == "0.299"
    assert bench._cut(-0.0476) == "-0.048"  # a loss is not shown smaller than it is
    assert bench._ci({"mean": 0.14375, "ci_low": 0.0656, "ci_high": 0.1281}) == "0.143 [0.065, 0.129]"


def test_target_lines_read_the_share_and_the_base_bound():
    bench = _bench()

    def run(name, mult, eps, gain, low):
        return {
            "name": name,
            "multiplier": mult,
            "epsilon": eps,
            "records": 16000 * mult,
            "metrics": {"common": {"gain": {"mean": gain}, "em": {"ci_low": low}}},
        }

    doc = {
        "base": {"common": {"em": {"ci_high": 0.19}}},
        "runs": [run("a", 1, 8.0, 0.35, 0.39), run("b", 1, float("inf"), 0.44, 0.49)],
    }
    (line,) = bench.target_lines(doc)
    assert "0.79 of the non-private gain" in line and "NOT met" in line and "(above)" in line


def test_results_are_strict_json_and_read_back_non_private_as_infinite(tmp_path):
    bench = _bench()
    doc = {"runs": [{"name": "n1x_epsinf", "epsilon": float("inf")}, {"name": "n1x_eps8", "epsilon": 8.0}]}
    path = tmp_path / "utility.json"
    path.write_text(bench.strict_json(doc))

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    strict = json.loads(path.read_text(), parse_constant=refuse)
    assert [r["epsilon"] for r in strict["runs"]] == [None, 8.0]
    assert [r["epsilon"] for r in bench.read_doc(path)["runs"]] == [float("inf"), 8.0]


@pytest.mark.parametrize("name", ["utility.json", "utility_share.json"])
def test_committed_results_are_strict_json(name):
    committed = REPO / "bench" / "results" / name
    doc = json.loads(committed.read_text(), parse_constant=lambda c: pytest.fail(f"{committed}: {c} is not JSON"))
    assert any(r["epsilon"] is None for r in doc["runs"])


def test_committed_share_intervals_are_what_the_kept_scores_give():
    bench = _bench()
    doc = bench.read_doc(REPO / "bench" / "results" / "utility_share.json")
    page = (REPO / "bench" / "results" / "utility_share.md").read_text()
    for run in doc["runs"]:
        share = bench.share_of_nonprivate_gain(doc)[run["name"]]
        assert share["ci_low"] is not None and f"| {bench._share(share)} |" in page, run["name"]


def test_pseudonymise_keeps_the_member_as_its_keyed_subject():
    bench = _bench()
    rows = [
        {"record_id": "R-1", "text": "Letter. Member ID MBR-12345678.", "member_id": "MBR-12345678"},
        {"record_id": "R-2", "text": "Plan document.", "member_id": ""},
    ]
    key = [{"type": "MEMBER_ID", "value": "MBR-12345678", "record_id": "R-1"}]
    member, plan = bench.pseudonymise(rows, key)
    assert member["subject"] in member["text"] and member["subject"].startswith("<MEMBER_ID_")  # field = text
    assert "MBR-" not in json.dumps(member) and "subject" not in plan


def test_expected_records_trained_counts_draws_past_k():
    spec = importlib.util.spec_from_file_location("bench_subject", REPO / "bench" / "bench_utility_subject.py")
    subject = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(subject)
    counts = {"units": 100, "records_without_subject": 50, "records_per_subject": {"1": 40, "10": 10}}
    none = subject.expected_records_trained(counts, batch=10, steps=0, k=2)
    many = subject.expected_records_trained(counts, batch=10, steps=2000, k=2)
    assert none == 0 and many == pytest.approx(50 + 40 + 100, rel=1e-3)  # every record, the 10-record subjects' too
    one = subject.expected_records_trained(counts, batch=10, steps=1, k=2)
    assert one == pytest.approx(0.1 * (50 + 40 + 10 * 2))  # one step: a sampled subject trains k of its records
