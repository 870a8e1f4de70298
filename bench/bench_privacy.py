"""Privacy benchmark: what DP-SGD buys against memorisation, measured by attack.

    python bench/bench_privacy.py --out bench/results/privacy.json          # demo model, 4000 records (~20 min, 2 cores)
    python bench/bench_privacy.py --quick --out /tmp/privacy-quick.json     # smoke run: tiny model, 300 records, 1 epoch
    python bench/bench_privacy.py --render bench/results/privacy.json       # the Markdown again from the JSON

Same base model, same masked data, same split for every run:
  data    bench_train.prepare: tasks.demo.synth (seed 7; 4 canaries × 8 records, planted before masking and kept by
          it) → tasks.data.ingest → tasks.data.mask; then tasks.data.splits.split_audit_holdout (--holdout-share) keeps
          an audit hold-out out of training, the membership-inference test's non-members.
  model   tasks.demo.base_model demo size (the one bench_train uses), cached under --home.
  runs    each a fresh subprocess calling tasks.train.recipe.train (bench_train's child, one torch thread):
            dp_lora        the recipe as configured (LoRA, DP-SGD, target ε --epsilon), --epochs
            np_lora        the same LoRA without DP (AdamW, bench_train's tuned setting: the recipe's SGD 0.5
                           diverges unclipped), --epochs
            np_full        full fine-tuning without DP (AdamW 1e-3), --epochs
            np_full_memorise   the MIA's positive control: full fine-tuning without DP on --control-records training
                           records for --control-epochs epochs, batch 16: a model that certainly memorised
            dp_lora_memorise   DP LoRA (target ε --epsilon) on the control's records and epochs, batch 32
          plus the base model itself, which never saw the data: the attacks' null reference.
  attacks tasks.eval.safety on each model, in this process: MIA (tasks.eval.mia: min-k %, zlib, reference and loss
          scores, AUC with bootstrap CI, TPR at 1 %/10 % FPR; --mia-records members vs as many hold-out records, the
          controls' own training records as members), and except on the controls: canary exposure (--candidates
          random secrets per canary), PII leakage (committed templates + 100 record prefixes, synth/pii_key.json).

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
    control = {"epochs": args.control_epochs, "cpu_threads": 1}
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
        # The MIA's positive control: a model that certainly memorised, so the attack must find it (issue 15).
        # Few records, many epochs, small batches; only the MIA runs on it (no canary is sure to be in its set).
        {
            "name": "np_full_memorise",
            "what": f"full fine-tuning, no DP, AdamW 0.001, {args.control_epochs:g} epochs on {args.control_records} "
            "records, batch 16 (the memorising control)",
            "train": {**control, "method": "full", "dp": False, **NP_FULL, "batch_size": 16, "physical_batch_size": 16},
            "records": args.control_records,
        },
        {
            "name": "dp_lora_memorise",
            "what": f"LoRA, DP-SGD, target ε {args.epsilon:g}, the control's records and epochs, batch 32",
            "train": {
                **control,
                "method": "lora",
                "dp": True,
                "target_epsilon": args.epsilon,
                "batch_size": 32,
                "physical_batch_size": 32,
            },
            "records": args.control_records,
        },
    ]


def _rows(path: Path, n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def _texts(path: Path, n: int, seed: int) -> list[str]:
    return [row["text"] for row in _rows(path, n, seed)]


def _subset(train_path: Path, n: int, out: Path) -> Path:
    """The control's training set: n records of the training split (never the hold-out)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows(train_path, n, 29)))
    return out


def _mia(model, tok, members: list[str], non_members: list[str], max_len: int, reference) -> tuple[dict, float]:
    """Every MIA score (tasks.eval.mia) on one model, and the seconds it took."""
    from tasks.eval import safety

    t0 = time.perf_counter()
    result = safety.mia_auc(model, tok, members=members, non_members=non_members, max_len=max_len, reference=reference)
    return result, round(time.perf_counter() - t0, 2)


