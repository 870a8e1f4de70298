"""Utility benchmark: how many records does ε = X need? Test-split exact match per fact bucket, with 95 % CIs.

    make bench-utility                                           # the committed run (bench/results/utility.*)
    python bench/bench_utility.py --quick --out /tmp/utility.json  # smoke run: tiny model, few records and steps
    python bench/bench_utility.py tune --out bench/results/utility_tuning.json   # the recipe search (validation only)

The grid: N ∈ {1, 4, 16} × the demo's records and ε ∈ {1, 2, 4, 8, ∞}, with the committed recipe
(include/config/pipeline.yaml `train:`) and one compute rule at every N: the demo's logical batch and number of
steps. More records at the same compute lower the sampling rate, so the same ε needs less noise per step: that
is the curve a buyer plans with. ε = ∞ is the same recipe with dp: false (non-private).

Data: tasks.demo.synth at N records (seed 7, no canaries). Personal data is replaced by the masker's keyed
placeholders (tasks.pii.pseudonyms) straight from the generator's key, an exact substitution: the masking stage is
benchmarked in bench_mask.py, and this way 64,000 records prepare in seconds. Noise is seeded (a benchmark, never
promoted). One base model (demo size) for every N: its general corpus does not depend on N.

Scored: greedy answers to synth/qa_test.jsonl (reported, never tuned on), SQuAD EM and F1 (the domain_qa task's
own scoring), per bucket (common: each fact in ≥ 1 % of the records; tail: a handful), percentile-bootstrap 95 %
CIs over questions and the paired gain over base. `tune` searches the recipe on synth/qa_validation.jsonl only
and never opens the test file (tests/bench/test_bench_utility.py checks it with an audit hook).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BENCH_KEY = b"bench-only-utility-key-0123456789abcdef"  # no real data is ever keyed with it
BUCKETS = ("all", "common", "mid", "tail")
EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
MULTIPLIERS = (1, 4, 16)
SPLIT_FILES = {"validation": "qa_validation.jsonl", "test": "qa_test.jsonl"}


# ---------------------------------------------------------------- data


def landing_rows(home: Path) -> list[dict]:
    """The generator's well-formed landing records (JSONL and CSV), deliberately broken rows left out."""
    rows = []
    for path in sorted((home / "landing").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
                rows.append(row)
    for path in sorted((home / "landing").rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    return sorted(rows, key=lambda r: r["record_id"])


def pseudonymise(rows: list[dict], pii_key: list[dict]) -> list[dict]:
    """Each record's raw personal values → the masker's typed keyed placeholders (longest value first)."""
    from tasks.pii import subject_pseudonym
    from tasks.pii.pseudonyms import pseudonym

    by_record: dict[str, list[dict]] = {}
    for entry in pii_key:
        by_record.setdefault(entry["record_id"], []).append(entry)
    out = []
    for row in rows:
        text = row["text"]
        for entry in sorted(by_record.get(row["record_id"], []), key=lambda e: -len(e["value"])):
            text = text.replace(entry["value"], pseudonym(entry["type"], entry["value"], BENCH_KEY))
        out.append({"record_id": row["record_id"], "text": text})
        subject = subject_pseudonym("MEMBER_ID", row.get("member_id"), BENCH_KEY)
        if subject:  # as the masker writes it: only the keyed pseudonym of the member id
            out[-1]["subject"] = subject
    return out


def prepare_data(home: Path, records: int, *, members: bool = False) -> dict:
    """Generated, pseudonymised training records at one N (cached under home). `members`: claim notes, letters
    and tickets belong to members (synth.members), each record keeping its member's pseudonym as `subject`."""
    from tasks.demo import synth

    stamp = home / "prepared.json"
    cached = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if cached.get("records") == records and cached.get("members", False) == members:
        return cached
    t0 = time.perf_counter()
    synth.generate(home, seed=7, n_records=records, canaries=0, members=members)
    rows = pseudonymise(landing_rows(home), json.loads((home / "synth" / "pii_key.json").read_text()))
    train_path = home / "train.jsonl"
    train_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    info = {"records": records, "rows": len(rows), "train_path": str(train_path), "synth": str(home / "synth")}
    info["members"] = members
    info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    stamp.write_text(json.dumps(info, indent=2))
    return info


def qa_rows(synth_dir: Path, split: str) -> list[dict]:
    path = Path(synth_dir) / SPLIT_FILES[split]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- scoring


def score(base_dir: str, adapter_dir: str | None, rows: list[dict], max_new_tokens: int = 16) -> list[dict]:
    """Per question: bucket, EM and F1 of the greedy answer (the answer text never leaves this process)."""
    from tasks.demo.synth import QA_PROMPT
    from tasks.eval.lm import generate_greedy, load_causal_lm

    model, tokenizer = load_causal_lm(Path(base_dir), Path(adapter_dir) if adapter_dir else None)
    prompts = [QA_PROMPT.format(question=r["question"]) for r in rows]
    answers = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=64)
    from tasks.eval.helm import qa_scoring

    utils = qa_scoring()
    return [
        {
            "id": r["id"],
            "bucket": r["bucket"],
            "em": utils.exact_match(a.split("\n")[0], r["answer"]),
            "f1": utils.f1(a.split("\n")[0], r["answer"]),
        }
        for r, a in zip(rows, answers)
    ]


def summarise(scored: list[dict], base: list[dict] | None = None) -> dict:
    """EM and F1 with 95 % CIs per bucket; with `base`, the paired EM gain and its CI."""
    from tasks.eval.stats import bootstrap_ci, paired_bootstrap, rounded

    out = {}
    for bucket in BUCKETS:
        idx = [i for i, s in enumerate(scored) if bucket == "all" or s["bucket"] == bucket]
        if not idx:
            continue
        em = [scored[i]["em"] for i in idx]
        entry = {
            "n": len(idx),
            "em": rounded(bootstrap_ci(em)),
            "f1": rounded(bootstrap_ci([scored[i]["f1"] for i in idx])),
        }
        if base is not None:
            entry["gain"] = rounded(paired_bootstrap(em, [base[i]["em"] for i in idx]))
        out[bucket] = entry
    return out


# ---------------------------------------------------------------- runs


def recipe(overrides: dict | None = None) -> dict:
    """The committed training recipe (pipeline.yaml `train:`) with benchmark settings and `overrides`."""
    from tasks.config import TrainConfig, load_config

    base = load_config().train.model_dump()
    base.update({"secure_noise": False, "checkpoint_every": 0, "cpu_threads": 1})
    base.update(overrides or {})
    return TrainConfig(**base).model_dump()


def same_compute(train: dict, demo_records: int, records: int) -> dict:
    """The compute rule: the demo's logical batch and steps at every N (epochs shrink as N grows)."""
    return {**train, "epochs": train["epochs"] * demo_records / records}


def run_child(spec: dict, work: Path) -> dict:
    """Train and score in a fresh process (one torch thread), so runs can go side by side."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = work / "spec.json", work / "result.json"
    if out_path.is_file() and spec_path.is_file() and json.loads(spec_path.read_text()) == spec:
        return json.loads(out_path.read_text())  # the same run already finished: a rerun of the grid reuses it
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", str(spec_path), str(out_path)]
    with open(work / "child.log", "w") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(out_path.read_text())


def child(spec_path: Path, out_path: Path) -> None:
    """One run: tasks.train.recipe.train, then the split's questions (validation or test, as the spec says)."""
    import torch

    from tasks.train.recipe import train

    torch.set_num_threads(1)
    spec = json.loads(spec_path.read_text())
    result = train({k: spec[k] for k in ("train", "base_model_dir", "out_dir", "data_path")})
    adapter = result.get("adapter_dir")
    model_dir = spec["base_model_dir"] if adapter or not result.get("model_dir") else result["model_dir"]
    scored = score(model_dir, adapter, qa_rows(Path(spec["synth_dir"]), spec["split"]))
    keep = ("steps", "epsilon", "delta", "noise_multiplier", "records", "batch_size", "train_seconds", "final_loss")
    keep += ("privacy_unit", "privacy", "subjects")
    out_path.write_text(json.dumps({"train": {k: result.get(k) for k in keep}, "scored": scored}))


def base_scores(base_dir: str, synth_dir: Path, split: str, cache: Path) -> list[dict]:
    if cache.is_file():
        return json.loads(cache.read_text())
    scored = score(base_dir, None, qa_rows(synth_dir, split))
    cache.write_text(json.dumps(scored))
    return scored


def build_base(home: Path, size: str) -> str:
    from tasks.demo.base_model import build_base_model

    corpus = home / "synth" / "general_corpus.txt"
    return build_base_model(corpus_path=corpus, models_root=home.parent / "models", size=size)["model_dir"]


# ---------------------------------------------------------------- the grid


def grid(args) -> list[dict]:
    items = []
    for mult in args.multipliers:
        for eps in args.epsilons:
            name = f"n{mult:g}x_eps{'inf' if math.isinf(eps) else f'{eps:g}'}"
            items.append({"name": name, "multiplier": mult, "epsilon": eps})
    return items


def run_grid(args, work: Path) -> dict:
    demo_records = args.records
    datasets = {m: prepare_data(work / f"data_{m:g}x", round(demo_records * m)) for m in args.multipliers}
    base_dir = build_base(work / f"data_{args.multipliers[0]:g}x", args.size)
    synth_1x = Path(datasets[args.multipliers[0]]["synth"])  # questions are the same at every N
    base = base_scores(base_dir, synth_1x, "test", work / "base_test_scores.json")
    base_recipe = recipe(args.quick_overrides)

    def one(item: dict) -> dict:
        n = round(demo_records * item["multiplier"])
        dp = not math.isinf(item["epsilon"])
        train = same_compute(
            {**base_recipe, "dp": dp, "target_epsilon": item["epsilon"] if dp else 8.0}, demo_records, n
        )
        spec = {
            "train": train,
            "base_model_dir": base_dir,
            "out_dir": str(work / "runs" / item["name"]),
            "data_path": datasets[item["multiplier"]]["train_path"],
            "synth_dir": str(synth_1x),
            "split": "test",
        }
        t0 = time.perf_counter()
        res = run_child(spec, work / "runs" / item["name"])
        if [q["id"] for q in res["scored"]] != [q["id"] for q in base]:
            raise RuntimeError(f"{item['name']}: scored other questions than the base model")
        row = {**item, "records": n, "train": res["train"], "metrics": summarise(res["scored"], base)}
        row["em_per_question"] = [q["em"] for q in res["scored"]]  # the share's paired interval needs them
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(line(row), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, grid(args)))
    per_question = [{"id": q["id"], "bucket": q["bucket"], "em": q["em"]} for q in base]
    return {
        "base": summarise(base),
        "base_per_question": per_question,
        "runs": rows,
        "recipe": base_recipe,
        "datasets": datasets,
        "base_dir": base_dir,
    }


