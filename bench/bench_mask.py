"""Masking benchmark: detection quality per entity type on labeled sets, and throughput against
a plain Presidio loop, in one run.

    python bench/bench_mask.py --out bench/results/mask.json [--n 1000] [--n-eval 1000]

Quality (precision, recall, F2 per entity type) on:
  presidio_evaluator         sentences from presidio-evaluator's PresidioSentenceFaker, its own
                             templates and providers (its WikiData hospital provider left out:
                             it downloads; no template uses it).
  presidio_evaluator_domain  the same generator with a few insurer templates and providers for
                             the custom identifiers (member, claim, policy, medical record numbers),
                             which the stock templates do not have.
  synth_key                  the project's own generator (tasks.demo.synth, seed --seed): its
                             pii_key.json lists every raw value inserted, with type and record id.
When presidio-evaluator is not installed, the first two are replaced by `synth_alt_names`: the
project's generator with another seed and other name, street and city lists (labelled so).

Matching is span-level and type-aware. A labeled span counts as found (recall) when masked
spans of the same type cover every letter and digit in it; `masked_recall` drops the type
condition (an SSN masked as a phone is still masked). A masked span counts as correct
(precision) when it overlaps a labeled span of its type; precision is computed only for the
types a set labels. F2 = 5PR / (4P + R) weighs recall four times as much as precision.
The synth_key set also reports `leaked`: key values still present verbatim in the masked text.

Throughput, on the first --n synth_key records, side by side:
  batched     tasks.pii.mask_records with --workers processes (NER-only spaCy, run in nlp.pipe
              batches on the sentences that may hold a name and their neighbours, engines
              loaded once per worker, residual scan included), warm pool. The share of text
              the NER reads is reported.
  batched_1   the same in this process (workers=1), to separate batching from parallelism.
  plain_loop  AnalyzerEngine.analyze + AnonymizerEngine.anonymize per text, engines loaded
              once, with exactly the same recognizers (tasks.pii.build_registry) and operators,
              on Presidio's default spaCy pipeline (all components) with default conflict handling.
Engine and worker start-up times are reported apart from docs/s.

Masking profiles (bench/mask_profiles.py, issue 16): value-level recall per Safe Harbor type under
each profile (minimal, safe_harbor) and plain Presidio on the same presidio-evaluator sentences
(seed --sh-seed, never used elsewhere), precision, names re-cased, fact retention.
`--profiles-only` runs that section alone and writes --out (e.g. bench/results/mask_profiles.json).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")  # presidio-evaluator's progress bars; read when tqdm is imported

TARGET_TYPES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "US_SSN",
    "CREDIT_CARD",
    "MEMBER_ID",
    "CLAIM_ID",
    "POLICY_NUMBER",
    "MEDICAL_RECORD_NUMBER",
]
TARGET_RECALL = 0.95
KEY = b"bench-only-pseudonymisation-key-0123456789"
RECOGNIZERS = REPO / "include" / "presidio" / "recognizers.yaml"

# presidio-evaluator's labels → ours. Types we do not mask (GPE, ORGANIZATION, TITLE, NRP, AGE,
# ZIP_CODE, DATE_TIME, US_DRIVER_LICENSE) are not scored.
EVALUATOR_TYPES = {
    "PERSON": "PERSON",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "US_SSN": "US_SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "DOMAIN_NAME": "URL",
    "MEMBER_ID": "MEMBER_ID",
    "CLAIM_ID": "CLAIM_ID",
    "POLICY_NUMBER": "POLICY_NUMBER",
    "MEDICAL_RECORD_NUMBER": "MEDICAL_RECORD_NUMBER",
}
SYNTH_TYPES = {"ADDRESS": "STREET_ADDRESS"}  # the generator's key name → ours; others are the same

DOMAIN_TEMPLATES = [
    "Please update the phone number on file for member {{member_id}} to {{phone_number}}.",
    "{{person}} called about claim {{claim_id}}; call back at {{phone_number}}.",
    "Policy {{policy_number}} belongs to {{person}}, SSN {{ssn}}.",
    "Chart {{medical_record_number}} was merged for patient {{person}}.",
    "Refund the copay to card {{credit_card_number}} for {{person}}.",
    "Send the explanation of benefits for {{claim_id}} to {{email}}.",
    "Member {{member_id}} ({{person}}) moved to {{address}}.",
    "Social security number {{ssn}} does not match member {{member_id}}.",
    "Reach {{first_name}} {{last_name}} at {{email}} or {{phone_number}} about policy {{policy_number}}.",
    "Per {{person}}, medical record {{medical_record_number}} lists a penicillin allergy.",
    "Our adjuster spoke with {{name}} regarding {{claim_id}} yesterday.",
    "Wire the reimbursement to {{iban}} for member {{member_id}}.",
    "The subscriber, {{person}}, asked us to stop calling {{phone_number}}.",
    "Card ending {{credit_card_number}} was declined for policy {{policy_number}}.",
]
# Names, streets and cities the project's generator never uses (the fallback set).
ALT_FIRST = [
    "Adaeze",
    "Bjorn",
    "Camila",
    "Dmitri",
    "Esperanza",
    "Farhan",
    "Giulia",
    "Hamid",
    "Isabela",
    "Jonas",
    "Keiko",
    "Lorenzo",
    "Mei",
    "Nikolai",
    "Oluwaseun",
    "Paulina",
    "Rashid",
    "Siobhan",
    "Thanh",
    "Ulrike",
    "Valentina",
    "Wojciech",
    "Ximena",
    "Yusuf",
    "Zofia",
]
ALT_LAST = [
    "Achebe",
    "Bergstrom",
    "Chaudhry",
    "Dubois",
    "Eriksen",
    "Fonseca",
    "Gutierrez",
    "Horvath",
    "Iwasaki",
    "Jovanovic",
    "Kaminski",
    "Laurent",
    "Mbeki",
    "Nguyen",
    "Oyelaran",
    "Papadopoulos",
    "Reyes",
    "Sorensen",
    "Takahashi",
    "Umarov",
    "Vasquez",
    "Wojcik",
    "Yilmaz",
    "Zielinski",
]
ALT_STREETS = [
    "Magnolia Drive",
    "Sycamore Street",
    "Juniper Court",
    "Aspen Way",
    "Hickory Lane",
    "Poplar Avenue",
    "Cypress Road",
    "Redwood Boulevard",
]
ALT_CITIES = [("Fresno", "CA", "937"), ("Boise", "ID", "837"), ("Omaha", "NE", "681"), ("Savannah", "GA", "314")]


# ---------------------------------------------------------------- labeled sets


def _quiet():
    """presidio-evaluator prints to stdout; keep the benchmark's output clean."""
    return contextlib.redirect_stdout(io.StringIO())


