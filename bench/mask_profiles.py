"""Masking profiles against HIPAA Safe Harbor on text nobody here wrote (issue 16), for bench_mask.py.

Value-level recall per Safe Harbor type: a labeled value counts as caught when it no longer
appears verbatim in the masked text (any placeholder type). Data: presidio-evaluator's
PresidioSentenceFaker, stock templates, a seed this project never used (--sh-seed). Engines on the
same texts: each masking profile through tasks.pii.mask_records (the mask stage's path), and plain
Presidio (AnalyzerEngine with en_core_web_sm's full pipeline, Presidio's predefined recognizers made
offline, AnonymizerEngine's default replace). Types Safe Harbor lets stay are not scored: countries
and states (GPE values in Faker's country and US state lists, two-letter codes), bare years, weekdays
and times (DATE_TIME), ages up to 89, organisations, titles, nationalities. Precision: the share of
masked spans that overlap any labeled span. Casing: the PERSON values of the sentences that hold
one, with each sentence lower-cased and upper-cased. Fact retention: tasks.pii.fact_retention on
the project generator's records (synth.fact_strings).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = b"bench-only-pseudonymisation-key-0123456789"
PROFILES = {"minimal": "include/presidio/recognizers.yaml", "safe_harbor": "include/presidio/safe_harbor.yaml"}
# presidio-evaluator label -> the Safe Harbor kind it is scored as.
SH_TYPES = {
    "PERSON": "PERSON",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "GPE": "CITY_OR_PLACE",
    "ZIP_CODE": "ZIP_CODE",
    "DATE_TIME": "DATE",
    "AGE": "AGE_OVER_89",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "DOMAIN_NAME": "URL",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "CREDIT_CARD": "ACCOUNT_NUMBER",
    "IBAN_CODE": "ACCOUNT_NUMBER",
    "US_DRIVER_LICENSE": "LICENSE_NUMBER",
}
TARGET = 0.95
_WEEKDAYS = re.compile(r"^(?:mon|tues|wednes|thurs|fri|satur|sun)day$", re.I)


def _allowed_places() -> frozenset[str]:
    """Countries and US states (Safe Harbor keeps them): Faker's lists, folded."""
    from faker.providers.address.en_US import Provider as US

    return frozenset(x.casefold() for x in (*US.countries, *US.states, *US.states_abbr))


def _scored(etype: str, value: str, allowed: frozenset) -> str | None:
    """The Safe Harbor kind a labeled value is scored as, or None when Safe Harbor lets it stay."""
    kind = SH_TYPES.get(etype)
    v = value.strip()
    if kind == "CITY_OR_PLACE" and (v.casefold() in allowed or re.fullmatch(r"[A-Za-z]{2}", v)):
        return None
    if kind == "DATE" and (re.fullmatch(r"\d{4}", v) or _WEEKDAYS.match(v) or not re.search(r"\d", v)):
        return None  # a bare year, a weekday, "tomorrow"
    if kind == "AGE_OVER_89" and not (v.isdigit() and int(v) > 89):
        return None
    return kind


def evaluator_docs(n: int, seed: int) -> list[dict]:
    import contextlib
    import io

    from presidio_evaluator.data_generator import PresidioSentenceFaker, presidio_additional_entity_providers
    from presidio_evaluator.data_generator.faker_extensions import HospitalProvider

    providers = [p for p in presidio_additional_entity_providers if p is not HospitalProvider]
    with contextlib.redirect_stdout(io.StringIO()):
        PresidioSentenceFaker.seed(seed)
        faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, entity_providers=providers, random_seed=seed)
        samples = faker.generate_new_fake_sentences(n)
    return [
        {"text": s.full_text, "gold": [(sp.entity_type, sp.start_position, sp.end_position) for sp in s.spans]}
        for s in samples
    ]