def line(row: dict) -> str:
    m = row["metrics"]
    cells = [f"{b} {m[b]['em']['mean']:.3f} ({m[b]['gain']['mean']:+.3f})" for b in BUCKETS if b in m]
    return f"{row['name']}: steps {row['train']['steps']} ε {row['train']['epsilon']} | " + " | ".join(cells)


# ---------------------------------------------------------------- results


def share_of_nonprivate_gain(doc: dict, bucket: str = "common") -> dict[str, dict | None]:
    """Per run: its EM gain over base ÷ the non-private run's at the same N, {"mean", "ci_low", "ci_high"}.

    The interval is a paired percentile bootstrap over the bucket's questions (base, the run and the
    non-private run resampled together). A resample in which non-private gained nothing has no share and
    counts as -∞, so it can only lower the bound. Results without per-question scores (older files) give
    the point estimate alone; None where non-private gained ≤ 0."""
    nonprivate = {r["multiplier"]: r for r in doc["runs"] if math.isinf(r["epsilon"])}
    base = doc.get("base_per_question")
    out: dict[str, dict | None] = {}
    for r in doc["runs"]:
        np_run = nonprivate.get(r["multiplier"])
        np_gain = np_run["metrics"][bucket]["gain"]["mean"] if np_run else None
        if not np_gain or np_gain <= 0:
            out[r["name"]] = None
            continue
        share = {"mean": r["metrics"][bucket]["gain"]["mean"] / np_gain, "ci_low": None, "ci_high": None}
        if base and "em_per_question" in r and "em_per_question" in np_run:
            share = _share_interval(r, np_run, base, bucket)
        out[r["name"]] = {k: (round(v, 4) if v is not None and math.isfinite(v) else v) for k, v in share.items()}
    return out