def evaluator_sets(n: int, seed: int) -> dict[str, dict]:
    """Two sets from presidio-evaluator's generator (stock templates; insurer templates)."""
    from faker.providers import BaseProvider
    from presidio_evaluator.data_generator import PresidioSentenceFaker, presidio_additional_entity_providers
    from presidio_evaluator.data_generator.faker_extensions import HospitalProvider

    # HospitalProvider queries WikiData when built; the benchmark runs offline.
    providers = [p for p in presidio_additional_entity_providers if p is not HospitalProvider]

    class DomainIdProvider(BaseProvider):
        def member_id(self):
            return self.numerify("MBR-########")

        def claim_id(self):
            return f"CLM-{self.random_int(2019, 2026)}-{self.numerify('######')}"

        def policy_number(self):
            return f"POL-{self.random_uppercase_letter()}{self.random_uppercase_letter()}-{self.numerify('######')}"

        def medical_record_number(self):
            return self.numerify("MRN-#######")

    mapping = dict(PresidioSentenceFaker.ENTITY_TYPE_MAPPING)
    mapping.update(
        {
            "member_id": "MEMBER_ID",
            "claim_id": "CLAIM_ID",
            "policy_number": "POLICY_NUMBER",
            "medical_record_number": "MEDICAL_RECORD_NUMBER",
        }
    )
    out = {}
    for name, templates, extra, description in (
        (
            "presidio_evaluator",
            None,
            [],
            "presidio-evaluator PresidioSentenceFaker, stock templates and providers (hospital provider removed)",
        ),
        (
            "presidio_evaluator_domain",
            DOMAIN_TEMPLATES,
            [DomainIdProvider],
            f"presidio-evaluator PresidioSentenceFaker with {len(DOMAIN_TEMPLATES)} insurer templates and "
            "providers for the custom identifiers",
        ),
    ):
        with _quiet():
            # Its person table is drawn with the global `random` before the seed is applied.
            PresidioSentenceFaker.seed(seed)
            faker = PresidioSentenceFaker(
                "en_US",
                lower_case_ratio=0.05,
                sentence_templates=templates,
                entity_providers=providers + extra,
                entity_type_mapping=dict(mapping),
                random_seed=seed,
            )
            samples = faker.generate_new_fake_sentences(n)
        docs = []
        for s in samples:
            gold = [
                (EVALUATOR_TYPES[sp.entity_type], sp.start_position, sp.end_position)
                for sp in s.spans
                if sp.entity_type in EVALUATOR_TYPES
            ]
            docs.append({"text": s.full_text, "gold": gold})
        labeled = sorted(
            {EVALUATOR_TYPES[t] for t in EVALUATOR_TYPES}
            if templates is None
            else {g[0] for d in docs for g in d["gold"]}
        )
        out[name] = {"description": description, "docs": docs, "labeled_types": labeled}
    return out


