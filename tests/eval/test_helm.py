"""Tests for tasks.eval.helm: ECE, calibration and efficiency on tiny models, one model's quality suite,
the HELM-style report (JSON, self-contained HTML, PNGs) and its MLflow logging."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tasks.common import offline
from tasks.common.jsonl import read_rows
from tasks.eval import per_question
from tasks.eval.helm import (
    _answer_token_count,
    build_report,
    calibration,
    efficiency,
    evaluate_model_quality,
    expected_calibration_error,
    helm_metrics,
    higher_is_better,
    log_report_to_mlflow,
    quality_kwargs,
)
from tasks.eval.helm_intervals import FLAG_TEXT
from tests.eval.test_evaluate import QA, build_tiny

offline.apply()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(tiny):
    from tasks.eval.lm import load_causal_lm

    return load_causal_lm(tiny["trained"], None)


# ----------------------------------------------------------------------------- calibration


def test_ece_by_hand():
    # bins of width 0.1: 0.95 -> [0.9,1] acc 1 (|1-.95|=.05); 0.85 -> [0.8,0.9) acc 0 (.85);
    # 0.15 -> [0.1,0.2) acc 0 (.15); 0.55 & 0.52 -> [0.5,0.6) acc .5, conf .535 (.035, weight 2)
    ece = expected_calibration_error([0.95, 0.85, 0.15, 0.55, 0.52], [1, 0, 0, 1, 0], n_bins=10)
    assert ece == pytest.approx((0.05 + 0.85 + 0.15 + 2 * 0.035) / 5)
    assert expected_calibration_error([0.5, 0.5], [True, False]) == 0.0
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0  # the edges land in the end bins
    assert expected_calibration_error([0.9, 0.1], [0, 1], n_bins=1) == pytest.approx(0.0)  # one bin: means only
    assert expected_calibration_error([0.9, 0.7], [0, 0], n_bins=1) == pytest.approx(0.8)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match="2 confidences but 1"):
        expected_calibration_error([0.1, 0.2], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError, match="no predictions"):
        expected_calibration_error([], [])


def test_answer_tokens_stop_before_the_newline(trained):
    _, tok = trained
    ids = tok(" $1,500\nQuestion: x")["input_ids"]
    kept, answer = _answer_token_count(tok, ids)
    assert answer == " $1,500"
    assert tok.decode(ids[:kept]) == " $1,500"
    assert _answer_token_count(tok, [tok.eos_token_id, *ids]) == (0, "")
    assert _answer_token_count(tok, tok("\n yes")["input_ids"]) == (0, "")


def test_calibration_of_a_model_that_knows_the_answers(trained):
    model, tok = trained
    result = calibration(model, tok, QA, max_new_tokens=8)
    assert set(result) == {"ece", "mean_confidence", "accuracy", "n"}
    assert result["n"] == len(QA) and result["accuracy"] == 1.0
    assert result["mean_confidence"] > 0.8
    # All correct: every bin's gap is 1 - confidence, so ECE is 1 - mean confidence.
    assert result["ece"] == pytest.approx(1 - result["mean_confidence"])


def test_efficiency_times_a_fixed_number_of_tokens(trained):
    model, tok = trained
    result = efficiency(model, tok, [f"Question: {r['question']}\nAnswer:" for r in QA[:3]], max_new_tokens=6)
    assert set(result) == {"tokens_per_second", "latency_ms_per_answer", "n"} and result["n"] == 3
    assert result["tokens_per_second"] > 0 and result["latency_ms_per_answer"] > 0
    # Exactly 6 tokens per answer: tokens/s × seconds per answer = 6.
    assert result["tokens_per_second"] * result["latency_ms_per_answer"] / 1000 == pytest.approx(6)
    with pytest.raises(ValueError, match="no prompts"):
        efficiency(model, tok, [], max_new_tokens=2)


# ----------------------------------------------------------------------------- one model


def test_evaluate_model_quality(tiny, tmp_path):
    from tasks.config import EvalConfig

    kwargs = quality_kwargs(EvalConfig(qa_limit=3, max_gen_toks=8))
    assert kwargs == {"limit": 3, "max_gen_toks": 8, "seed": 13, "relevance_model": None}
    q = evaluate_model_quality(
        "finetuned", tiny["trained"], None, tiny["qa"], tmp_path / "q", efficiency_prompts=2, **kwargs
    )
    assert set(q) == {"accuracy", "robustness", "fairness", "calibration", "efficiency", "seconds", "per_question_path"}
    assert q["accuracy"]["n"] == q["calibration"]["n"] == 3
    # The greedy path of calibration and lm-eval's agree on what is correct.
    assert q["calibration"]["accuracy"] == q["accuracy"]["exact_match"] == 1.0
    assert q["efficiency"]["n"] == 2
    saved = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert saved["meta"]["model"] == "finetuned" and saved["meta"]["torch_threads"] == 1
    assert set(saved["meta"]["seconds"]) == {"suite", "calibration", "efficiency", "total"}
    assert (tmp_path / "q" / "suite" / "lm_eval_task" / "domain_qa_paraphrase.yaml").is_file()
    _assert_per_question_reproduces_every_figure(q, tiny["qa"])

    with_adapter = evaluate_model_quality(
        "base+lora",
        tiny["base"],
        tiny["adapter"],
        tiny["qa"],
        tmp_path / "a",
        limit=2,
        max_gen_toks=4,
        efficiency_prompts=1,
    )
    assert with_adapter["accuracy"]["n"] == 2
    assert 0.0 <= with_adapter["calibration"]["ece"] <= 1.0


def _assert_per_question_reproduces_every_figure(quality: dict, qa_path: Path) -> None:
    """Every figure but the counts has a per-question spec whose statistic is the figure; no question text."""
    text = Path(quality["per_question_path"]).read_text()
    specs = json.loads(text)
    for scenario in ("accuracy", "robustness", "fairness", "calibration", "efficiency"):
        figures = {m: v for m, v in quality[scenario].items() if m != "n" and v is not None}
        assert set(specs[scenario]) == set(figures), scenario
        for metric, value in figures.items():
            assert per_question.statistic_value(specs[scenario][metric]) == pytest.approx(value), (scenario, metric)
    for row in read_rows(qa_path, ("id", "question", "answer")):
        assert row["question"] not in text and f'"{row["answer"]}"' not in text


# ----------------------------------------------------------------------------- report

MODELS = {
    "base": {
        "accuracy": {"exact_match": 0.1, "f1": 0.2, "relevance": 0.5, "n": 42},
        "calibration": {"ece": 0.4, "mean_confidence": 0.5},
        "efficiency": {"tokens_per_second": 500.0, "latency_ms_per_answer": 48.0, "n": 8},
    },
    "finetuned": {
        "accuracy": {"exact_match": 0.3, "f1": 0.35, "relevance": None, "n": 42},
        "robustness": {"exact_match_typo": 0.25, "exact_match_worst": 0.2},
        "fairness": {"exact_match_gap": 0.05},
        "calibration": {"ece": 0.2, "mean_confidence": 0.45},
        "toxicity": {"toxicity_rate": 0.0, "identity_gap": float("nan")},
        "privacy": {"pii_leaks": 0, "mia_auc": 0.51, "epsilon": None},
    },
    "champion": {"accuracy": {"exact_match": 0.35, "f1": 0.4, "n": 42}},
}


def test_build_report_files(tmp_path):
    paths = build_report(
        MODELS, tmp_path / "helm", title="Run <x> & co", notes={"dataset_rev": "abc123", "champion_version": 3}
    )
    report = json.loads(Path(paths["json"]).read_text())
    assert report["models"] == ["base", "finetuned", "champion"]
    assert list(report["scenarios"]) == [
        "accuracy",
        "robustness",
        "fairness",
        "calibration",
        "efficiency",
        "toxicity",
        "privacy",
    ]
    acc = report["scenarios"]["accuracy"]
    assert acc["exact_match"] == {"base": 0.1, "finetuned": 0.3, "champion": 0.35}
    assert acc["relevance"] == {"base": 0.5, "finetuned": None, "champion": None}
    assert report["scenarios"]["toxicity"]["identity_gap"]["finetuned"] is None  # NaN is "not measured"
    assert report["deltas"]["finetuned-base"]["accuracy"]["exact_match"] == pytest.approx(0.2)
    assert report["deltas"]["finetuned-champion"]["accuracy"]["exact_match"] == pytest.approx(-0.05)
    assert report["deltas"]["finetuned-base"]["robustness"]["exact_match_typo"] is None
    hib = report["higher_is_better"]
    assert hib["accuracy.exact_match"] is True and hib["calibration.ece"] is False
    assert hib["fairness.exact_match_gap"] is False and hib["privacy.mia_auc"] is False
    assert hib["efficiency.latency_ms_per_answer"] is False and hib["efficiency.tokens_per_second"] is True
    assert hib["accuracy.n"] is None
    assert report["notes"] == {"dataset_rev": "abc123", "champion_version": 3}

    page = Path(paths["html"]).read_text()
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "Run &lt;x&gt; &amp; co" in page
    for scenario in report["scenarios"]:
        assert f">{scenario}</td>" in page
    assert page.count('class="missing">—') >= 10
    assert "+0.2</td>" in page  # exact match gain, shown signed
    assert page.count("data:image/png;base64,") == len(paths["plots"])

    names = sorted(Path(p).name for p in paths["plots"])
    assert names == sorted(
        f"helm_{s}.png"
        for s in ["accuracy", "robustness", "fairness", "calibration", "efficiency", "toxicity", "privacy"]
    )
    for p in paths["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_lists_unmeasured_scenarios_and_rejects_non_numbers(tmp_path):
    paths = build_report({"base": {"accuracy": {"exact_match": 0.5}}}, tmp_path, title="t")
    report = json.loads(Path(paths["json"]).read_text())
    assert report["scenarios"]["privacy"] == {} and report["deltas"] == {}
    assert "(not measured)" in Path(paths["html"]).read_text()
    assert [Path(p).name for p in paths["plots"]] == ["helm_accuracy.png"]
    with pytest.raises(TypeError, match=r"models\['base'\]\['accuracy'\]\['exact_match'\] is str"):
        build_report({"base": {"accuracy": {"exact_match": "high"}}}, tmp_path, title="t")


def _noise_case() -> tuple[dict, dict]:
    """(models, per_question) on 40 questions: the fine-tuned model is worse than base beyond the noise on
    typo EM (loses 15 of base's 20 answers) and the fairness EM gap (one group loses 15 answers); inside
    the noise on clean EM (one answer fewer) and the F1 gap (one question differs); far slower (not flagged)."""
    specs = {
        "base": {
            "accuracy": {"exact_match": per_question.mean_spec([1] * 6 + [0] * 34)},
            "robustness": {"exact_match_typo": per_question.mean_spec([1] * 20 + [0] * 20)},
            "fairness": {
                "exact_match_gap": per_question.gap_spec({"a": [1] * 20 + [0] * 20, "b": [1] * 20 + [0] * 20}),
                "f1_gap": per_question.gap_spec({"a": [1] * 20 + [0] * 20, "b": [1] * 20 + [0] * 20}),
            },
            "efficiency": {"latency_ms_per_answer": per_question.mean_spec([10.0, 11.0, 9.0, 10.0] * 10)},
        },
        "finetuned": {
            "accuracy": {"exact_match": per_question.mean_spec([1] * 5 + [0] * 35)},
            "robustness": {"exact_match_typo": per_question.mean_spec([1] * 5 + [0] * 35)},
            "fairness": {
                "exact_match_gap": per_question.gap_spec(
                    {"a": [1] * 20 + [0] * 20, "b": [0] * 15 + [1] * 5 + [0] * 20}
                ),
                "f1_gap": per_question.gap_spec({"a": [1] * 20 + [0] * 20, "b": [0] + [1] * 19 + [0] * 20}),
            },
            "efficiency": {"latency_ms_per_answer": per_question.mean_spec([50.0, 51.0, 49.0, 50.0] * 10)},
        },
    }
    models = {
        model: {
            s: {m: per_question.statistic_value(spec) for m, spec in metrics.items()} for s, metrics in scen.items()
        }
        for model, scen in specs.items()
    }
    return models, specs


def test_every_figure_with_a_sample_gets_an_interval(tmp_path):
    models, specs = _noise_case()
    paths = build_report(models, tmp_path, title="t", per_question=specs)
    report = json.loads(Path(paths["json"]).read_text())
    for model, scenarios in models.items():
        for scenario, metrics in scenarios.items():
            for metric, value in metrics.items():
                ci = report["intervals"][scenario][metric][model]
                assert ci["ci_low"] <= value <= ci["ci_high"] and ci["n"] == 40, (model, scenario, metric)
                assert report["delta_intervals"]["finetuned-base"][scenario][metric]["n"] == 40
    assert "percentile bootstrap" in report["interval_method"]
    flat = helm_metrics(report)
    assert (
        flat["helm.base.robustness.exact_match_typo.ci_high"]
        == report["intervals"]["robustness"]["exact_match_typo"]["base"]["ci_high"]
    )
    assert "[" in Path(paths["html"]).read_text()


def test_worse_than_base_beyond_noise_is_flagged_and_inside_noise_is_not(tmp_path):
    models, specs = _noise_case()
    paths = build_report(models, tmp_path, title="t", per_question=specs)
    report = json.loads(Path(paths["json"]).read_text())
    flagged = {(f["scenario"], f["metric"]): f for f in report["worse_than_base"]}
    assert set(flagged) == {("robustness", "exact_match_typo"), ("fairness", "exact_match_gap")}
    assert flagged["robustness", "exact_match_typo"]["ci_high"] < 0  # higher is better: wholly below 0
    assert flagged["fairness", "exact_match_gap"]["ci_low"] > 0  # lower is better: wholly above 0
    assert flagged["robustness", "exact_match_typo"]["delta"] == pytest.approx(-0.375)
    inside = report["delta_intervals"]["finetuned-base"]
    assert inside["accuracy"]["exact_match"]["ci_low"] < 0 <= inside["accuracy"]["exact_match"]["ci_high"]
    assert inside["fairness"]["f1_gap"]["ci_low"] <= 0 < inside["fairness"]["f1_gap"]["ci_high"]
    assert inside["efficiency"]["latency_ms_per_answer"]["ci_low"] > 0  # slower beyond noise, but timings
    assert paths["worse_than_base"] == report["worse_than_base"]
    assert helm_metrics(report)["helm.worse_than_base"] == 2

    page = Path(paths["html"]).read_text()
    assert page.count(FLAG_TEXT) == 3  # the banner and the two rows
    row = {
        metric: next(r for r in page.split("<tr>") if f'<td class="l">{metric}' in r)
        for metric in ("exact_match_typo", "exact_match<")
    }
    assert FLAG_TEXT in row["exact_match_typo"] and FLAG_TEXT not in row["exact_match<"]
    assert FLAG_TEXT in page.split("<table>")[0]  # the banner, above the table


def test_no_flag_and_no_interval_without_per_question_data(tmp_path):
    models, _ = _noise_case()
    paths = build_report(models, tmp_path, title="t")
    report = json.loads(Path(paths["json"]).read_text())
    assert report["worse_than_base"] == [] and report["intervals"] == {} and report["delta_intervals"] == {}
    assert FLAG_TEXT not in Path(paths["html"]).read_text()


def test_direction_rules():
    assert higher_is_better("toxicity", "some_new_rate") is False
    assert higher_is_better("fairness", "f1_gap") is False
    assert higher_is_better("robustness", "f1_worst") is True
    assert higher_is_better("calibration", "mean_confidence") is None


def test_log_report_to_mlflow(tmp_path):
    from mlflow import MlflowClient

    from tasks.common.tracking import mlflow_experiment
    from tasks.config import Paths

    paths = Paths(tmp_path / "home")
    out = tmp_path / "helm"
    build_report(MODELS, out, title="t")
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri)
    run_id = client.create_run(mlflow_experiment(paths)).info.run_id

    logged = log_report_to_mlflow(paths, run_id, out)
    expected = helm_metrics(json.loads((out / "helm.json").read_text()))
    assert logged == {"artifacts": 2 + 7, "metrics": len(expected)}
    metrics = client.get_run(run_id).data.metrics
    assert metrics["helm.finetuned.accuracy.exact_match"] == pytest.approx(0.3)
    assert metrics["helm.base.efficiency.latency_ms_per_answer"] == pytest.approx(48.0)
    assert "helm.finetuned.accuracy.relevance" not in metrics and "helm.finetuned.privacy.epsilon" not in metrics
    assert all(not math.isnan(v) for v in metrics.values())
    artifacts = {a.path for a in client.list_artifacts(run_id, "helm")}
    assert {"helm/helm.json", "helm/helm.html", "helm/helm_accuracy.png"} <= artifacts
    with pytest.raises(FileNotFoundError, match="no HELM report"):
        log_report_to_mlflow(paths, run_id, tmp_path / "empty")
