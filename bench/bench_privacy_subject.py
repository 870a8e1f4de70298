"""Membership inference at subject level: can an attacker tell a data subject who trained from one who did not?

    python bench/bench_privacy_subject.py --work /tmp/pft-bench-privacy-subject --out bench/results/privacy_subject.json
    python bench/bench_privacy_subject.py --quick --out /tmp/privacy-subject.json   # smoke run: tiny model

Data: bench_utility.prepare_data with members (tasks.demo.synth seed 7, --records, the demo's 16,000; claim notes, letters and
tickets belong to members with heavy-tailed record counts), pseudonymised as the masker does, each member record
keeping its member's keyed pseudonym as `subject`. tasks.data.splits.split_audit_holdout holds out whole subjects
(--holdout-share), as the pipeline does under privacy.unit: subject.

Models (each trained in a fresh child process, one torch thread; seeded noise: a benchmark):
  np_full_memorise     the attack's positive control: full fine-tuning without DP on --control-subjects training
                       subjects (all their records), --control-epochs epochs, batch 16: a model that memorised them
  dp_subject_memorise  its DP twin: the recipe's LoRA under DP at privacy.unit subject, target ε --epsilon, on the
                       control's subjects and epochs, logical batch 32 subjects
  dp_subject           the demo recipe at privacy.unit subject on the whole training split (pipeline.yaml `train:`
                       and `privacy:`), target ε --epsilon per subject
  base                 the base model, which never saw the data: the attack's null

Attack (tasks.eval.safety.mia_auc with groups): a subject's score is the mean of its records' scores, over at most
8 of its records (tasks.data.splits.sample_units); members are the model's training subjects (the control's
own subjects for the controls), non-members as many held-out subjects. Records without a subject (plan documents)
are left out: the question is about people. Scores: min-k % (the pipeline's pre-declared primary), reference
(base-model loss − model loss), zlib and loss; AUC with a stratified bootstrap 95 % CI, TPR at 1 % and 10 % FPR.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_train  # noqa: E402  (run_child, machine, dump_doc)
import bench_utility as bu  # noqa: E402  (prepare_data, build_base)
import bench_utility_subject as bus  # noqa: E402  (subject_settings)

ENTITY = "MEMBER_ID"
RECIPE_KEYS = ("epochs", "batch_size", "learning_rate", "max_seq_len", "subject_max_records", "subject_max_tokens")
NP_FULL = bench_train.NONPRIVATE_OPT["full"]


def subject_rows(path: Path, out: Path, subjects: set[str] | None = None) -> Path:
    """The rows of `path` that name a subject (of `subjects`, when given), written to `out`."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [r for r in rows if r.get("subject") and (subjects is None or r["subject"] in subjects)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
    return out


def control_subjects(train_subjects_path: Path, n: int, seed: int = 29) -> set[str]:
    subjects = sorted({json.loads(line)["subject"] for line in train_subjects_path.read_text().splitlines() if line})
    random.Random(seed).shuffle(subjects)
    return set(subjects[:n])


def plan(args) -> list[dict]:
    recipe = bu.recipe(bu.QUICK if args.quick else None)
    subject = bus.subject_settings()
    dp = {**recipe, **subject, "target_epsilon": args.epsilon}
    control = {"epochs": args.control_epochs}
    full = {**recipe, **control, "method": "full", "dp": False, **NP_FULL, "batch_size": 16, "physical_batch_size": 16}
    return [
        {
            "name": "np_full_memorise",
            "what": f"full fine-tuning, no DP, AdamW {NP_FULL['learning_rate']:g}, {args.control_epochs:g} epochs on "
            f"{args.control_subjects} subjects' records, batch 16 (the memorising control)",
            "train": full,
            "control": True,
        },
        {
            "name": "dp_subject_memorise",
            "what": f"LoRA, DP at privacy.unit subject, target ε {args.epsilon:g} per subject, the control's subjects "
            "and epochs, logical batch 32 subjects",
            "train": {**dp, **control, "batch_size": 32, "physical_batch_size": 32},
            "control": True,
        },
        {
            "name": "dp_subject",
            "what": f"the demo recipe at privacy.unit subject, target ε {args.epsilon:g} per subject (pipeline.yaml)",
            "train": {**dp, **({"epochs": 0.5} if args.quick else {})},
        },
    ]