def _landing_rows(home: Path) -> list[dict]:
    rows = []
    for path in sorted((home / "landing").rglob("*")):
        if path.suffix == ".jsonl":
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix == ".csv":
            rows += list(csv.DictReader(io.StringIO(path.read_text())))
    return sorted(rows, key=lambda r: r["record_id"])


def synth_set(n: int, seed: int, *, alt_names: bool = False) -> dict:
    """The project's generator: n records; gold spans are every occurrence of each key value."""
    from tasks.demo import synth

    saved = (synth.FIRST, synth.LAST, synth.STREETS, synth.CITIES)
    with tempfile.TemporaryDirectory(prefix="bench-mask-") as tmp:
        try:
            if alt_names:
                synth.FIRST, synth.LAST, synth.STREETS, synth.CITIES = ALT_FIRST, ALT_LAST, ALT_STREETS, ALT_CITIES
            synth.generate(Path(tmp), seed=seed, n_records=n, bad_rows=0)
        finally:
            synth.FIRST, synth.LAST, synth.STREETS, synth.CITIES = saved
        rows = _landing_rows(Path(tmp))[:n]
        key = json.loads((Path(tmp) / "synth" / "pii_key.json").read_text())
    values = defaultdict(set)
    for entry in key:
        values[entry["record_id"]].add((SYNTH_TYPES.get(entry["type"], entry["type"]), entry["value"]))
    docs, unlocated = [], 0
    for row in rows:
        gold = set()
        for etype, value in values.get(row["record_id"], ()):
            starts = [m.start() for m in re.finditer(re.escape(value), row["text"])]
            unlocated += not starts
            gold |= {(etype, s, s + len(value)) for s in starts}
        docs.append({"text": row["text"], "gold": sorted(gold), "values": sorted(values.get(row["record_id"], ()))})
    labeled = sorted({t for vs in values.values() for t, _ in vs})
    what = "alternative names/streets/cities (fallback: presidio-evaluator not installed)" if alt_names else "its key"
    return {
        "description": f"project generator tasks.demo.synth (seed {seed}, {n} records), {what}",
        "docs": docs,
        "labeled_types": labeled,
        "unlocated_key_values": unlocated,
    }


# ---------------------------------------------------------------- scoring


def _covered(gold: tuple[str, int, int], spans: list[tuple[str, int, int]], text: str, typed: bool) -> bool:
    etype, start, end = gold
    chars = {i for i in range(start, end) if text[i].isalnum()}
    for t, s, e in spans:
        if not typed or t == etype:
            chars -= set(range(s, e))
    return not chars


