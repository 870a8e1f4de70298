"""Utility at subject level: the demo recipe at ε 8 per data subject beside ε 8 per record, on the same data.

    python bench/bench_utility_subject.py --work /tmp/pft-bench-subject --out bench/results/utility_subject.json
    python bench/bench_utility_subject.py --quick --out /tmp/subject.json   # smoke run: tiny model, few steps

Data: tasks.demo.synth at the demo's N with members (synth.members: claim notes, letters and tickets belong to
members with heavy-tailed record counts; plan documents have no subject), pseudonymised as in bench_utility,
each member record keeping its member's keyed pseudonym as `subject`. The same records train both runs:

- record: privacy.unit record, N = records;
- subject: privacy.unit subject (pipeline.yaml's k and token cap), N = subjects + records without one.

Same recipe (pipeline.yaml `train:`) and same compute: the demo's expected logical batch (in units) and number
of steps, so the subject run's epochs are scaled by records / units. Fewer units at the same batch and ε means a
larger sample rate, so more noise per step: that is the price being measured. Test split only, seeded noise (a
benchmark), the base model and its test scores shared with bench_utility when they match (same corpus, same
questions). Every record of a subject can train: its ≤ k records are drawn afresh each time it is sampled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_utility as bu  # noqa: E402  (the scoring, children and rendering helpers)


def subject_settings() -> dict:
    """The train settings the pipeline adds at privacy.unit subject (unit, entity, k, token cap)."""
    from tasks.config import load_config, train_settings

    cfg = load_config()
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"unit": "subject"})})
    return {k: v for k, v in train_settings(cfg).items() if k not in cfg.train.model_dump()}


def count_units(train_path: str, settings: dict) -> dict:
    from tasks.train.data import load_units

    return load_units(Path(train_path), settings)[1]


def expected_records_trained(counts: dict, *, batch: int, steps: int, k: int) -> float:
    """Expected records in at least one step's example: a record of a subject with n records is in a sampled
    example with probability min(1, k/n), so it is never drawn with probability (1 − q·min(1, k/n))^T."""
    q = batch / counts["units"]
    spread = {int(n): c for n, c in counts.get("records_per_subject", {}).items()}
    spread_alone = counts.get("records_without_subject", counts["units"] if not spread else 0)
    total = sum(c * n * (1 - (1 - q * min(1.0, k / n)) ** steps) for n, c in spread.items())
    return total + spread_alone * (1 - (1 - q) ** steps)


def run(args) -> dict:
    work = args.work
    data = bu.prepare_data(work / "data_members", args.records, members=True)
    base_dir = bu.build_base(work / "data_members", args.size)
    synth_dir = Path(data["synth"])
    base = bu.base_scores(base_dir, synth_dir, "test", work / "base_test_scores.json")
    recipe, subject = bu.recipe(args.quick_overrides), subject_settings()
    counts = {"record": {"records": data["rows"], "units": data["rows"]}}
    counts["subject"] = count_units(data["train_path"], {**recipe, **subject})

    def one(unit: str) -> dict:
        train = {**recipe, "target_epsilon": args.epsilon, **(subject if unit == "subject" else {})}
        train = bu.same_compute(train, data["rows"], counts[unit]["units"])  # demo batch × steps, in units
        name = f"{unit}_eps{args.epsilon:g}"
        spec = {
            "train": train,
            "base_model_dir": base_dir,
            "out_dir": str(work / "runs" / name),
            "data_path": data["train_path"],
            "synth_dir": str(synth_dir),
            "split": "test",
        }
        t0 = time.perf_counter()
        res = bu.run_child(spec, work / "runs" / name)
        row = {"name": name, "unit": unit, "epsilon": args.epsilon, "units": counts[unit], "train": res["train"]}
        row["metrics"] = bu.summarise(res["scored"], base)
        k = subject.get("subject_max_records", 1) if unit == "subject" else 1
        trained = expected_records_trained(counts[unit], batch=train["batch_size"], steps=res["train"]["steps"], k=k)
        row["expected_records_trained"] = round(trained)
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: steps {res['train']['steps']} ε {res['train']['epsilon']} σ {res['train']['noise_multiplier']}")
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, ("record", "subject")))
    return {"base": bu.summarise(base), "runs": rows, "recipe": recipe, "subject_settings": subject, "data": data}


def render_md(doc: dict) -> str:
    base, runs = doc["base"], doc["runs"]
    lines = [
        "# Utility at subject level: ε 8 per data subject vs ε 8 per record",
        "",
        f"Run {doc['started']} on {doc['machine']}; `{doc['command']}`; {doc['wall_minutes']} min wall "
        f"(the two runs side by side, one torch thread each).",
        "",
        "Test split only (never tuned on); EM with a 95 % percentile-bootstrap CI over questions; gain = paired",
        "difference to the base model on the same questions. The same generated records with members train both",
        "runs, with the same recipe and compute (the demo's expected logical batch, in units, and number of steps).",
        "Seeded noise: a benchmark, not a production guarantee.",
        "",
        f"Base model: all {bu._ci(base['all']['em'])}, common {bu._ci(base['common']['em'])}.",
        "",
        "| unit | N units | records | ε | δ | σ | steps | sample rate | EM all | gain all | EM common | gain common "
        "| records trained (expected) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for r in runs:
        t, m, u = r["train"], r["metrics"], r["units"]
        lines.append(
            f"| {r['unit']} | {u['units']:,} | {u['records']:,} | {t['epsilon']:.2f} per {r['unit']} "
            f"| {t['delta']:.1e} | {t['noise_multiplier']:.3f} | {t['steps']} | {t['batch_size'] / u['units']:.4f} "
            f"| {bu._ci(m['all']['em'])} | {bu._ci(m['all']['gain'])} | {bu._ci(m['common']['em'])} "
            f"| {bu._ci(m['common']['gain'])} | {r['expected_records_trained']:,} |"
        )
    subject = next(r for r in runs if r["unit"] == "subject")["units"]
    spread = ", ".join(f"{n}: {c}" for n, c in subject["records_per_subject"].items())
    lines += [
        "",
        f"Units at subject level: {subject['subjects']:,} subjects + {subject['records_without_subject']:,} records "
        f"without one (plan documents) = {subject['units']:,}; records per subject {{{spread}}} (records: "
        f"subjects). Packing: k = {doc['subject_settings']['subject_max_records']} records drawn afresh each time "
        f"a subject is sampled, packed into at most {_cap(doc['subject_settings'])}. Records trained (expected): "
        "records in at least one step's example, "
        "Σ n·(1 − (1 − q·min(1, k/n))^T) over subjects of n records.",
        "",
        "Recipe: `" + json.dumps({k: v for k, v in doc["recipe"].items() if k in bu.RECIPE_KEYS}) + "` "
        "(pipeline.yaml `train:`); the subject run's epochs are scaled by records / units (same steps).",
        "",
    ]
    lines += doc.get("reading", [])
    return "\n".join(lines) + "\n"


def _cap(settings: dict) -> str:
    cap = settings.get("subject_max_tokens")
    return f"{cap} tokens" if cap else "the model's positions (the demo model: 256 tokens)"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", default="run", choices=["run", "render"])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "utility_subject.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/pft-bench-subject"))
    p.add_argument("--records", type=int, default=None, help="the demo's N (default: config synth.n_records)")
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    p.add_argument("--size", default="demo", choices=["demo", "tiny"])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 400 records, a few steps")
    args = p.parse_args(argv)
    if args.records is None:
        from tasks.config import load_config

        args.records = load_config().synth.n_records
    args.quick_overrides = dict(bu.QUICK) if args.quick else {}
    if args.quick:
        args.records, args.size = min(args.records, 400), "tiny"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.mode == "render":  # the Markdown again, from a finished run's JSON (after adding a `reading`)
        args.out.with_suffix(".md").write_text(render_md(json.loads(args.out.read_text())))
        return
    from tasks.common import offline

    offline.apply()
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    doc = run(args)
    doc.update(started=started, machine=bu.machine(), command="python " + " ".join(sys.argv))
    doc["wall_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(bu.strict_json(doc))
    args.out.with_suffix(".md").write_text(render_md(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
