"""The evaluate stage's HELM page (tasks.eval.evidence): its notes name the run's dataset revision, and
it bootstraps each figure from the models' per-question files."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.config import Paths
from tasks.eval import evidence, per_question

RUN = "manual__2026-12-07T00:00:00+00:00"
REV = "c56babefec06" + "0" * 28


def _run_with_version_stage(home: Path) -> Paths:
    paths = Paths(home)
    stages = paths.run_dir(RUN) / "stages"
    stages.mkdir(parents=True)
    (stages / "version.json").write_text(json.dumps({"dataset_rev": REV, "dvc_md5": "d41d"}))
    return paths


def _quality(tmp_path: Path, name: str, em: list[int]) -> dict:
    folder = tmp_path / "eval" / f"quality_{name}"
    folder.mkdir(parents=True)
    specs = {"accuracy": {"exact_match": per_question.mean_spec(em)}}
    path = per_question.write_specs(folder / per_question.PER_QUESTION_FILE, specs)
    return {
        "accuracy": {"exact_match": sum(em) / len(em), "n": len(em)},
        "seconds": 1.0,
        "per_question_path": str(path),
    }


def test_helm_notes_name_the_runs_dataset_revision(tmp_path):
    paths = _run_with_version_stage(tmp_path / "home")
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "q1", "question": "q?", "answer": "a"}\n')
    helm = evidence._helm_report(
        {"base": {"accuracy": {"exact_match": 0.5}}},
        tmp_path / "helm",
        run_id=RUN,
        paths=paths,
        prepared={"base_model_sha256": "ab" * 32},
        trained={"noise_source": "torch"},  # the train result does not repeat the revision
        champion=None,
        qa_path=qa,
        per_question={},
    )
    notes = json.loads(Path(helm["json"]).read_text())["notes"]
    assert notes["dataset_rev"] == REV
    assert f"<td>{REV}</td>" in Path(helm["html"]).read_text()


def test_per_question_specs_join_quality_and_toxicity_files(tmp_path):
    quality = {"base": _quality(tmp_path, "base", [1, 0, 1, 0]), "finetuned": _quality(tmp_path, "finetuned", [0] * 4)}
    for name, flags in (("base", [False, False]), ("finetuned", [True, False])):
        folder = tmp_path / "eval" / f"toxicity_{name}"
        folder.mkdir()
        prompts = [{"id": f"p{i}", "score": 0.9 if toxic else 0.1, "toxic": toxic} for i, toxic in enumerate(flags)]
        (folder / "toxicity.json").write_text(json.dumps({"prompts": prompts}))
    specs = evidence._per_question_specs(quality, ["base", "finetuned"], tmp_path / "eval")
    assert per_question.statistic_value(specs["base"]["accuracy"]["exact_match"]) == 0.5
    assert per_question.statistic_value(specs["finetuned"]["toxicity"]["toxicity_rate"]) == 0.5
    assert set(specs) == {"base", "finetuned"}


def test_the_summary_carries_the_calibrated_mia_auc_with_its_ci():
    mia = {
        "auc": 0.71,
        "auc_ci_low": 0.66,
        "auc_ci_high": 0.76,
        "score": "reference",
        "best_score": "min_k",
        "best_auc": 0.74,
        "scores": {"reference": {"auc": 0.71}, "min_k": {"auc": 0.74}},
    }
    privacy = {"pii_leaks": 0, "canary_exposure_max": 1.0, **evidence.mia_fields(mia), "mia": mia}
    tox = {"toxicity_rate": 0.0}
    summary = evidence._safety_summary({"finetuned": tox, "base": tox}, privacy)
    assert summary["mia_auc"] == 0.71 and summary["mia_auc_ci"] == [0.66, 0.76]
    assert summary["mia_score"] == "reference" and summary["mia_best_auc"] == {"score": "min_k", "auc": 0.74}
    assert summary["privacy"]["mia"]["scores"]["min_k"]["auc"] == 0.74
    skipped = evidence._safety_summary(
        {"finetuned": tox, "base": tox}, {"pii_leaks": 0, "canary_exposure_max": None, **evidence.mia_fields(None)}
    )
    assert skipped["mia_auc"] is None and skipped["mia_auc_ci"] is None