def attack(name: str, base_dir: str, result: dict | None, members: Path, non_members: Path, args, reference) -> dict:
    """Every MIA score on one model at subject level: `args.mia_subjects` subjects of each file."""
    import torch

    from tasks.eval import safety
    from tasks.eval.lm import load_causal_lm
    from tasks.eval.mia import sample_units

    torch.set_num_threads(args.threads)
    adapter = Path(result["adapter_dir"]) if result and result.get("adapter_dir") else None
    model_dir = Path(result["model_dir"]) if result and not adapter and result.get("model_dir") else Path(base_dir)
    model, tok = load_causal_lm(model_dir, adapter)
    pos, pos_units = sample_units(members, args.mia_subjects, 13, subject_entity=ENTITY)
    neg, neg_units = sample_units(non_members, args.mia_subjects, 13, subject_entity=ENTITY)
    t0 = time.perf_counter()
    mia = safety.mia_auc(
        model,
        tok,
        members=pos,
        non_members=neg,
        max_len=bu.recipe()["max_seq_len"],
        reference=reference,
        member_groups=pos_units,
        non_member_groups=neg_units,
    )
    mia["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in mia["scores"].items()), flush=True)
    return mia


def train_one(item: dict, base_dir: str, data_path: Path, work: Path) -> dict:
    """One planned run in a fresh child process (bench_train's, one torch thread); its result."""
    spec = {"base_model_dir": base_dir, "data_path": str(data_path), "train": item["train"]}
    spec["out_dir"] = str(work / item["name"])
    shutil.rmtree(work / item["name"], ignore_errors=True)  # never resume an old run's checkpoint
    result = bench_train.run_child("train", spec, work, item["name"])["result"]
    print(f"{item['name']}: {result['steps']} steps in {result['train_seconds']} s, ε {result.get('epsilon')}")
    return result


def run(args) -> dict:
    from tasks.data.splits import split_audit_holdout
    from tasks.eval.lm import load_causal_lm

    data = bu.prepare_data(args.work / "data_members", args.records, members=True)
    base_dir = bu.build_base(args.work / "data_members", "tiny" if args.quick else "demo")
    split = split_audit_holdout(
        Path(data["train_path"]), args.work / "split", args.holdout_share, subject_entity=ENTITY
    )
    train_subjects = subject_rows(Path(split["train_path"]), args.work / "split" / "train_subjects.jsonl")
    held_subjects = subject_rows(Path(split["holdout_path"]), args.work / "split" / "holdout_subjects.jsonl")
    chosen = control_subjects(train_subjects, args.control_subjects)
    control_path = subject_rows(train_subjects, args.work / "split" / "control.jsonl", chosen)
    reference = load_causal_lm(Path(base_dir), None)
    runs = [{"name": "base", "what": "none (the base model)", "attack": None}]
    runs[0]["attack"] = attack("base", base_dir, None, train_subjects, held_subjects, args, None)
    for item in plan(args):
        data_path = control_path if item.get("control") else Path(split["train_path"])
        t0 = time.perf_counter()
        result = train_one(item, base_dir, data_path, args.work / "runs")
        members = control_path if item.get("control") else train_subjects
        keep = ("steps", "epsilon", "delta", "noise_multiplier", "final_loss", "train_seconds", "privacy_unit")
        row = {"name": item["name"], "what": item["what"], "train": {k: result.get(k) for k in keep}}
        row["recipe"] = {k: item["train"].get(k) for k in RECIPE_KEYS}  # pipeline.yaml changes: say what ran
        row["units"] = result.get("subjects") or {"records": result.get("records")}
        row["attack"] = attack(item["name"], base_dir, result, members, held_subjects, args, reference)
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        runs.append(row)
    counts = {"control_subjects": len(chosen), "control_records": _lines(control_path)}
    counts |= {"train_subject_records": _lines(train_subjects), "holdout_subject_records": _lines(held_subjects)}
    return {"data": data, "split": split, "counts": counts, "runs": runs}


def _lines(path: Path) -> int:
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


def _ci(m: dict) -> str:
    return f"{m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]"


def render_md(doc: dict) -> str:
    split, counts = doc["split"], doc["counts"]
    lines = [
        "# Membership inference at subject level" + (" — QUICK SMOKE RUN" if doc["quick"] else ""),
        "",
        f"Run {doc['started']} on {doc['machine']}; `{doc['command']}`; {doc['wall_minutes']} min wall.",
        "",
        f"Data: {doc['data']['rows']:,} generated records with members, split by subject (share "
        f"{split['holdout_share']}): {split['train_records']:,} training records, {split['holdout_records']:,} "
        f"held out; of them {counts['train_subject_records']:,} and {counts['holdout_subject_records']:,} name a "
        f"subject. The memorising controls train on {counts['control_subjects']} subjects "
        f"({counts['control_records']} records). A subject's MIA score is the mean of its records' scores (at most 8 "
        "records); members are the model's own training subjects, non-members held-out subjects; AUC 0.5 = chance, "
        "bootstrap 95 % CI. The primary score is min-k % (declared before any audit, as in the pipeline).",
        "",
        "| model | trained | ε | steps | final loss | subjects (members vs non-members) | AUC min-k [95% CI] "
        "| AUC reference | AUC zlib | AUC loss | TPR @ 1% FPR (min-k) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        a, t = r["attack"], r.get("train") or {}
        eps = t.get("epsilon")
        eps_s = "—" if r["name"] == "base" else ("∞" if eps is None else f"{eps:.2f} per {t.get('privacy_unit')}")
        s = a["scores"]
        ref = _ci(s["reference"]) if "reference" in s else "—"
        loss = f"{t['final_loss']:.3f}" if t.get("final_loss") is not None else "—"
        lines.append(
            f"| {r['name']} | {r['what']} | {eps_s} | {t.get('steps', '—')} | {loss} | "
            f"{a['n_members']} vs {a['n_non_members']} | {_ci(s['min_k'])} | {ref} | {_ci(s['zlib'])} | "
            f"{_ci(s['loss'])} | {s['min_k']['tpr_at_fpr']['0.01']:.3f} |"
        )
    recipes = [f"- {r['name']}: {json.dumps(r['recipe'])}" for r in doc["runs"] if r.get("recipe")]
    lines += ["", "Recipes as run:", "", *recipes] if recipes else []
    return "\n".join(lines + ["", *doc.get("reading", [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "privacy_subject.json")
    parser.add_argument("--work", type=Path, default=REPO / ".local" / "bench-privacy-subject")
    parser.add_argument("--quick", action="store_true", help="tiny model, 600 records, short runs")
    parser.add_argument("--records", type=int, default=None, help="generated records (default: the demo's 16,000)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--holdout-share", type=float, default=0.2)
    parser.add_argument("--mia-subjects", type=int, default=200, help="members and non-members each, in subjects")
    parser.add_argument("--control-subjects", type=int, default=100)
    parser.add_argument("--control-epochs", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the attacks (training: one)")
    args = parser.parse_args()
    args.records = args.records or (600 if args.quick else 16000)
    if args.quick:
        args.control_subjects, args.control_epochs, args.mia_subjects = 40, 3.0, 20

    from tasks.common.offline import apply as offline_apply

    offline_apply()
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    doc = {"started": started, "quick": args.quick, **run(args)}
    doc["machine"] = bu.machine()
    doc["command"] = "python bench/bench_privacy_subject.py " + " ".join(sys.argv[1:])
    doc["wall_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(bench_train.dump_doc(doc))
    args.out.with_suffix(".md").write_text(render_md(doc))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