def _share_interval(run: dict, np_run: dict, base: list[dict], bucket: str) -> dict:
    from tasks.eval.stats import bootstrap_statistic

    idx = [i for i, q in enumerate(base) if bucket == "all" or q["bucket"] == bucket]
    gains = [run["em_per_question"][i] - base[i]["em"] for i in idx]
    np_gains = [np_run["em_per_question"][i] - base[i]["em"] for i in idx]
    ci = bootstrap_statistic(len(idx), functools.partial(_ratio, gains, np_gains))
    low = -math.inf if math.isnan(ci["ci_low"]) else ci["ci_low"]  # interpolating next to -inf gives NaN
    return {"mean": ci["value"], "ci_low": low, "ci_high": ci["ci_high"]}


def _ratio(gains: list[float], np_gains: list[float], sample) -> float:
    denominator = sum(np_gains[i] for i in sample)
    return sum(gains[i] for i in sample) / denominator if denominator > 0 else -math.inf


def _share(share: dict | None) -> str:
    if share is None:
        return "—"
    if share["ci_low"] is None:
        return _cut(share["mean"], 2)
    low = "−∞" if math.isinf(share["ci_low"]) else _cut(share["ci_low"], 2)
    return f"{_cut(share['mean'], 2)} [{low}, {_cut(share['ci_high'], 2, up=True)}]"