def score(docs: list[dict], predictions: list[list[tuple[str, int, int]]], labeled: list[str]) -> dict:
    """Per entity type: counts, precision, recall, F2, masked_recall (see the module docstring)."""
    c = defaultdict(Counter)
    for doc, pred in zip(docs, predictions):
        text, gold = doc["text"], doc["gold"]
        for g in gold:
            c[g[0]]["gold"] += 1
            c[g[0]]["found"] += _covered(g, pred, text, typed=True)
            c[g[0]]["masked"] += _covered(g, pred, text, typed=False)
        for t, s, e in pred:
            if t not in labeled:
                continue
            c[t]["pred"] += 1
            c[t]["correct"] += any(gt == t and s < ge and gs < e for gt, gs, ge in gold)
    out = {}
    for etype in sorted(c):
        k = c[etype]
        recall = k["found"] / k["gold"] if k["gold"] else None
        precision = k["correct"] / k["pred"] if k["pred"] else None
        f2 = (
            5 * precision * recall / (4 * precision + recall)
            if precision is not None and recall is not None and (precision or recall)
            else None
        )
        out[etype] = {
            "gold": k["gold"],
            "predicted": k["pred"],
            "precision": _r(precision),
            "recall": _r(recall),
            "f2": _r(f2),
            "masked_recall": _r(k["masked"] / k["gold"] if k["gold"] else None),
        }
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def targets(per_type: dict) -> dict:
    met = {}
    for etype in TARGET_TYPES:
        recall = per_type.get(etype, {}).get("recall")
        if recall is not None:
            met[etype] = recall >= TARGET_RECALL
    return met


# ---------------------------------------------------------------- runners


def run_ours(texts: list[str], workers: int):
    from tasks.pii import mask_records

    t0 = time.perf_counter()
    out = list(mask_records(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=workers))
    return out, time.perf_counter() - t0


def plain_loop_engines():
    """Presidio as a plain user sets it up: NlpEngineProvider (full spaCy pipeline), the same recognizers."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    from tasks.pii import build_registry, load_spec
    from tasks.pii.engines import operators
    from tasks.pii.spacy_ner import NER_IGNORED, NER_MAPPING

    spec = load_spec(RECOGNIZERS)
    nlp_engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": spec.nlp_model}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": NER_MAPPING,
                "labels_to_ignore": NER_IGNORED,
            },
        }
    ).create_engine()
    registry = build_registry(RECOGNIZERS, "en", spec, nlp_engine)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    supported = set(analyzer.get_supported_entities("en"))
    entities = sorted(e for e in spec.entities if e in supported)
    return analyzer, AnonymizerEngine(), operators(spec, KEY), entities, list(nlp_engine.nlp["en"].pipe_names)


def run_plain(texts: list[str], engines) -> tuple[list, float]:
    analyzer, anonymizer, operators, entities, _ = engines
    out = []
    t0 = time.perf_counter()
    for text in texts:
        results = analyzer.analyze(text=text, language="en", entities=entities, score_threshold=0.4)
        masked = anonymizer.anonymize(text=text, analyzer_results=results, operators=operators)
        out.append((masked.text, [(r.entity_type, r.start, r.end) for r in results]))
    return out, time.perf_counter() - t0


def leaked(docs: list[dict], masked_texts: list[str]) -> dict[str, int]:
    counts = Counter()
    for doc, text in zip(docs, masked_texts):
        for etype, value in doc.get("values", ()):
            counts[etype] += value in text
    return {t: counts[t] for t in sorted(counts)}


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = [
        "# Masking benchmark",
        "",
        f"Run {result['generated_at']} on {result['machine']}; {result['params']}.",
        "",
        "Span-level, type-aware: a labeled value is found when masked spans of its type cover all its "
        "letters and digits; a masked span is correct when it overlaps a labeled span of its type. "
        f"Target: recall ≥ {TARGET_RECALL} for {', '.join(TARGET_TYPES)}.",
        "",
    ]
    for name, s in result["sets"].items():
        lines += [
            f"## {name}",
            "",
            f"{s['description']}; {s['docs']} docs.",
            "",
            "| entity | labeled | masked spans | precision | recall | F2 | masked (any type) | target |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for etype, m in s["per_type"].items():
            target = {True: "met", False: "**missed**"}.get(s["targets_met"].get(etype), "")
            lines.append(
                f"| {etype} | {m['gold']} | {m['predicted']} | {_f(m['precision'])} | {_f(m['recall'])} | "
                f"{_f(m['f2'])} | {_f(m['masked_recall'])} | {target} |"
            )
        if "leaked" in s:
            lines += [
                "",
                f"Key values still verbatim in the masked text: {sum(s['leaked'].values())} "
                f"({', '.join(f'{k}: {v}' for k, v in s['leaked'].items() if v) or 'none'}).",
            ]
        r = s["residual_scan"]
        lines += [
            "",
            f"Residual scan: {r['records']} of {s['docs']} masked records flagged ({r['share']:.1%})"
            + (f": {', '.join(f'{k} {v}' for k, v in r['per_type'].items())}." if r["records"] else "."),
        ]
        lines.append("")
    t = result["throughput"]
    lines += [
        "## Throughput",
        "",
        f"{t['docs']} synth_key docs (mean {t['mean_chars']} chars), the same docs for each pipeline.",
        "",
        "| pipeline | docs/s | seconds | start-up s | recall (synth_key, all types) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("batched", "batched_1", "plain_loop"):
        r = t[name]
        lines.append(
            f"| {name}: {r['what']} | {r['docs_per_s']} | {r['seconds']} | {r['startup_s']} | "
            f"{_f(r['recall_all_types'])} |"
        )
    lines += [
        "",
        f"Speed-up of batched over plain_loop: **{t['speedup']}×** (batched_1 over plain_loop: "
        f"{t['speedup_1_worker']}×).",
    ]
    if t.get("ner_read_share") is not None:
        lines.append(
            f"The batched pipelines' spaCy NER read {t['ner_read_share']:.0%} of the characters (sentences "
            "that may hold a name, with their neighbours); plain_loop runs spaCy on all of them."
        )
    if t.get("load_1min") is not None:
        lines.append(
            f"1-minute load average before / after the throughput runs: {t['load_1min']} (2 CPUs; other "
            "jobs on the machine slow the side-by-side runs alike, the 2-worker run most)."
        )
    lines.append("")
    return "\n".join(lines)


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _residual(masked) -> dict:
    """What the stage's residual scan reported on this set's masked output."""
    counts = Counter()
    for m in masked:
        counts.update(m.residual)
    flagged = sum(1 for m in masked if m.residual)
    return {
        "records": flagged,
        "share": _r(flagged / len(masked)) if masked else 0.0,
        "per_type": dict(sorted(counts.items())),
    }


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _ner_read_share(texts: list[str]) -> float | None:
    """Share of the characters the masking stage's NER gate sends to spaCy (None: gate off)."""
    from tasks.pii import load_spec
    from tasks.pii.gate import ner_gate

    gate = ner_gate(load_spec(RECOGNIZERS))
    if gate is None:
        return None
    return _r(sum(e - s for t in texts for s, e in gate.segments(t)) / sum(map(len, texts)))


