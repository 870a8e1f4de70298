"""Evaluate stage: domain QA quality through lm-eval, and toxicity of generations.

`evaluate_qa` scores a base model (optionally with a LoRA adapter) on a QA split
(validation or test, tasks.demo.synth) with the `domain_qa` lm-eval task (include/lm_eval_tasks/domain_qa): greedy
answers cut at the first newline, SQuAD-style exact match and token F1, and
relevance (cosine of sentence embeddings, offline all-MiniLM-L6-v2 by default).
`evaluate_qa_suite` adds HELM-style robustness (typos, casing, paraphrase) and
fairness (persona preambles per demographic group) copies of the split, each its own
lm-eval task, scored in one lm-eval run (tasks.eval.perturb builds the copies).
`toxicity` greedily continues a fixed prompt set (include/prompts) and scores each
continuation offline with alt-profanity-check's linear classifier.

Both take any local Hugging Face causal-LM directory, run on CPU in float32, load
the model once per call and return only metrics and counts (they become XCom).
Heavy libraries are imported inside the functions so importing this module is cheap.

CLI:
    python -m tasks.eval.qa qa --base DIR [--adapter DIR] --qa FILE --out DIR [--limit N]
    python -m tasks.eval.qa suite --base DIR [--adapter DIR] --qa FILE --out DIR [--limit N] [--seed S]
    python -m tasks.eval.qa toxicity --base DIR [--adapter DIR] [--prompts FILE] --out DIR
    python -m tasks.eval.qa task-yaml --qa FILE --out DIR   # a task folder for `lm_eval --include_path`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from tasks.common import offline
from tasks.common.jsonl import read_rows
from tasks.config import INCLUDE_DIR, REPO_ROOT, EvalConfig
from tasks.eval.lm import load_causal_lm

TASK_NAME = "domain_qa"
TASK_SRC_DIR = INCLUDE_DIR / "lm_eval_tasks" / TASK_NAME
# The committed YAML marks its one data-path line with this comment; rendering replaces that line.
QA_PATH_MARKER = "# DEFAULT_QA_PATH"
DEFAULT_PROMPTS = REPO_ROOT / EvalConfig().toxicity_prompts

QA_FIELDS = ("id", "question", "answer")
ROBUSTNESS_PERTURBATIONS = ("typo", "casing", "paraphrase")
RELEVANCE_MODEL_ENV = "PFT_RELEVANCE_MODEL"  # read by include/lm_eval_tasks/domain_qa/utils.py


# ----------------------------------------------------------------------------- inputs


def _check_model_dirs(base_model_dir: Path, adapter_dir: Path | None) -> None:
    if not (Path(base_model_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"{base_model_dir}: not a Hugging Face model directory (no config.json); "
            "build the base model first or point --base at a save_pretrained folder"
        )
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json); "
            "point --adapter at the training stage's adapter folder or leave it out"
        )


# ----------------------------------------------------------------------------- domain QA


def render_task_yaml(
    *, qa_path: Path, cache_dir: Path, max_gen_toks: int = 24, task_name: str = TASK_NAME, task_dir: Path | None = None
) -> str:
    """The committed domain_qa YAML with its data path, datasets cache, max_gen_toks and task name filled in.

    lm-eval hands `dataset_kwargs` straight to `datasets.load_dataset("json", ...)`
    and expands no variables, so the data path has to be written into the YAML.
    """
    src = TASK_SRC_DIR / f"{TASK_NAME}.yaml"
    template = src.read_text(encoding="utf-8")
    data_file = Path(qa_path).resolve()
    cache_dir = Path(cache_dir).resolve()

    def data_lines(m: re.Match) -> str:
        indent = m.group(1)
        # `test:` sits under `data_files:`, which sits under `dataset_kwargs:`; cache_dir is a
        # sibling of data_files, one level (two spaces) up. JSON strings are valid YAML scalars.
        return f"{indent}test: {json.dumps(str(data_file))}\n{indent[:-2]}cache_dir: {json.dumps(str(cache_dir))}\n"

    rendered, n = re.subn(rf"^( +)test:.*{re.escape(QA_PATH_MARKER)}[^\n]*\n", data_lines, template, flags=re.M)
    if n != 1:
        raise ValueError(f"{src}: expected one 'test: ... {QA_PATH_MARKER}' line, found {n}")
    rendered, n = re.subn(
        r"^( +)max_gen_toks: *\d+ *$", rf"\g<1>max_gen_toks: {int(max_gen_toks)}", rendered, flags=re.M
    )
    if n != 1:
        raise ValueError(f"{src}: expected one 'max_gen_toks:' line, found {n}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", task_name):
        raise ValueError(f"task name {task_name!r}: use letters, digits and underscores only")
    rendered, n = re.subn(rf"^task: *{TASK_NAME} *$", f"task: {task_name}", rendered, flags=re.M)
    if n != 1:
        raise ValueError(f"{src}: expected one 'task: {TASK_NAME}' line, found {n}")
    return (
        f"# Rendered by tasks.eval.qa from {src}: reads {data_file}.\n"
        f"# Rerun by hand: lm_eval --model hf --model_args pretrained=<base>,peft=<adapter> "
        f"--tasks {task_name} --include_path {Path(task_dir).resolve() if task_dir else '<this folder>'}\n"
    ) + rendered


def write_task_dir(*, qa_path: Path, out_dir: Path, max_gen_toks: int = 24) -> Path:
    """Render a run-specific copy of the domain_qa task that reads `qa_path`.

    The copy (YAML + utils.py) lives in `out_dir/lm_eval_task/`: pass that folder as
    `--include_path` to rerun the exact task by hand. The datasets cache goes next
    to it so nothing is written outside the data root.
    """
    return write_tasks_dir(qa_paths={TASK_NAME: qa_path}, out_dir=out_dir, max_gen_toks=max_gen_toks)


def write_tasks_dir(*, qa_paths: dict[str, Path], out_dir: Path, max_gen_toks: int = 24) -> Path:
    """One task folder, `out_dir/lm_eval_task/`, holding a `<name>.yaml` per (task name, QA file) and utils.py."""
    task_dir = Path(out_dir) / "lm_eval_task"
    task_dir.mkdir(parents=True, exist_ok=True)
    for stale in task_dir.glob("*.yaml"):  # a rerun with fewer scenarios must not keep old tasks
        stale.unlink()
    cache_dir = Path(out_dir) / ".hf_datasets_cache"
    for name, path in qa_paths.items():
        yaml_text = render_task_yaml(
            qa_path=path, cache_dir=cache_dir, max_gen_toks=max_gen_toks, task_name=name, task_dir=task_dir
        )
        (task_dir / f"{name}.yaml").write_text(yaml_text, encoding="utf-8")
    shutil.copy2(TASK_SRC_DIR / "utils.py", task_dir / "utils.py")
    return task_dir


def _hf_model_args(base_model_dir: Path, adapter_dir: Path | None) -> dict[str, Any]:
    # A dict, not "k=v,k=v": a path with a comma would break lm-eval's string parsing.
    args: dict[str, Any] = {"pretrained": str(Path(base_model_dir).resolve()), "dtype": "float32"}
    if adapter_dir is not None:
        args["peft"] = str(Path(adapter_dir).resolve())
    return args


def _run_lm_eval(
    *,
    task_dir: Path,
    task_names: list[str],
    base_model_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    limit: int | None,
    batch_size: int,
    relevance_model: str | None,
) -> dict:
    """One `lm_eval.simple_evaluate` over `task_names` (the model loads once); writes out_dir/results.json."""
    offline.apply()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    if relevance_model and not Path(relevance_model).is_dir():
        raise FileNotFoundError(
            f"relevance model {relevance_model}: no such folder; set evaluate.relevance_model to a local "
            "sentence-transformers folder, or leave it empty for the packaged all-MiniLM-L6-v2"
        )
    # utils.py reads the embedding model folder from the environment (lm-eval passes no task arguments).
    previous = os.environ.get(RELEVANCE_MODEL_ENV)
    if relevance_model:
        os.environ[RELEVANCE_MODEL_ENV] = str(relevance_model)
    # Only our task folder: indexing lm-eval's thousands of built-in YAMLs costs seconds.
    task_manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=_hf_model_args(base_model_dir, adapter_dir),
            tasks=list(task_names),
            task_manager=task_manager,
            device="cpu",
            batch_size=batch_size,
            limit=limit,
            log_samples=True,  # QA answers hold no personal data; per-sample outputs help debugging
        )
    finally:
        shutil.rmtree(Path(out_dir) / ".hf_datasets_cache", ignore_errors=True)
        if relevance_model:
            if previous is None:
                os.environ.pop(RELEVANCE_MODEL_ENV, None)
            else:
                os.environ[RELEVANCE_MODEL_ENV] = previous
    if results is None:  # only non-zero ranks get None; this stage runs one process
        raise RuntimeError("lm-eval returned no results (was this run under a multi-process launcher?)")
    (Path(out_dir) / "results.json").write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False), encoding="utf-8"
    )
    return results


def per_question_scores(results_path: Path, task: str = TASK_NAME) -> dict[str, list[float]]:
    """{"exact_match": [...], "f1": [...]}: each question's score in the QA file's order (lm-eval's doc_id),
    from a results.json written with its samples (`evaluate_qa`, `evaluate_qa_suite`)."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    samples = sorted(results["samples"][task], key=lambda s: int(s["doc_id"]))
    if [int(s["doc_id"]) for s in samples] != list(range(len(samples))):
        raise ValueError(f"{results_path}: task {task} did not score questions 0..{len(samples) - 1} once each")
    return {metric: [float(s[metric]) for s in samples] for metric in ("exact_match", "f1")}


def _task_metrics(results: dict, task: str) -> dict:
    metrics = results["results"][task]
    return {
        "exact_match": float(metrics["exact_match,none"]),
        "f1": float(metrics["f1,none"]),
        "relevance": float(metrics["relevance,none"]),
        "n": int(results["n-samples"][task]["effective"]),
    }


def evaluate_qa(
    *,
    base_model_dir: Path,
    adapter_dir: Path | None,
    qa_path: Path,
    out_dir: Path,
    limit: int | None = None,
    max_gen_toks: int = 24,
    batch_size: int = 16,
    relevance_model: str | None = None,
) -> dict:
    """Score the model on the QA set with lm-eval; write out_dir/results.json.

    Returns {"exact_match", "f1", "relevance", "n"}: mean metrics over the n questions scored.
    """
    _check_model_dirs(base_model_dir, adapter_dir)
    read_rows(qa_path, QA_FIELDS)  # fail here, naming the line, rather than deep inside datasets
    _check_limit(limit)
    out_dir = Path(out_dir)
    task_dir = write_task_dir(qa_path=qa_path, out_dir=out_dir, max_gen_toks=max_gen_toks)
    results = _run_lm_eval(
        task_dir=task_dir,
        task_names=[TASK_NAME],
        base_model_dir=base_model_dir,
        adapter_dir=adapter_dir,
        out_dir=out_dir,
        limit=limit,
        batch_size=batch_size,
        relevance_model=relevance_model,
    )
    return _task_metrics(results, TASK_NAME)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")


# ----------------------------------------------------------------------------- HELM-style QA suite


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _per_doc(results: dict, task: str, metric: str) -> dict[int, float]:
    """Row index -> per-sample metric: every split lists the same questions in the same order."""
    return {int(s["doc_id"]): float(s[metric]) for s in results["samples"][task]}


def _worst_case(results: dict, tasks: list[str], metric: str) -> float:
    """HELM robustness: per question, the worst score over the clean and perturbed versions; then the mean."""
    per_task = [_per_doc(results, t, metric) for t in tasks]
    ids = set(per_task[0]).intersection(*per_task[1:])
    if not ids:
        raise RuntimeError(f"no question was scored in every one of {tasks}; check the lm-eval samples")
    return sum(min(scores[i] for scores in per_task) for i in ids) / len(ids)


def evaluate_qa_suite(
    *,
    base_model_dir: Path,
    adapter_dir: Path | None,
    qa_path: Path,
    out_dir: Path,
    limit: int | None = None,
    max_gen_toks: int = 24,
    seed: int = 13,
    relevance_model: str | None = None,
    batch_size: int = 16,
    typo_rate: float = 0.1,
    groups: dict[str, list[tuple[str, str]]] | None = None,
) -> dict:
    """Accuracy, robustness and fairness on the QA split in one lm-eval run.

    Writes the perturbed splits (out_dir/data/<task>.jsonl, see tasks.eval.perturb), one task
    YAML per scenario (out_dir/lm_eval_task/, reusable with `lm_eval --include_path`),
    lm-eval's results.json (with per-sample outputs) and suite.json (metrics only).

    Returns {"accuracy": {exact_match, f1, relevance, n},
             "robustness": {exact_match_<p>, f1_<p> for p in typo/casing/paraphrase, exact_match_worst, f1_worst},
             "fairness": {exact_match_<group>, f1_<group>, exact_match_gap, f1_gap}}.
    `*_worst` is HELM's worst case: per question the minimum over the clean and every
    perturbed version, averaged; the gaps are max − min over the groups' means.
    """
    from tasks.eval import perturb

    _check_model_dirs(base_model_dir, adapter_dir)
    _check_limit(limit)
    rows = _unique_rows(qa_path)
    rows = rows[:limit] if limit else rows
    out_dir = Path(out_dir)
    groups = perturb.GROUPS if groups is None else groups
    qa_paths = _scenario_splits(rows, out_dir, seed, typo_rate, groups)
    task_dir = write_tasks_dir(qa_paths=qa_paths, out_dir=out_dir, max_gen_toks=max_gen_toks)
    results = _run_lm_eval(
        task_dir=task_dir,
        task_names=list(qa_paths),
        base_model_dir=base_model_dir,
        adapter_dir=adapter_dir,
        out_dir=out_dir,
        limit=limit,
        batch_size=batch_size,
        relevance_model=relevance_model,
    )
    by_task = {name: _task_metrics(results, name) for name in qa_paths}
    suite = {
        "accuracy": by_task[TASK_NAME],
        "robustness": _robustness(results, by_task),
        "fairness": _fairness(by_task, groups),
    }
    meta = {
        "seed": seed,
        "typo_rate": typo_rate,
        "limit": limit,
        "max_gen_toks": max_gen_toks,
        "groups": list(groups),
        "tasks": by_task,
        "include_path": str(task_dir),
    }
    (out_dir / "suite.json").write_text(json.dumps({**suite, "meta": meta}, indent=2), encoding="utf-8")
    return suite


def _unique_rows(qa_path: Path) -> list[dict]:
    """The split's rows; a repeated question id is an error (per-question results are keyed by it)."""
    rows = read_rows(qa_path, QA_FIELDS)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{qa_path}: question id {dup!r} appears more than once; ids must be unique")
    return rows


def _scenario_splits(rows: list[dict], out_dir: Path, seed: int, typo_rate: float, groups: dict) -> dict[str, Path]:
    """The clean split and every perturbed / demographic variant, written as one JSONL per lm-eval task."""
    from tasks.eval import perturb

    splits: dict[str, list[dict]] = {TASK_NAME: rows}
    for p, perturbed in perturb.robustness_variants(rows, seed, typo_rate=typo_rate).items():
        splits[f"{TASK_NAME}_{p}"] = perturbed
    for g, variants in perturb.demographic_variants(rows, seed, groups).items():
        splits[f"{TASK_NAME}_fair_{g}"] = variants
    return {name: _write_rows(out_dir / "data" / f"{name}.jsonl", split) for name, split in splits.items()}


def _robustness(results: dict, by_task: dict) -> dict[str, float]:
    robust_tasks = [f"{TASK_NAME}_{p}" for p in ROBUSTNESS_PERTURBATIONS]
    robustness: dict[str, float] = {}
    for p, task in zip(ROBUSTNESS_PERTURBATIONS, robust_tasks):
        robustness[f"exact_match_{p}"] = by_task[task]["exact_match"]
        robustness[f"f1_{p}"] = by_task[task]["f1"]
    robustness["exact_match_worst"] = _worst_case(results, [TASK_NAME, *robust_tasks], "exact_match")
    robustness["f1_worst"] = _worst_case(results, [TASK_NAME, *robust_tasks], "f1")
    return robustness


def _fairness(by_task: dict, groups: dict) -> dict[str, float]:
    fairness: dict[str, float] = {}
    for g in groups:
        fairness[f"exact_match_{g}"] = by_task[f"{TASK_NAME}_fair_{g}"]["exact_match"]
        fairness[f"f1_{g}"] = by_task[f"{TASK_NAME}_fair_{g}"]["f1"]
    for metric in ("exact_match", "f1"):
        values = [by_task[f"{TASK_NAME}_fair_{g}"][metric] for g in groups]
        fairness[f"{metric}_gap"] = max(values) - min(values)
    return fairness


# ----------------------------------------------------------------------------- toxicity


def toxicity(
    *,
    base_model_dir: Path,
    adapter_dir: Path | None,
    prompts_path: Path,
    out_dir: Path,
    max_new_tokens: int = 32,
    threshold: float = 0.5,
) -> dict:
    """The CLI's toxicity run: load the model from its directories, then `tasks.eval.safety.toxicity_eval`
    with the offline scorer (writes toxicity.json without text, generations.jsonl apart).
    Returns {"toxicity_rate", "mean_toxicity", "max_toxicity", "n"}."""
    from tasks.eval.safety import toxicity_eval

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    _check_model_dirs(base_model_dir, adapter_dir)
    model, tokenizer = load_causal_lm(base_model_dir, adapter_dir)
    result = toxicity_eval(
        model, tokenizer, prompts_path=prompts_path, out_dir=out_dir, threshold=threshold, max_new_tokens=max_new_tokens
    )
    return {k: result[k] for k in ("toxicity_rate", "mean_toxicity", "max_toxicity", "n")}


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.eval.qa", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = EvalConfig()
    _qa_args(sub.add_parser("qa", help="domain QA through lm-eval (exact match, F1, relevance)"), defaults)
    suite = sub.add_parser("suite", help="domain QA + robustness + fairness scenarios in one lm-eval run")
    _qa_args(suite, defaults)
    suite.add_argument("--seed", type=int, default=defaults.perturbation_seed, help="perturbation seed")
    tox = sub.add_parser("toxicity", help="toxicity of greedy continuations of a prompt set")
    _model_args(tox)
    tox.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL with id, category, prompt")
    tox.add_argument("--max-new-tokens", type=int, default=defaults.toxicity_max_new_tokens)
    tox.add_argument("--threshold", type=float, default=defaults.toxicity_threshold)
    ty = sub.add_parser("task-yaml", help="write a domain_qa task folder that reads FILE, for lm_eval --include_path")
    ty.add_argument("--qa", type=Path, required=True)
    ty.add_argument("--out", type=Path, required=True)
    ty.add_argument("--max-gen-toks", type=int, default=defaults.max_gen_toks)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="local Hugging Face causal-LM directory")
    p.add_argument("--adapter", type=Path, default=None, help="PEFT LoRA adapter directory (optional)")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def _qa_args(p: argparse.ArgumentParser, defaults: EvalConfig) -> None:
    _model_args(p)
    p.add_argument("--qa", type=Path, required=True, help="QA JSONL with id, question, answer")
    p.add_argument("--limit", type=int, default=defaults.qa_limit, help="score only the first N questions")
    p.add_argument("--max-gen-toks", type=int, default=defaults.max_gen_toks)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--relevance-model",
        default=defaults.relevance_model,
        help="sentence-transformers folder for relevance (default: packaged all-MiniLM-L6-v2)",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    offline.apply()
    models = {"base_model_dir": args.base, "adapter_dir": getattr(args, "adapter", None)}
    if args.command in ("qa", "suite"):
        common = {
            **models,
            "qa_path": args.qa,
            "out_dir": args.out,
            "limit": args.limit,
            "max_gen_toks": args.max_gen_toks,
            "batch_size": args.batch_size,
            "relevance_model": args.relevance_model,
        }
        result = evaluate_qa(**common) if args.command == "qa" else evaluate_qa_suite(**common, seed=args.seed)
    elif args.command == "toxicity":
        result = toxicity(
            **models,
            prompts_path=args.prompts,
            out_dir=args.out,
            max_new_tokens=args.max_new_tokens,
            threshold=args.threshold,
        )
    else:
        read_rows(args.qa, QA_FIELDS)
        result = {
            "include_path": str(write_task_dir(qa_path=args.qa, out_dir=args.out, max_gen_toks=args.max_gen_toks))
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    offline.apply()
    sys.exit(main())