def plain_presidio():
    """AnalyzerEngine + AnonymizerEngine as a plain user sets them up, with en_core_web_sm."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    from tasks.pii import build_registry, load_spec

    spec = load_spec(REPO / PROFILES["minimal"])
    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spec.nlp_model}]}
    nlp_engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    registry = build_registry(REPO / PROFILES["minimal"], "en", spec, nlp_engine, custom=False)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    anonymizer = AnonymizerEngine()

    def run(texts: list[str]) -> list[tuple[str, list]]:
        out = []
        for text in texts:
            results = analyzer.analyze(text=text, language="en")
            masked = anonymizer.anonymize(text=text, analyzer_results=results).text
            out.append((masked, [(r.entity_type, r.start, r.end) for r in results]))
        return out

    return run


def run_engines(texts: list[str], workers: int, plain) -> dict[str, tuple[list[tuple[str, list]], float]]:
    """engine name -> ([(masked text, spans)], seconds)."""
    from tasks.pii import mask_records

    out = {}
    for name, path in PROFILES.items():
        t0 = time.perf_counter()
        masked = list(mask_records(texts, key=KEY, recognizers_path=REPO / path, workers=workers, residual=False))
        out[name] = ([(m.text, list(m.spans)) for m in masked], time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["plain_presidio"] = (plain(texts), time.perf_counter() - t0)
    return out


def value_recall(docs: list[dict], outputs: list[tuple[str, list]], allowed: frozenset) -> dict[str, dict]:
    """Per Safe Harbor kind: values, caught (no longer verbatim in the masked text), recall."""
    values, caught = Counter(), Counter()
    for doc, (masked, _) in zip(docs, outputs, strict=True):
        for etype, s, e in doc["gold"]:
            kind = _scored(etype, doc["text"][s:e], allowed)
            if kind is None or not doc["text"][s:e].strip():
                continue
            values[kind] += 1
            caught[kind] += doc["text"][s:e].strip() not in masked
    per = {k: {"values": values[k], "caught": caught[k], "recall": round(caught[k] / values[k], 3)} for k in values}
    total = sum(values.values())
    per["ALL"] = {"values": total, "caught": sum(caught.values()), "recall": round(sum(caught.values()) / total, 3)}
    return dict(sorted(per.items()))


def span_precision(docs: list[dict], outputs: list[tuple[str, list]]) -> dict[str, dict]:
    """Per placeholder type: masked spans and the share that overlap any labeled span."""
    spans, good = Counter(), Counter()
    for doc, (_, found) in zip(docs, outputs, strict=True):
        for etype, s, e in found:
            spans[etype] += 1
            good[etype] += any(s < ge and gs < e for _, gs, ge in doc["gold"])
    return {t: {"spans": spans[t], "precision": round(good[t] / spans[t], 3)} for t in sorted(spans)}


def casing_docs(docs: list[dict]) -> dict[str, list[dict]]:
    """The sentences holding a PERSON, lower-cased and upper-cased (offsets unchanged: ASCII-safe only)."""
    keep = [d for d in docs if any(t == "PERSON" for t, _, _ in d["gold"])]
    keep = [d for d in keep if len(d["text"].lower()) == len(d["text"]) == len(d["text"].upper())]
    person = lambda d, f: {"text": f(d["text"]), "gold": [g for g in d["gold"] if g[0] == "PERSON"]}
    return {"lower": [person(d, str.lower) for d in keep], "upper": [person(d, str.upper) for d in keep]}


def fact_retention_by_engine(n: int, seed: int, workers: int, plain) -> dict[str, dict]:
    """fact_retention on n generator records, per engine."""
    import json

    from tasks.demo import synth
    from tasks.pii import fact_retention

    with tempfile.TemporaryDirectory(prefix="bench-facts-") as tmp:
        synth.generate(Path(tmp), seed=seed, n_records=n, bad_rows=0, canaries=0)
        texts = [
            json.loads(line)["text"]
            for p in sorted(Path(tmp, "landing").rglob("*.jsonl"))
            for line in p.read_text().splitlines()
            if line.startswith("{")
        ]
    strings = synth.fact_strings()
    out = {}
    for name, (outputs, _) in run_engines(texts, workers, plain).items():
        r = fact_retention(texts, [m for m, _ in outputs], strings)
        out[name] = {"records": len(texts), "present": r.present, "kept": r.kept, "retention": round(r.share, 4)}
    return out


def external_throughput(texts: list[str], workers: int, plain) -> dict:
    """docs/s on external text: the safe_harbor profile as the pipeline masks (mask_records with the residual
    scan) on a warm pool of `workers` processes and in one process, against the plain per-text loop; each
    warmed up on a few texts first, start-up timed apart."""
    from tasks.pii import mask_records, mask_workers

    path = REPO / PROFILES["safe_harbor"]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def ours(n: int):
        return lambda: list(mask_records(texts, key=KEY, recognizers_path=path, workers=n, residual=True))

    out: dict = {"docs": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts)), "workers": workers}
    t0 = time.perf_counter()
    with mask_workers(workers, recognizers_path=path) as pool:
        out["pool_startup_s"] = round(time.perf_counter() - t0, 1)
        list(mask_records(texts[:64], key=KEY, recognizers_path=path, workers=pool))  # warm-up
        out["safe_harbor_workers_s"] = timed(ours(pool))
    list(mask_records(texts[:8], key=KEY, recognizers_path=path, workers=1))  # engines into this process
    out["safe_harbor_1_s"] = timed(ours(1))
    plain(texts[:8])
    out["plain_loop_s"] = timed(lambda: plain(texts))
    for name in ("safe_harbor_workers", "safe_harbor_1", "plain_loop"):
        out[f"{name}_docs_per_s"] = round(len(texts) / out[f"{name}_s"], 1)
    out["speedup_workers"] = round(out["plain_loop_s"] / out["safe_harbor_workers_s"], 2)
    out["speedup_1"] = round(out["plain_loop_s"] / out["safe_harbor_1_s"], 2)
    return out


def profile_section(
    n: int, seed: int, workers: int, fact_records: int, fact_seed: int, throughput_docs: int = 0
) -> dict:
    """The whole section: recall, precision, casing and fact retention per engine; with `throughput_docs`, the
    docs/s of safe_harbor on at least 2 warm workers vs the plain loop on that many external sentences."""
    allowed = _allowed_places()
    docs = evaluator_docs(n, seed)
    plain = plain_presidio()
    runs = run_engines([d["text"] for d in docs], workers, plain)
    section: dict = {"docs": len(docs), "seed": seed, "engines": {}}
    cased = casing_docs(docs)
    for case, cdocs in cased.items():
        cruns = run_engines([d["text"] for d in cdocs], workers, plain)
        for name, (outputs, _) in cruns.items():
            section.setdefault("casing", defaultdict(dict))[name][case] = value_recall(cdocs, outputs, allowed)["ALL"]
    for name, (outputs, secs) in runs.items():
        section["engines"][name] = {
            "recall": value_recall(docs, outputs, allowed),
            "precision": span_precision(docs, outputs),
            "docs_per_s": round(len(docs) / secs, 1),
        }
    section["casing"] = {k: dict(v) for k, v in section["casing"].items()}
    section["fact_retention"] = fact_retention_by_engine(fact_records, fact_seed, workers, plain)
    if throughput_docs:  # more sentences of another seed, so start-up and warm-up are a small share
        texts = [d["text"] for d in evaluator_docs(throughput_docs, seed + 1)]
        section["throughput"] = external_throughput(texts, max(2, workers), plain)
    return section


def markdown(section: dict) -> list[str]:
    engines = list(section["engines"])
    kinds = sorted({k for e in section["engines"].values() for k in e["recall"]} - {"ALL"}) + ["ALL"]
    lines = [
        "## Safe Harbor: value-level recall per profile vs plain Presidio",
        "",
        f"presidio-evaluator stock templates, seed {section['seed']}, {section['docs']} sentences. A value is caught "
        "when it is no longer verbatim in the output. Countries, states, bare years, weekdays and ages up to 89 "
        "are not scored (Safe Harbor lets them stay). The templates were read while tuning: optimistic.",
        "",
        "| Safe Harbor type | values | " + " | ".join(engines) + " |",
        "|---|---:|" + "---:|" * len(engines),
    ]
    for k in kinds:
        first = section["engines"][engines[0]]["recall"].get(k, {})
        cells = [f"{section['engines'][e]['recall'].get(k, {}).get('recall', float('nan')):.3f}" for e in engines]
        lines.append(f"| {k} | {first.get('values', 0)} | " + " | ".join(cells) + " |")
    lines += ["", "Names in other casing (PERSON values of the same sentences, re-cased): recall", ""]
    lines += ["| casing | " + " | ".join(engines) + " |", "|---|" + "---:|" * len(engines)]
    for case in ("lower", "upper"):
        lines.append(f"| {case} | " + " | ".join(f"{section['casing'][e][case]['recall']:.3f}" for e in engines) + " |")
    lines += ["", "Precision (masked spans overlapping any labeled span), per placeholder type, and docs/s:", ""]
    for e in engines:
        p = section["engines"][e]["precision"]
        cells = ", ".join(f"{t} {v['precision']:.2f} ({v['spans']})" for t, v in p.items())
        lines.append(f"- {e} ({section['engines'][e]['docs_per_s']} docs/s): {cells}")
    fr = section["fact_retention"]
    lines += ["", "Fact retention (generator records; share of fact-string occurrences still verbatim):", ""]
    lines += [
        f"- {e}: {v['retention']:.4f} ({v['kept']}/{v['present']}, {v['records']} records)" for e, v in fr.items()
    ]
    return lines + _throughput_lines(section.get("throughput")) + [""]


def _throughput_lines(t: dict | None) -> list[str]:
    if not t:
        return []
    return [
        "",
        "## Throughput on external text (safe_harbor vs the plain loop; target ≥ 3× with 2 workers)",
        "",
        f"{t['docs']} presidio-evaluator sentences of another seed (mean {t['mean_chars']} chars), the same texts "
        "for each. safe_harbor runs as the pipeline masks (`mask_records`, residual scan on); the plain loop is "
        "`AnalyzerEngine.analyze` + `AnonymizerEngine.anonymize` per text with the full spaCy pipeline. Warmed up "
        f"first; the {t['workers']}-worker pool's start-up ({t['pool_startup_s']} s, once per masking task) is "
        "not in its docs/s.",
        "",
        "| engine | docs/s | seconds | × plain loop |",
        "|---|---:|---:|---:|",
        f"| safe_harbor, {t['workers']} warm workers | {t['safe_harbor_workers_docs_per_s']} | "
        f"{t['safe_harbor_workers_s']:.1f} | **{t['speedup_workers']:.2f}×** |",
        f"| safe_harbor, 1 process | {t['safe_harbor_1_docs_per_s']} | {t['safe_harbor_1_s']:.1f} | "
        f"{t['speedup_1']:.2f}× |",
        f"| plain loop | {t['plain_loop_docs_per_s']} | {t['plain_loop_s']:.1f} | 1.00× |",
    ]