def _cut(value: float, digits: int = 3, *, up: bool = False) -> str:
    """A figure as shown, never rounded into a better claim: cut down (towards -∞), or up for an upper bound."""
    scaled = value * 10**digits
    cut = math.ceil(scaled - 1e-9) if up else math.floor(scaled + 1e-9)
    return f"{cut / 10**digits:.{digits}f}"


def _ci(entry: dict) -> str:
    return f"{_cut(entry['mean'])} [{_cut(entry['ci_low'])}, {_cut(entry['ci_high'], up=True)}]"


def _order(run: dict) -> tuple:
    return (run["multiplier"], math.inf if run["epsilon"] is None else float(run["epsilon"]))


def target_lines(doc: dict) -> list[str]:
    """Issue 14's targets on common facts, read off this run: a share of non-private gain, CI above base."""
    shares = share_of_nonprivate_gain(doc)
    base_high = doc["base"]["common"]["em"]["ci_high"]
    lines = []
    for mult, want in ((1, 0.8), (16, 0.9)):
        run = next((r for r in doc["runs"] if r["multiplier"] == mult and r["epsilon"] == 8.0), None)
        if run is None or shares.get(run["name"]) is None:
            continue
        share, low = shares[run["name"]], run["metrics"]["common"]["em"]["ci_low"]
        lines.append(
            f"- ε 8 at {run['records']:,} records: {_share(share)} of the non-private gain on common facts "
            f"(target ≥ {want}: {_verdict(share, want)}); DP EM's CI lower bound {_cut(low)} vs "
            f"base's upper bound {_cut(base_high, up=True)} ({'above' if low > base_high else 'NOT above'})."
        )
    return lines


