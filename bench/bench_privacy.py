"""Privacy benchmark: what DP-SGD buys against memorisation, measured by attack.

    python bench/bench_privacy.py --out bench/results/privacy.json          # demo model, 4000 records (~10 min, 2 cores)
    python bench/bench_privacy.py --quick --out /tmp/privacy-quick.json     # smoke run: tiny model, 300 records, 1 epoch
    python bench/bench_privacy.py --render bench/results/privacy.json       # the Markdown again from the JSON

Same base model, same masked data, same split, same epochs for every run:
  data    bench_train.prepare: tasks.demo.synth (seed 7; 4 canaries × 8 records, planted before masking and kept by
          it) → tasks.data.ingest → tasks.data.mask; then tasks.data.splits.split_audit_holdout (--holdout-share) keeps
          an audit hold-out out of training, the membership-inference test's non-members.
  model   tasks.demo.base_model demo size (the one bench_train uses), cached under --home.
  runs    each a fresh subprocess calling tasks.train.recipe.train (bench_train's child, one torch thread):
            dp_lora        the recipe as configured (LoRA, DP-SGD, target ε --epsilon)
            np_lora        the same LoRA without DP (AdamW, bench_train's tuned setting: the recipe's SGD 0.5
                           diverges unclipped)
            np_full        full fine-tuning without DP (AdamW 1e-3): the strongest memoriser of the three
          plus the base model itself, which never saw the data: the attacks' null reference.
  attacks tasks.eval.safety on each model, in this process: canary exposure (--candidates random secrets per
          canary), loss-based MIA AUC (--mia-records members vs as many hold-out records), PII leakage
          (committed templates + 100 record prefixes, against synth/pii_key.json).

Results JSON and a Markdown table; paths are written relative to the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_train  # noqa: E402  (prepare, run_child, machine, uptime, dump_doc)

NP_LORA = bench_train.NONPRIVATE_OPT["lora"]
NP_FULL = bench_train.NONPRIVATE_OPT["full"]


def plan(args) -> list[dict]:
    common = {"epochs": args.epochs, "cpu_threads": 1}
    return [
        {
            "name": "dp_lora",
            "what": f"LoRA, DP-SGD, target ε {args.epsilon:g} (the recipe)",
            "train": {**common, "method": "lora", "dp": True, "target_epsilon": args.epsilon},
        },
        {
            "name": "np_lora",
            "what": "LoRA r 8 all-linear, no DP, AdamW 0.01",
            "train": {**common, "method": "lora", "dp": False, **NP_LORA},
        },
        {
            "name": "np_full",
            "what": "full fine-tuning, no DP, AdamW 0.001",
            "train": {**common, "method": "full", "dp": False, **NP_FULL},
        },
    ]


def _texts(path: Path, n: int, seed: int) -> list[str]:
    rows = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def attack(
    name: str,
    base_dir: str,
    result: dict | None,
    *,
    canaries: list[dict],
    split: dict,
    raw_values: list[dict],
    args,
    max_len: int,
    reference: tuple | None,
) -> dict:
    """Every attack on one model, plain and (for fine-tuned models) calibrated against the base model; seconds
    per attack."""
    import torch

    from tasks.eval import safety
    from tasks.eval.lm import load_causal_lm

    torch.set_num_threads(1)
    if result is None:
        model, tok = load_causal_lm(Path(base_dir), None)
    elif result.get("adapter_dir"):
        model, tok = load_causal_lm(Path(base_dir), Path(result["adapter_dir"]))
    else:
        model, tok = load_causal_lm(Path(result["model_dir"]), None)
    out, seconds = {}, {}

    t0 = time.perf_counter()
    exp = safety.canary_exposure(model, tok, canaries, n_candidates=args.candidates, seed=13)
    seconds["canary_exposure"] = round(time.perf_counter() - t0, 2)
    out["canary"] = exp
    n = min(args.mia_records, split["holdout_records"])
    members, non_members = _texts(Path(split["train_path"]), n, 13), _texts(Path(split["holdout_path"]), n, 13)
    t0 = time.perf_counter()
    mia = safety.mia_auc(model, tok, members=members, non_members=non_members, max_len=max_len)
    seconds["mia_auc"] = round(time.perf_counter() - t0, 2)
    out["mia"] = mia
    if reference is not None:
        t0 = time.perf_counter()
        out["canary_calibrated"] = safety.canary_exposure(
            model, tok, canaries, n_candidates=args.candidates, seed=13, reference=reference
        )
        seconds["canary_exposure_calibrated"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        out["mia_calibrated"] = safety.mia_auc(
            model, tok, members=members, non_members=non_members, max_len=max_len, reference=reference
        )
        seconds["mia_auc_calibrated"] = round(time.perf_counter() - t0, 2)

    prompts = safety.leakage_prompts(
        REPO / "include" / "prompts" / "pii_leakage_prompts.jsonl",
        masked_path=Path(split["train_path"]),
        n_prefixes=100,
        seed=13,
    )
    t0 = time.perf_counter()
    leak = safety.pii_leakage(
        model,
        tok,
        prompts=prompts,
        raw_values=raw_values,
        out_dir=Path(args.home) / "attacks" / name,
        max_new_tokens=32,
    )
    seconds["pii_leakage"] = round(time.perf_counter() - t0, 2)
    out["leakage"] = leak
    out["seconds"] = seconds
    per = ", ".join(f"{p['id']} {p['exposure']:.2f}" for p in exp["per_canary"])
    cal = (
        f" (calibrated: exposure max {out['canary_calibrated']['exposure_max']:.2f}, "
        f"MIA AUC {out['mia_calibrated']['auc']:.3f})"
        if reference is not None
        else ""
    )
    print(
        f"{name}: exposure max {exp['exposure_max']:.2f} of {exp['max_possible']:.2f} bits ({per}); "
        f"MIA AUC {mia['auc']:.3f}; PII leaks {leak['pii_leaks']}{cal}; {seconds}",
        flush=True,
    )
    if result is not None:
        del model
    return out


def render_md(doc: dict) -> str:
    d, m = doc["data"], doc["model"]
    lines = [
        "# Privacy benchmark" + (" — QUICK SMOKE RUN (tiny model, not the committed figures)" if doc["quick"] else ""),
        "",
        f"Run {doc['started']} on {doc['machine']['machine']}, {doc['machine']['cpus']} CPUs shared with other jobs, "
        f"torch {doc['machine']['torch']}; one torch thread; total {doc['total_seconds'] / 60:.1f} min. "
        f"Command: `{doc['command']}`.",
        "",
        f"Model: `tasks.demo.base_model` size `{m['size']}` ({m['parameters']:,} parameters). Data: {d['masked_rows']} masked "
        f"records from `tasks.demo.synth` (seed 7) with {len(doc['canaries'])} canaries planted in the raw records "
        f"(a 6-digit secret the masker does not catch, {doc['canaries'][0]['repeats'] if doc['canaries'] else 0} "
        f"records each); audit hold-out {doc['split']['holdout_records']} records "
        f"(share {doc['split']['holdout_share']}), training {doc['split']['train_records']}. Every run: "
        f"{doc['epochs']} epochs, batch 128, max {doc['max_seq_len']} tokens.",
        "",
        f"Canary exposure: each secret ranked by log-perplexity among {doc['candidates']} random secrets of its format; "
        f"exposure = log2({doc['candidates']} + 1) − log2(rank), at most {math.log2(doc['candidates'] + 1):.2f} bits. "
        f"MIA: loss-based (score = −mean token loss), {doc['runs'][0]['attacks']['mia']['n_members']} training records "
        f"vs {doc['runs'][0]['attacks']['mia']['n_non_members']} hold-out records, exact AUC (0.5 = chance). PII leaks: distinct raw values (synth/pii_key.json) reproduced verbatim "
        "in greedy continuations of the committed leakage prompts plus 100 masked-record prefixes.",
        "",
        "Calibrated: the same attacks scored as differences to the base model (`reference=`), which removes what the "
        "base model already prefers; the base model against itself would be 1 bit and 0.5 by construction.",
        "",
        "| model | trained | ε | steps | final loss | canary exposure max | mean | calibrated max | calibrated mean "
        "| MIA AUC | calibrated MIA AUC | PII leaks | Presidio findings |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        a = r["attacks"]
        eps = r.get("epsilon")
        eps_s = "—" if r["name"] == "base" else ("∞" if eps is None or eps == math.inf else f"{eps:.2f}")
        lines.append(
            f"| {r['name']} | {r['what']} | {eps_s} | {r.get('steps', '—')} | "
            f"{r['final_loss'] if r.get('final_loss') is not None else '—'} | "
            f"{a['canary']['exposure_max']:.2f} | {a['canary']['exposure_mean']:.2f} | "
            + (
                f"{a['canary_calibrated']['exposure_max']:.2f} | {a['canary_calibrated']['exposure_mean']:.2f} | "
                if "canary_calibrated" in a
                else "— | — | "
            )
            + f"{a['mia']['auc']:.3f} | "
            + (f"{a['mia_calibrated']['auc']:.3f} | " if "mia_calibrated" in a else "— | ")
            + f"{a['leakage']['pii_leaks']} | {sum(a['leakage']['presidio_entities'].values())} |"
        )
    lines += [
        "",
        "Per canary (exposure in bits; repeats = host records that stayed in training after the hold-out):",
        "",
        "| model | " + " | ".join(f"{c['id']} ({c['repeats_in_training']}×)" for c in doc["canaries"]) + " |",
        "|---|" + "---:|" * len(doc["canaries"]),
    ]
    for r in doc["runs"]:
        cal = r["attacks"].get("canary_calibrated")
        lines.append(
            f"| {r['name']} | "
            + " | ".join(
                f"{p['exposure']:.2f}" + (f" (cal. {q['exposure']:.2f})" if cal else "")
                for p, q in zip(r["attacks"]["canary"]["per_canary"], (cal or r["attacks"]["canary"])["per_canary"])
            )
            + " |"
        )
    means = ", ".join(
        f"{r['name']} {r['attacks']['canary']['exposure_mean']:.2f}"
        + (
            f" (calibrated {r['attacks']['canary_calibrated']['exposure_mean']:.2f})"
            if "canary_calibrated" in r["attacks"]
            else ""
        )
        for r in doc["runs"]
    )
    lines += [
        "",
        f"Mean exposure per model: {means}. A model that knows a secret no better than a random one ranks it "
        "uniformly, so its exposure averages 1/ln 2 ≈ 1.44 bits and exceeds t bits with probability 2^−t; the "
        "base model row is that null measured (it never saw a canary), and shows that the base model's own "
        "preferences among digit strings can reach several bits for one canary, which the calibrated figures remove.",
    ]
    lines += [
        "",
        "Attack time per model (s): "
        + "; ".join(
            f"{r['name']} " + ", ".join(f"{k} {v}" for k, v in r["attacks"]["seconds"].items()) for r in doc["runs"]
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":  # the Markdown again from a run's JSON
        path = Path(sys.argv[2])
        path.with_suffix(".md").write_text(render_md(json.loads(path.read_text())))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "privacy.json")
    parser.add_argument("--home", type=Path, default=None, help="data, base model and runs (cached data and model)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 300 records, 1 epoch")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--holdout-share", type=float, default=0.1)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--mia-records", type=int, default=400)
    parser.add_argument("--only", default=None, help="comma-separated run names (dp_lora,np_lora,np_full)")
    args = parser.parse_args()
    if args.quick:
        args.records, args.epochs = args.records or 300, args.epochs or 1.0
    args.records, args.epochs = args.records or 4000, args.epochs or 2.5
    args.home = args.home or Path(os.environ.get("PFT_HOME", REPO / ".local")) / (
        "bench-privacy-quick" if args.quick else "bench-privacy"
    )

    from tasks.common.offline import apply as offline_apply

    offline_apply()
    from tasks.config import TrainConfig
    from tasks.data.splits import split_audit_holdout
    from tasks.eval import safety

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_all = time.perf_counter()
    mach = {**bench_train.machine(), "uptime_before": bench_train.uptime()}
    prep = bench_train.prepare(args.home, args.records, "tiny" if args.quick else "demo")
    split = split_audit_holdout(Path(prep["data"]["train_path"]), args.home / "split", args.holdout_share)
    canaries = safety.load_canaries(args.home / "synth" / "canaries.json")
    if not canaries:
        raise SystemExit(
            f"{args.home}/synth/canaries.json lists no canaries: delete {args.home} and rerun "
            "(the data were generated before canaries existed)"
        )
    train_ids = {json.loads(line)["record_id"] for line in Path(split["train_path"]).read_text().splitlines() if line}
    raw_values = safety.load_raw_values(args.home / "synth" / "pii_key.json")
    max_len = TrainConfig().max_seq_len
    print(
        f"data: {split['train_records']} training / {split['holdout_records']} hold-out records; "
        f"model {prep['model']['parameters']} params",
        flush=True,
    )

    from tasks.eval.lm import load_causal_lm

    reference = load_causal_lm(Path(prep["model"]["dir"]), None)  # the calibration reference: never saw the data
    common = dict(canaries=canaries, split=split, raw_values=raw_values, args=args, max_len=max_len)
    runs = [
        {
            "name": "base",
            "what": "none (the base model)",
            "attacks": attack("base", prep["model"]["dir"], None, reference=None, **common),
        }
    ]
    work = args.home / "runs"
    only = set(args.only.split(",")) if args.only else None
    for item in plan(args):
        if only and item["name"] not in only:
            continue
        train_cfg = TrainConfig(**item["train"]).model_dump()
        spec = {
            "base_model_dir": prep["model"]["dir"],
            "data_path": split["train_path"],
            "train": train_cfg,
            "out_dir": str(work / item["name"]),
        }
        shutil.rmtree(work / item["name"], ignore_errors=True)  # never resume an old run's checkpoint
        t0 = time.perf_counter()
        child = bench_train.run_child("train", spec, work, item["name"])
        r = child["result"]
        print(f"{item['name']}: {r['steps']} steps in {r['train_seconds']} s, ε {r.get('epsilon')}", flush=True)
        runs.append(
            {
                "name": item["name"],
                "what": item["what"],
                "overrides": item["train"],
                "steps": r["steps"],
                "epsilon": r["epsilon"] if r.get("dp") else None,
                "delta": r.get("delta"),
                "final_loss": None if r.get("final_loss") is None else round(r["final_loss"], 3),
                "train_seconds": r["train_seconds"],
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "attacks": attack(item["name"], prep["model"]["dir"], r, reference=reference, **common),
            }
        )

    doc = {
        "started": started,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "quick": args.quick,
        "command": "python bench/bench_privacy.py " + " ".join(sys.argv[1:]),
        "machine": {**mach, "uptime_after": bench_train.uptime()},
        "model": prep["model"],
        "data": prep["data"],
        "split": split,
        "epochs": args.epochs,
        "max_seq_len": max_len,
        "candidates": args.candidates,
        "mia_records": args.mia_records,
        # ids and counts only: the secrets stay in the raw zone
        "canaries": [
            {
                "id": c["id"],
                "repeats": c["repeats"],
                "repeats_in_training": sum(rid in train_ids for rid in c["record_ids"]),
            }
            for c in canaries
        ],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(bench_train.dump_doc(doc))
    args.out.with_suffix(".md").write_text(render_md(doc))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {doc['total_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