def _overall_recall(docs, preds) -> float | None:
    total = found = 0
    for doc, pred in zip(docs, preds):
        for g in doc["gold"]:
            total += 1
            found += _covered(g, pred, doc["text"], typed=True)
    return _r(found / total) if total else None


def main(argv: list[str] | None = None) -> int:
    from tasks.common import offline

    offline.apply()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "mask.json",
        help="JSON result; the markdown table goes next to it (.md)",
    )
    parser.add_argument("--n", type=int, default=1000, help="synth_key docs, also the throughput docs")
    parser.add_argument("--n-eval", type=int, default=1000, help="sentences per presidio-evaluator set")
    parser.add_argument("--seed", type=int, default=101, help="generator seed (the demo data uses 7)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sh-n", type=int, default=1000, help="presidio-evaluator sentences for the profile table")
    parser.add_argument("--sh-seed", type=int, default=20261207, help="their seed (never used for tuning)")
    parser.add_argument("--fact-records", type=int, default=1000, help="generator records for fact retention")
    parser.add_argument("--profiles-only", action="store_true", help="run only the masking-profile section")
    parser.add_argument(
        "--throughput-docs", type=int, default=4000, help="external sentences for safe_harbor vs plain loop docs/s"
    )
    args = parser.parse_args(argv)
    if args.profiles_only:
        return profiles_only(args)

    from tasks.pii import mask_workers

    sets: dict[str, dict] = {}
    try:
        sets.update(evaluator_sets(args.n_eval, args.seed))
    except ImportError:
        print("presidio-evaluator is not installed: using the fallback set synth_alt_names", file=sys.stderr)
        sets["synth_alt_names"] = synth_set(args.n_eval, args.seed + 1, alt_names=True)
    sets["synth_key"] = synth_set(args.n, args.seed)
    synth_docs = sets["synth_key"]["docs"]
    texts = [d["text"] for d in synth_docs]

    load_before = _load()
    t0 = time.perf_counter()
    with mask_workers(args.workers, recognizers_path=RECOGNIZERS) as workers:
        pool_startup = time.perf_counter() - t0
        predictions, residual = {}, {}
        for name, s in sets.items():  # the other sets first: they also warm the workers up
            if name != "synth_key":
                masked, _ = run_ours([d["text"] for d in s["docs"]], workers)
                predictions[name] = [list(m.spans) for m in masked]
                residual[name] = _residual(masked)
        ours, ours_s = run_ours(texts, workers)
        predictions["synth_key"] = [list(m.spans) for m in ours]
        residual["synth_key"] = _residual(ours)
    t0 = time.perf_counter()
    run_ours(texts[:8], 1)  # engines into this process
    one_startup = time.perf_counter() - t0
    ours_1, ours_1_s = run_ours(texts, 1)
    assert [m.text for m in ours_1] == [m.text for m in ours], "workers changed the output"

    t0 = time.perf_counter()
    engines = plain_loop_engines()
    plain_startup = time.perf_counter() - t0
    plain, plain_s = run_plain(texts, engines)

    result_sets = {}
    for name, s in sets.items():
        per_type = score(s["docs"], predictions[name], s["labeled_types"])
        entry = {
            "description": s["description"],
            "docs": len(s["docs"]),
            "labeled_types": s["labeled_types"],
            "per_type": per_type,
            "targets_met": targets(per_type),
            "residual_scan": residual[name],
        }
        if name == "synth_key":
            entry["leaked"] = leaked(s["docs"], [m.text for m in ours])
            entry["unlocated_key_values"] = s["unlocated_key_values"]
        result_sets[name] = entry

    n = len(texts)
    rate = lambda secs: round(n / secs, 2)
    throughput = {
        "docs": n,
        "mean_chars": round(sum(map(len, texts)) / n),
        "ner_read_share": _ner_read_share(texts),
        "batched": {
            "what": f"mask_records, {workers} workers, residual scan",
            "docs_per_s": rate(ours_s),
            "seconds": round(ours_s, 2),
            "startup_s": round(pool_startup, 2),
            "recall_all_types": _overall_recall(synth_docs, predictions["synth_key"]),
        },
        "batched_1": {
            "what": "mask_records, 1 process, residual scan",
            "docs_per_s": rate(ours_1_s),
            "seconds": round(ours_1_s, 2),
            "startup_s": round(one_startup, 2),
            "recall_all_types": _overall_recall(synth_docs, [list(m.spans) for m in ours_1]),
        },
        "plain_loop": {
            "what": f"analyze+anonymize per text, spaCy pipes {engines[4]}",
            "docs_per_s": rate(plain_s),
            "seconds": round(plain_s, 2),
            "startup_s": round(plain_startup, 2),
            "recall_all_types": _overall_recall(synth_docs, [p for _, p in plain]),
            "per_type": score(synth_docs, [p for _, p in plain], sets["synth_key"]["labeled_types"]),
        },
    }
    throughput["load_1min"] = f"{load_before} / {_load()}"
    throughput["speedup"] = round(plain_s / ours_s, 2)
    throughput["speedup_1_worker"] = round(plain_s / ours_1_s, 2)

    result = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "params": f"--n {args.n} --n-eval {args.n_eval} --seed {args.seed} --workers {args.workers}",
        "matching": "span-level, type-aware; recall: labeled span's letters/digits fully covered by masked spans "
        "of its type; precision: masked span overlaps a labeled span of its type (labeled types only)",
        "target_recall": TARGET_RECALL,
        "target_types": TARGET_TYPES,
        "sets": result_sets,
        "throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def profiles_only(args) -> int:
    """The masking-profile section alone (bench/mask_profiles.py), to --out (.json and .md)."""
    import mask_profiles

    section = mask_profiles.profile_section(
        args.sh_n, args.sh_seed, args.workers, args.fact_records, args.seed, args.throughput_docs
    )
    params = f"--profiles-only --sh-n {args.sh_n} --sh-seed {args.sh_seed} --fact-records {args.fact_records} "
    params += f"--seed {args.seed} --workers {args.workers} --throughput-docs {args.throughput_docs}"
    head = f"Run {time.strftime('%Y-%m-%dT%H:%M:%S%z')} on {platform.machine()}, {os.cpu_count()} CPUs; {params}."
    result = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": params, "profiles": section}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join(["# Masking profiles benchmark", "", head, "", *mask_profiles.markdown(section)])
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