def _verdict(share: dict, want: float) -> str:
    """Met only when the point estimate reaches the target; the interval says whether either answer is noise."""
    verdict = "met" if share["mean"] >= want else "NOT met"
    if share["ci_low"] is not None and share["ci_low"] < want <= share["ci_high"]:
        verdict += f", and {want} lies inside the 95 % interval: the data cannot tell"
    return verdict


def render_md(doc: dict) -> str:
    base = doc["base"]
    lines = [
        "# Utility benchmark: exact match vs ε and records",
        "",
        f"Run {doc['started']} on {doc['machine']}; `{doc['command']}`; {doc['wall_minutes']} min.",
        "",
        "Test split only (never tuned on). EM with a 95 % percentile-bootstrap CI over questions; gain = paired",
        "difference to the base model on the same questions. Common facts are each in ≥ 1 % of the records, tail facts",
        "in a handful. Same recipe and same compute (logical batch × steps) at every N; ε = ∞ is dp: false.",
        "Share = the run's gain on common facts ÷ the non-private run's at the same N, with a paired bootstrap",
        "95 % interval over those questions.",
        "",
        f"Base model: all {_ci(base['all']['em'])}, common {_ci(base['common']['em'])}, tail {_ci(base['tail']['em'])}.",
        "",
        "| N | ε | steps | σ | EM all | EM common | gain common | EM tail | gain tail | share of non-private gain (common) |",
        "|---:|---:|---:|---:|---|---|---|---|---|---:|",
    ]
    shares = share_of_nonprivate_gain(doc)
    for r in sorted(doc["runs"], key=_order):
        m, t = r["metrics"], r["train"]
        eps = "∞" if math.isinf(r["epsilon"]) else f"{t['epsilon']:.2f}"
        share = shares[r["name"]]
        lines.append(
            f"| {r['records']:,} | {eps} | {t['steps']} | {t['noise_multiplier'] or 0:.3f} | {_ci(m['all']['em'])} "
            f"| {_ci(m['common']['em'])} | {_ci(m['common']['gain'])} | {_ci(m['tail']['em'])} "
            f"| {_ci(m['tail']['gain'])} | {_share(share)} |"
        )
    lines += ["", "Targets (issue 14):", *target_lines(doc), ""]
    lines += [
        "Recipe: `" + json.dumps(doc["recipe_overrides"]) + "` (pipeline.yaml `train:`); epochs are the demo's, "
        "scaled by demo N / N at the other sizes so every N trains the same logical batch × steps.",
        "",
    ]
    lines += doc.get("reading", [])
    return "\n".join(lines) + "\n"


