"""The masking profile a run used and that profile's benchmark figures, for the model card.

The figures come from the committed `bench/results/mask_profiles.json` (`bench/bench_mask.py
--profiles-only`): value-level recall on presidio-evaluator template sentences, external-style text
that is not this run's data. They describe the profile, not a measurement on the records trained on;
the card says so. A custom recognizers file gets no benchmark figure: none was measured for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.config import MASK_PROFILES, REPO_ROOT

MASK_BENCHMARK_JSON = REPO_ROOT / "bench" / "results" / "mask_profiles.json"


def _benchmark(profile: str, path: Path) -> dict | None:
    """{recall, values, lowest_type, lowest_recall, docs, seed, date, fact_retention} or None when the
    file is absent (an image without bench/) or holds no figures for the profile."""
    try:
        bench = json.loads(Path(path).read_text(encoding="utf-8"))
        figures = bench["profiles"]
        recall = figures["engines"][profile]["recall"]
        overall = recall["ALL"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    per_type = {name: row["recall"] for name, row in recall.items() if name != "ALL"}
    lowest = min(per_type, key=per_type.get) if per_type else None
    retention = (figures.get("fact_retention") or {}).get(profile) or {}
    return {
        "recall": overall.get("recall"),
        "values": overall.get("values"),
        "lowest_type": lowest,
        "lowest_recall": per_type.get(lowest),
        "docs": figures.get("docs"),
        "seed": figures.get("seed"),
        "date": str(bench.get("generated_at") or "")[:10] or None,
        "fact_retention": retention.get("retention"),
    }


def masking_facts(profile: str | None, recognizers: str | None, path: Path = MASK_BENCHMARK_JSON) -> dict:
    """The card's `masking_profile` fact: {"profile", "recognizers", "custom", "benchmark"}."""
    custom = recognizers is not None and recognizers != MASK_PROFILES.get(profile or "")
    return {
        "profile": profile,
        "recognizers": recognizers,
        "custom": custom,
        "benchmark": None if custom or not profile else _benchmark(profile, path),
    }
