"""The HELM page's "Domain QA by fact frequency" section (tasks.eval.helm_qa): per split, a row for all
questions and one per bucket with base / fine-tuned EM, the paired EM gain and fine-tuned F1, each with
its 95% CI, cut never rounded up; the gain flagged when its CI lies wholly below or above 0; the same
numbers in helm.json; and the evaluate stage hands both splits' figures to the page."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.config import Paths, PipelineConfig
from tasks.eval import evidence, helm_qa, lm
from tasks.eval.helm import build_report
from tasks.eval.helm_intervals import FLAG_TEXT
from tasks.eval.split_figures import split_figures

MODELS = {"base": {"accuracy": {"exact_match": 0.1}}, "finetuned": {"accuracy": {"exact_match": 0.3}}}


def _ci(mean: float, low: float, high: float, n: int) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n, "level": 0.95}


def _group(n: int, base: tuple, tuned: tuple, gain: tuple, f1: tuple) -> dict:
    """One group's figures: base / fine-tuned / gain, each {"exact_match", "f1"} as (mean, low, high)."""
    return {
        "base": {"exact_match": _ci(*base, n), "f1": _ci(0.2, 0.1, 0.3, n)},
        "finetuned": {"exact_match": _ci(*tuned, n), "f1": _ci(*f1, n)},
        "gain": {"exact_match": _ci(*gain, n), "f1": _ci(0.0, -0.1, 0.1, n)},
    }


def _split(groups: dict[str, tuple[int, dict]]) -> dict:
    """split_figures-shaped figures from {"all": (n, group), bucket: (n, group), ...}."""
    n, overall = groups["all"]
    split = {model: {**overall[model], "buckets": {}} for model in ("base", "finetuned", "gain")}
    for bucket, (size, group) in groups.items():
        if bucket != "all":
            for model in ("base", "finetuned", "gain"):
                split[model]["buckets"][bucket] = {"n": size, **group[model]}
    return {**split, "n": n, "below_base": False, "worse_beyond_noise": False, "sha256": "ab" * 32}


def _qa_splits() -> dict:
    """Validation: above base overall and on common, within the noise on mid, worse beyond noise on tail.
    Test: within the noise throughout. Means and bounds chosen so rounding would show a different digit."""
    validation = _split(
        {
            "all": (
                300,
                _group(300, (0.1238, 0.1, 0.1489), (0.2999, 0.27, 0.33), (0.1761, 0.1401, 0.2119), (0.4, 0.3, 0.5)),
            ),
            "common": (120, _group(120, (0.2, 0.13, 0.27), (0.5, 0.41, 0.59), (0.3, 0.2, 0.4), (0.6, 0.5, 0.7))),
            "mid": (90, _group(90, (0.1, 0.04, 0.16), (0.11, 0.05, 0.17), (0.01, -0.05, 0.07), (0.3, 0.2, 0.4))),
            "tail": (90, _group(90, (0.3, 0.2, 0.4), (0.1, 0.04, 0.16), (-0.2, -0.3, -0.1), (0.2, 0.1, 0.3))),
        }
    )
    flat = _group(50, (0.1, 0.02, 0.18), (0.1, 0.02, 0.18), (0.0, -0.06, 0.06), (0.2, 0.1, 0.3))
    test = _split({"all": (150, flat), "common": (50, flat), "mid": (50, flat), "tail": (50, flat)})
    return {"validation": validation, "test": test}


def _rows(page: str, split: str) -> dict[str, list[str]]:
    """group -> its cells' text in one split's table of the section."""
    section = page.split("<h2>Domain QA by fact frequency</h2>", 1)[1]
    table = section.split(f"<h3>{split} split", 1)[1].split("</table>", 1)[0]
    rows = {}
    for tr in table.split("<tr>")[2:]:
        cells = [c.split("</td>", 1)[0] for c in tr.split("<td")[1:]]
        cells = [c.split(">", 1)[1] for c in cells]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_page_shows_both_splits_by_bucket_with_cut_intervals_and_flags(tmp_path):
    paths = build_report(MODELS, tmp_path, title="t", notes={"dataset_rev": "abc"}, qa_splits=_qa_splits())
    page = Path(paths["html"]).read_text()
    assert page.count("<h2>Domain QA by fact frequency</h2>") == 1
    assert "<h3>validation split (used by the gates), 300 questions</h3>" in page
    assert "<h3>test split (reported only, never tuned on), 150 questions</h3>" in page
    assert page.index("<h3>validation split") < page.index("<h3>test split") < page.index("<h2>Notes</h2>")
    for column in ("base EM", "fine-tuned EM", "EM gain", "fine-tuned F1"):
        assert f"<th>{column}</th>" in page

    rows = _rows(page, "validation")
    assert list(rows) == ["all", "common", "mid", "tail"]
    assert [r[0] for r in rows.values()] == ["300", "120", "90", "90"]
    # Means cut down (0.1238 → 0.123, 0.2999 → 0.299), bounds widened outward (0.1489 → 0.149, 0.1401 → 0.140).
    base, tuned, gain, f1 = rows["all"][1:]
    assert base == "0.123 [0.100, 0.149]" and tuned == "0.299 [0.270, 0.330]" and f1 == "0.400 [0.300, 0.500]"
    assert gain.startswith("+0.176 [+0.140, +0.212]")
    above = f'<span class="above">{helm_qa.ABOVE_TEXT}</span>'
    assert above in rows["all"][3] and above in rows["common"][3]
    assert FLAG_TEXT not in rows["all"][3] + rows["common"][3]
    assert rows["mid"][3] == "+0.010 [-0.050, +0.070]"  # within the noise: no mark
    assert rows["tail"][3] == f'-0.200 [-0.300, -0.100] <span class="flag">{FLAG_TEXT}</span>'

    test_rows = _rows(page, "test")
    assert list(test_rows) == ["all", "common", "mid", "tail"]
    assert all(FLAG_TEXT not in r[3] and helm_qa.ABOVE_TEXT not in r[3] for r in test_rows.values())
    assert test_rows["tail"] == [
        "50",
        "0.100 [0.020, 0.180]",
        "0.100 [0.020, 0.180]",
        "+0.000 [-0.060, +0.060]",
        "0.200 [0.100, 0.300]",
    ]