def _load(base_dir: str, result: dict | None):
    from tasks.eval.lm import load_causal_lm

    if result is None:
        return load_causal_lm(Path(base_dir), None)
    if result.get("adapter_dir"):
        return load_causal_lm(Path(base_dir), Path(result["adapter_dir"]))
    return load_causal_lm(Path(result["model_dir"]), None)


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
    members_path: Path | None = None,
    n_members: int | None = None,
) -> dict:
    """Every attack on one model, plain and (for fine-tuned models) calibrated against the base model; seconds
    per attack. `members_path` (the memorising controls' own training set): the MIA alone, on n_members of it."""
    import torch

    from tasks.eval import safety

    torch.set_num_threads(1)
    model, tok = _load(base_dir, result)
    n = min(n_members or args.mia_records, split["holdout_records"])
    members = _texts(members_path or Path(split["train_path"]), n, 13)
    out, seconds = {}, {}
    out["mia"], seconds["mia"] = _mia(
        model, tok, members, _texts(Path(split["holdout_path"]), n, 13), max_len, reference
    )
    mia_line = ", ".join(f"{k} {v['auc']:.3f}" for k, v in out["mia"]["scores"].items())
    if members_path is not None:
        out["seconds"] = seconds
        print(f"{name}: MIA AUC {mia_line}; {seconds}", flush=True)
        return out

    t0 = time.perf_counter()
    exp = safety.canary_exposure(model, tok, canaries, n_candidates=args.candidates, seed=13)
    seconds["canary_exposure"] = round(time.perf_counter() - t0, 2)
    out["canary"] = exp
    if reference is not None:
        t0 = time.perf_counter()
        out["canary_calibrated"] = safety.canary_exposure(
            model, tok, canaries, n_candidates=args.candidates, seed=13, reference=reference
        )
        seconds["canary_exposure_calibrated"] = round(time.perf_counter() - t0, 2)
    prompts = safety.leakage_prompts(
        REPO / "include" / "prompts" / "pii_leakage_prompts.jsonl",
        masked_path=Path(split["train_path"]),
        n_prefixes=100,
        seed=13,
    )
    t0 = time.perf_counter()
    out["leakage"] = safety.pii_leakage(
        model,
        tok,
        prompts=prompts,
        raw_values=raw_values,
        out_dir=Path(args.home) / "attacks" / name,
        max_new_tokens=32,
    )
    seconds["pii_leakage"] = round(time.perf_counter() - t0, 2)
    out["seconds"] = seconds
    cal = f" (calibrated max {out['canary_calibrated']['exposure_max']:.2f})" if reference is not None else ""
    print(
        f"{name}: exposure max {exp['exposure_max']:.2f} of {exp['max_possible']:.2f} bits{cal}; "
        f"MIA AUC {mia_line}; PII leaks {out['leakage']['pii_leaks']}; {seconds}",
        flush=True,
    )
    return out