def save_plot(doc: dict, path: Path) -> None:
    """EM on common facts vs ε (∞ drawn at the right), one line per N, base as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = {eps: i for i, eps in enumerate(EPSILONS)}
    for mult in sorted({r["multiplier"] for r in doc["runs"]}):
        runs = sorted((r for r in doc["runs"] if r["multiplier"] == mult), key=lambda r: xs[r["epsilon"]])
        ems = [r["metrics"]["common"]["em"] for r in runs]
        ax.errorbar(
            [xs[r["epsilon"]] for r in runs],
            [e["mean"] for e in ems],
            yerr=[[e["mean"] - e["ci_low"] for e in ems], [e["ci_high"] - e["mean"] for e in ems]],
            marker="o",
            capsize=3,
            label=f"N = {runs[0]['records']:,}",
        )
    b = doc["base"]["common"]["em"]
    ax.axhspan(b["ci_low"], b["ci_high"], color="grey", alpha=0.25, label="base (95 % CI)")
    ax.set_xticks(list(xs.values()), ["1", "2", "4", "8", "∞"])
    ax.set_xlabel("ε (per record)")
    ax.set_ylabel("test EM, common facts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


# ---------------------------------------------------------------- tuning (validation only)

# The recipe search behind the committed default: each candidate overrides pipeline.yaml `train:`, trains at
# the demo's N and ε 8, and is scored on the VALIDATION split. The test split is never opened here.
TUNING_CANDIDATES: list[dict] = []


def tune(args, work: Path) -> dict:
    data = prepare_data(work / "data_1x", args.records)
    base_dir = build_base(work / "data_1x", args.size)
    synth_dir = Path(data["synth"])
    base = base_scores(base_dir, synth_dir, "validation", work / "base_validation_scores.json")
    rows = []
    for i, overrides in enumerate(args.candidates or TUNING_CANDIDATES):
        spec = {
            "train": recipe({**args.quick_overrides, **overrides}),
            "base_model_dir": base_dir,
            "out_dir": str(work / "tune" / f"c{i}"),
            "data_path": data["train_path"],
            "synth_dir": str(synth_dir),
            "split": "validation",
        }
        res = run_child(spec, work / "tune" / f"c{i}")
        rows.append({"overrides": overrides, "train": res["train"], "metrics": summarise(res["scored"], base)})
        print(json.dumps({"overrides": overrides, "common_em": rows[-1]["metrics"]["common"]["em"]}), flush=True)
    return {"split": "validation", "base": summarise(base), "candidates": rows}


# ---------------------------------------------------------------- entry point


QUICK = {"epochs": 0.5, "batch_size": 32, "physical_batch_size": 32}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", default="grid", choices=["grid", "tune", "child", "render"])
    p.add_argument("paths", nargs="*", help="child: SPEC RESULT")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "utility.json")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("PFT_BENCH_HOME", "/tmp/pft-bench-utility")))
    p.add_argument("--records", type=int, default=None, help="the demo's N (default: config synth.n_records)")
    p.add_argument("--multipliers", type=float, nargs="+", default=list(MULTIPLIERS))
    p.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    p.add_argument("--size", default="demo", choices=["demo", "tiny"])
    p.add_argument("--candidates", type=json.loads, default=None, help="tune: a JSON list of recipe overrides")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 400 records, a few steps")
    args = p.parse_args(argv)
    if args.records is None:
        from tasks.config import load_config

        args.records = load_config().synth.n_records
    args.quick_overrides = dict(QUICK) if args.quick else {}
    if args.quick:
        args.records, args.size, args.multipliers = min(args.records, 400), "tiny", args.multipliers[:2]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.mode == "child":
        child(Path(args.paths[0]), Path(args.paths[1]))
        return
    if args.mode == "render":  # the Markdown and the plot again, from a finished run's JSON
        write_views(read_doc(args.out), args.out)
        return
    from tasks.common import offline

    offline.apply()
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    doc = tune(args, args.work) if args.mode == "tune" else run_grid(args, args.work)
    doc.update(started=started, machine=machine(), command="python " + " ".join(sys.argv))
    doc["wall_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(strict_json(doc))
    if args.mode == "grid":
        write_views(doc, args.out)
    print(f"wrote {args.out}")


def strict_json(doc: dict) -> str:
    """JSON any reader accepts: a non-private run's ε (∞) is written as null, never as `Infinity`."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(doc), indent=1, default=str, allow_nan=False)


def read_doc(path: Path) -> dict:
    """A results file back in memory: a run with ε null is the non-private one (ε = ∞)."""
    doc = json.loads(path.read_text())
    for run in doc.get("runs", []):
        if run.get("epsilon") is None:
            run["epsilon"] = math.inf
    return doc


def write_views(doc: dict, out: Path) -> None:
    doc["recipe_overrides"] = {k: v for k, v in doc["recipe"].items() if k in RECIPE_KEYS}
    out.with_suffix(".md").write_text(render_md(doc))
    save_plot(doc, out.with_suffix(".png"))


RECIPE_KEYS = (
    "method",
    "optimizer",
    "learning_rate",
    "batch_size",
    "epochs",
    "lora_r",
    "lora_alpha",
    "target_modules",
    "max_seq_len",
    "max_grad_norm",
)

if __name__ == "__main__":
    main()