def test_helm_json_holds_the_same_numbers_and_no_question_text(tmp_path):
    splits = _qa_splits()
    paths = build_report(MODELS, tmp_path, title="t", qa_splits=splits)
    report = json.loads(Path(paths["json"]).read_text())
    by_bucket = report["qa_by_bucket"]
    assert list(by_bucket) == ["validation", "test"]
    validation = by_bucket["validation"]
    assert validation["role"] == "used by the gates" and validation["n"] == 300
    assert [(r["group"], r["n"]) for r in validation["rows"]] == [
        ("all", 300),
        ("common", 120),
        ("mid", 90),
        ("tail", 90),
    ]
    tail = validation["rows"][3]
    assert tail["base_exact_match"] == splits["validation"]["base"]["buckets"]["tail"]["exact_match"]
    assert tail["gain_exact_match"]["ci_high"] == -0.1 and tail["em_gain_verdict"] == "worse"
    assert tail["finetuned_f1"]["mean"] == 0.2
    assert [r["em_gain_verdict"] for r in validation["rows"]] == ["above", "above", None, "worse"]
    assert by_bucket["test"]["role"] == "reported only, never tuned on"
    assert {r["em_gain_verdict"] for r in by_bucket["test"]["rows"]} == {None}


def test_real_split_figures_render_and_carry_no_question_text(tmp_path):
    rows = [
        {"id": f"q{i}", "question": f"SECRET question {i}?", "answer": "a", "bucket": b}
        for i, b in enumerate(["common", "tail"] * 50)
    ]
    base = {"exact_match": [1.0, 0.0] * 50, "f1": [1.0, 0.0] * 50}
    tuned = {"exact_match": [1.0, 1.0] * 50, "f1": [1.0, 0.5] * 50}
    figures = split_figures(rows, base, tuned)
    paths = build_report(MODELS, tmp_path, title="t", qa_splits={"validation": figures, "test": figures})
    page, raw = Path(paths["html"]).read_text(), Path(paths["json"]).read_text()
    assert "SECRET" not in page and "SECRET" not in raw
    table = _rows(page, "validation")
    assert list(table) == ["all", "common", "tail"]
    assert table["tail"][1:4] == [
        "0.000 [0.000, 0.000]",
        "1.000 [1.000, 1.000]",
        f'+1.000 [+1.000, +1.000] <span class="above">{helm_qa.ABOVE_TEXT}</span>',
    ]
    assert table["common"][3] == "+0.000 [+0.000, +0.000]"


def test_without_qa_splits_the_page_has_no_section(tmp_path):
    paths = build_report(MODELS, tmp_path, title="t")
    assert "Domain QA by fact frequency" not in Path(paths["html"]).read_text()
    assert json.loads(Path(paths["json"]).read_text())["qa_by_bucket"] == {}


def test_the_evaluate_stage_hands_both_splits_to_the_helm_page(tmp_path, monkeypatch):
    splits, seen = _qa_splits(), {}

    def helm_report(table, helm_dir, **kwargs):
        seen.update(kwargs)
        return {"json": "j", "html": "h", "worse_than_base": []}

    stub = {"accuracy": {"exact_match": 0.1}, "per_question_path": str(tmp_path / "pq.json")}
    for name, value in {
        "_qa_splits": lambda paths, run_id: {"validation": tmp_path / "v", "test": tmp_path / "t"},
        "_quality_by_model": lambda *a: {"base": stub, "finetuned": stub},
        "_split_figures": lambda *a: splits,
        "_toxicity": lambda *a: {"toxicity_rate": 0.0},
        "_privacy": lambda *a, **k: {},
        "_answer_loss": lambda *a: {},
        "_per_question_specs": lambda *a: {},
        "_helm_report": helm_report,
        "_quality_summary": lambda *a: {},
        "_safety_summary": lambda *a: {},
    }.items():
        monkeypatch.setattr(evidence, name, value)
    monkeypatch.setattr(lm, "load_causal_lm", lambda *a: (object(), object()))
    trained = {"adapter_dir": None}
    evidence.gather("r1", PipelineConfig(), Paths(tmp_path), {"base_model_dir": str(tmp_path)}, trained)
    assert seen["qa_splits"] is splits
