"""The run report's domain QA figures (tasks.release.report): the test split with 95% CIs, overall and per
bucket, and what the validation comparison with base did to the promotion."""

from __future__ import annotations

import json

from tasks.eval.split_figures import split_figures
from tasks.release.report import build_report, render_markdown, summary_lines

N = 320


def _figures(base_correct: int, tuned_correct: int) -> dict:
    rows = [{"bucket": ("common", "mid", "tail", "common")[i % 4]} for i in range(N)]

    def scores(correct: int) -> dict:
        em = [1.0] * correct + [0.0] * (N - correct)
        return {"exact_match": em, "f1": em}

    return split_figures(rows, scores(base_correct), scores(tuned_correct))


def _run(run_dir, validation: dict, test: dict, gate_status: str) -> dict:
    (run_dir / "stages").mkdir(parents=True)
    evaluate = {"qa_splits": {"validation": validation, "test": test}}
    gates = {"status": "gated" if gate_status == "failed" else "passed", "reasons": [], "gates": []}
    gates["gates"].append({"name": "not_worse_than_base", "value": 1.0, "threshold": 0.0, "status": gate_status})
    for name, payload in (("prepare", {"run_id": "r1"}), ("evaluate", evaluate), ("gates", gates)):
        (run_dir / "stages" / f"{name}.json").write_text(json.dumps(payload))
    return build_report(run_dir)


def test_the_test_split_is_reported_with_intervals_per_bucket(tmp_path):
    report = _run(tmp_path, _figures(40, 50), _figures(30, 46), "passed")
    text = "\n".join(summary_lines(report))
    # 46/320 = 0.14375 is shown as 0.143: a claim is cut, never rounded up.
    assert "test split EM       base 0.093 [" in text and "→ fine-tuned 0.143 [" in text
    assert "(320 questions, 95% CI; reported, never gated)" in text
    assert all(f"  EM {b} (" in text for b in ("common", "mid", "tail"))
    assert "vs base             not below base on validation (EM gain +0.031 [" in text
    md = render_markdown(report)
    assert "## Domain QA, test split (reported only, never gated or tuned on)" in md
    assert "| questions | n | base EM | fine-tuned EM | EM gain |" in md
    assert "| common | 160 |" in md and "| tail | 80 |" in md and "| all | 320 |" in md


def test_a_model_below_base_says_it_was_never_promoted(tmp_path):
    report = _run(tmp_path, _figures(150, 60), _figures(30, 46), "failed")
    line = next(x for x in summary_lines(report) if x.startswith("vs base"))
    assert "worse than base beyond noise on validation (EM gain -0.282 [" in line
    assert line.endswith("; never promoted (gate not_worse_than_base)")
    report = _run(tmp_path / "b", _figures(150, 149), _figures(30, 46), "off")
    line = next(x for x in summary_lines(report) if x.startswith("vs base"))
    assert "below base on validation, within the noise" in line and line.endswith("gate not_worse_than_base is off")
