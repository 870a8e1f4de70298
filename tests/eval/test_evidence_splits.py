"""The evaluate stage's QA splits (tasks.eval.evidence): both splits come from the dataset revision, both
are scored for base and fine-tuned, and only the validation split reaches the gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import GatesConfig, Paths, PipelineConfig
from tasks.eval import evidence, split_figures
from tasks.release.gates import check_gates

N = 300


def _write_split(path: Path, tag: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"{tag}{i}", "question": f"{tag} question {i}?", "answer": "a", "bucket": ("common", "tail")[i % 2]}
        for i in range(N)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scores(correct: int) -> dict[str, list[float]]:
    em = [1.0] * correct + [0.0] * (N - correct)
    return {"exact_match": em, "f1": em}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_HOME", str(tmp_path / "home"))
    paths = Paths()
    data = paths.run_dir("r1") / "dataset" / "data"
    return {
        "paths": paths,
        "validation": _write_split(data / "qa_validation.jsonl", "v"),
        "test": _write_split(data / "qa_test.jsonl", "t"),
    }


def test_both_splits_come_from_the_dataset_revision(run):
    assert evidence._qa_splits(run["paths"], "r1") == {"validation": run["validation"], "test": run["test"]}
    run["test"].unlink()
    with pytest.raises(FileNotFoundError, match="no test QA split"):
        evidence._qa_splits(run["paths"], "r1")


def test_the_gates_read_validation_and_the_test_split_is_reported_only(run, monkeypatch, tmp_path):
    """Fine-tuned is below base on validation and far above it on test: the gate still refuses it."""
    validation = {"base": _scores(150), "finetuned": _scores(60)}
    test = {"base": _scores(30), "finetuned": _scores(200)}
    opened = []

    def suite_scores(quality_dir):
        opened.append(("suite", Path(quality_dir).name))
        return validation[Path(quality_dir).name.removeprefix("quality_")]

    def qa_scores(base_dir, adapter, qa_path, out_dir, **kwargs):
        opened.append(("qa", Path(qa_path).name))
        return test[Path(out_dir).name.removeprefix("qa_test_")]

    monkeypatch.setattr(split_figures, "suite_scores", suite_scores)
    monkeypatch.setattr(split_figures, "qa_scores", qa_scores)
    splits = evidence._qa_splits(run["paths"], "r1")
    models = {"base": (tmp_path / "base", None), "finetuned": (tmp_path / "base", tmp_path / "adapter")}
    figures = evidence._split_figures(splits, models, tmp_path / "eval", PipelineConfig())

    # The validation scores are the quality suite's (run on validation); only the test split gets its own pass.
    assert sorted(opened) == [("qa", "qa_test.jsonl")] * 2 + [("suite", "quality_base"), ("suite", "quality_finetuned")]
    assert figures["validation"]["sha256"] != figures["test"]["sha256"]
    assert figures["test"]["gain"]["exact_match"]["ci_low"] > 0  # reported
    assert set(figures["test"]["finetuned"]["buckets"]) == {"common", "tail"}

    summary = evidence._split_summary(figures)
    assert summary["exact_match_below_base"] == 1.0 and summary["worse_than_base_beyond_noise"] is True
    assert summary["qa_splits"] is figures
    outcome = check_gates({**summary, "exact_match_gain": None}, GatesConfig())
    assert outcome["status"] == "gated" and outcome["failed"] == ["not_worse_than_base"]


def test_the_qa_limit_applies_to_both_splits(run, monkeypatch, tmp_path):
    limits = []

    def qa_scores(base_dir, adapter, qa_path, out_dir, **kwargs):
        limits.append(kwargs["limit"])
        return {"exact_match": [1.0] * 10, "f1": [1.0] * 10}

    monkeypatch.setattr(
        split_figures, "suite_scores", lambda quality_dir: {"exact_match": [0.0] * 10, "f1": [0.0] * 10}
    )
    monkeypatch.setattr(split_figures, "qa_scores", qa_scores)
    models = {"base": (tmp_path / "base", None), "finetuned": (tmp_path / "base", None)}
    cfg = PipelineConfig(evaluate={"qa_limit": 10})
    figures = evidence._split_figures(evidence._qa_splits(run["paths"], "r1"), models, tmp_path / "eval", cfg)
    assert figures["validation"]["n"] == figures["test"]["n"] == 10 and limits == [10, 10]