def train_and_attack(item: dict, prep: dict, split: dict, home: Path, reference: tuple, common: dict) -> dict:
    """One planned run: train in a fresh child process, then attack the result in this one."""
    from tasks.config import TrainConfig

    work = home / "runs"
    data_path = Path(split["train_path"])
    if item.get("records"):  # a memorising control: its own small training set, which is also its MIA's members
        data_path = _subset(data_path, item["records"], work / f"{item['name']}.train.jsonl")
    spec = {
        "base_model_dir": prep["model"]["dir"],
        "data_path": str(data_path),
        "train": TrainConfig(**item["train"]).model_dump(),
        "out_dir": str(work / item["name"]),
    }
    shutil.rmtree(work / item["name"], ignore_errors=True)  # never resume an old run's checkpoint
    t0 = time.perf_counter()
    r = bench_train.run_child("train", spec, work, item["name"])["result"]
    print(f"{item['name']}: {r['steps']} steps in {r['train_seconds']} s, ε {r.get('epsilon')}", flush=True)
    control = {"members_path": data_path, "n_members": item["records"]} if item.get("records") else {}
    return {
        "name": item["name"],
        "what": item["what"],
        "overrides": item["train"],
        "train_records": item.get("records") or split["train_records"],
        "steps": r["steps"],
        "epsilon": r["epsilon"] if r.get("dp") else None,
        "delta": r.get("delta"),
        "final_loss": None if r.get("final_loss") is None else round(r["final_loss"], 3),
        "train_seconds": r["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "attacks": attack(item["name"], prep["model"]["dir"], r, reference=reference, **common, **control),
    }


def _ci(m: dict) -> str:
    return f"{m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]"


def _header(doc: dict) -> list[str]:
    d, m = doc["data"], doc["model"]
    return [
        "# Privacy benchmark" + (" — QUICK SMOKE RUN (tiny model, not the committed figures)" if doc["quick"] else ""),
        "",
        f"Run {doc['started']} on {doc['machine']['machine']}, {doc['machine']['cpus']} CPUs shared with other jobs, "
        f"torch {doc['machine']['torch']}; one torch thread; total wall time {doc['total_seconds'] / 60:.1f} min. "
        f"Command: `{doc['command']}`.",
        "",
        f"Model: `tasks.demo.base_model` size `{m['size']}` ({m['parameters']:,} parameters). Data: {d['masked_rows']} masked "
        f"records from `tasks.demo.synth` (seed 7) with {len(doc['canaries'])} canaries planted in the raw records "
        f"(a 6-digit secret the masker does not catch, {doc['canaries'][0]['repeats'] if doc['canaries'] else 0} "
        f"records each); audit hold-out {doc['split']['holdout_records']} records "
        f"(share {doc['split']['holdout_share']}), training {doc['split']['train_records']}. dp_lora, np_lora, "
        f"np_full: {doc['epochs']} epochs, batch {doc.get('batch_size', 'the recipe default (train.batch_size)')}, "
        f"max {doc['max_seq_len']} tokens. The memorising control "
        f"np_full_memorise and its DP twin dp_lora_memorise: {doc['control_records']} training records, "
        f"{doc['control_epochs']:g} epochs; their MIA members are those records.",
        "",
        f"Canary exposure: each secret ranked by log-perplexity among {doc['candidates']} random secrets of its format; "
        f"exposure = log2({doc['candidates']} + 1) − log2(rank), at most {math.log2(doc['candidates'] + 1):.2f} bits; "
        "calibrated = scored as differences to the base model. PII leaks: distinct raw values (synth/pii_key.json) "
        "reproduced verbatim in greedy continuations of the committed leakage prompts plus 100 masked-record prefixes.",
        "",
        "MIA (`tasks.eval.mia`): training records vs as many audit hold-out records, four scores: `min_k` (Min-K % "
        "Prob, k = 20 %, the pre-declared primary), `zlib` (loss / zlib bytes), `reference` (base-model loss − model "
        "loss) and plain `loss`; exact AUC (0.5 = chance) with a stratified bootstrap 95 % CI (1000 resamples), "
        "TPR at 1 % and 10 % FPR (chance: 0.01 and 0.10).",
        "",
    ]


def _main_table(doc: dict) -> list[str]:
    lines = [
        "| model | trained | records | ε | steps | final loss | canary exposure max | mean | calibrated max "
        "| calibrated mean | MIA AUC (min-k) [95% CI] | PII leaks | Presidio findings |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        a = r["attacks"]
        eps = r.get("epsilon")
        eps_s = "—" if r["name"] == "base" else ("∞" if eps is None or eps == math.inf else f"{eps:.2f}")
        c, cc = a.get("canary"), a.get("canary_calibrated")
        canary = f"{c['exposure_max']:.2f} | {c['exposure_mean']:.2f}" if c else "— | —"
        cal = f"{cc['exposure_max']:.2f} | {cc['exposure_mean']:.2f}" if cc else "— | —"
        leak = a.get("leakage")
        leaks = f"{leak['pii_leaks']} | {sum(leak['presidio_entities'].values())}" if leak else "— | —"
        loss = r["final_loss"] if r.get("final_loss") is not None else "—"
        lines.append(
            f"| {r['name']} | {r['what']} | {r.get('train_records', '—')} | {eps_s} | {r.get('steps', '—')} | {loss} | "
            f"{canary} | {cal} | {_ci(a['mia'])} | {leaks} |"
        )
    return lines


def _mia_table(doc: dict) -> list[str]:
    lines = [
        "| model | members vs non-members | score | AUC [95% CI] | TPR @ 1% FPR | TPR @ 10% FPR |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        mia = r["attacks"]["mia"]
        for name, m in mia["scores"].items():
            lines.append(
                f"| {r['name']} | {m['n_members']} vs {m['n_non_members']} | {name}"
                f"{' (primary)' if name == mia['score'] else ''} | {_ci(m)} | {m['tpr_at_fpr']['0.01']:.3f} | "
                f"{m['tpr_at_fpr']['0.1']:.3f} |"
            )
    by = {r["name"]: r["attacks"]["mia"] for r in doc["runs"]}
    said = [
        f"{n} {_ci(by[n])} (strongest score: {by[n]['best_score']} {by[n]['best_auc']:.3f})"
        for n in ("np_full_memorise", "dp_lora_memorise", "dp_lora")
        if n in by
    ]
    return lines + (["", "Primary-score (min-k) AUC: " + "; ".join(said) + "."] if said else [])


def _canary_lines(doc: dict) -> list[str]:
    runs = [r for r in doc["runs"] if "canary" in r["attacks"]]
    lines = [
        "Per canary (exposure in bits; repeats = host records that stayed in training after the hold-out):",
        "",
        "| model | " + " | ".join(f"{c['id']} ({c['repeats_in_training']}×)" for c in doc["canaries"]) + " |",
        "|---|" + "---:|" * len(doc["canaries"]),
    ]
    for r in runs:
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
        for r in runs
    )
    return lines + [
        "",
        f"Mean exposure per model: {means}. A model that knows a secret no better than a random one ranks it "
        "uniformly, so its exposure averages 1/ln 2 ≈ 1.44 bits and exceeds t bits with probability 2^−t; the "
        "base model row is that null measured (it never saw a canary), and shows that the base model's own "
        "preferences among digit strings can reach several bits for one canary, which the calibrated figures remove.",
    ]


def render_md(doc: dict) -> str:
    times = "; ".join(
        f"{r['name']} " + ", ".join(f"{k} {v}" for k, v in r["attacks"]["seconds"].items()) for r in doc["runs"]
    )
    lines = [
        *_header(doc),
        *_main_table(doc),
        "",
        "Membership inference, every score:",
        "",
        *_mia_table(doc),
        "",
        *_canary_lines(doc),
        "",
        f"Attack time per model (s): {times}.",
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
    parser.add_argument("--control-records", type=int, default=200, help="the memorising controls' training set")
    parser.add_argument("--control-epochs", type=float, default=30.0)
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated run names (dp_lora,np_lora,np_full,np_full_memorise,dp_lora_memorise)",
    )
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
    only = set(args.only.split(",")) if args.only else None
    for item in plan(args):
        if not only or item["name"] in only:
            runs.append(train_and_attack(item, prep, split, args.home, reference, common))

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
        "batch_size": TrainConfig().batch_size,  # dp_lora, np_lora and np_full leave the recipe's batch as it is
        "candidates": args.candidates,
        "mia_records": args.mia_records,
        "control_records": args.control_records,
        "control_epochs": args.control_epochs,
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
