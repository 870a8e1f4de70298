"""Membership inference with calibrated scores: can an attacker tell training records from held-out ones?

The plain loss attack (Yeom et al. 2018) mostly measures how easy a text is: a short, formulaic record has a
low loss whether or not it was trained on, so on varied data its AUC stays near 0.5 even for a model that
memorised. Each score below is "higher = more likely a member"; all are computed on the same tokens that
training saw (tasks.common.tokens.tokenize: BOS + text + EOS, cut at max_len):

  loss       −mean token NLL (the uncalibrated baseline, kept for comparison)
  min_k      Min-K % Prob (Shi et al. 2023): the mean log-probability of the k % least likely tokens. A seen
             record has few surprising tokens; an unseen one keeps its outliers.
  zlib       −mean token NLL / zlib-compressed bytes of the scored text (Carlini et al. 2021): the loss relative
             to a model-free measure of how compressible (how formulaic) the text is.
  reference  reference model's mean NLL − the model's (difficulty calibration: Watson et al. 2022, Carlini et
             al. 2022's reference models): the base model never saw the data, so its loss is the record's own
             difficulty, and only what training lowered remains. Present only when a reference is given.

Metrics per score: exact AUC, its stratified bootstrap 95 % CI (members and non-members resampled apart), and
TPR at a low FPR (Carlini et al. 2022: an attack that is sure of a few records matters more than the average).
With `member_groups` / `non_member_groups` (e.g. a subject's pseudonym), a group's score is the mean of its
records' scores and the group is the unit of the metrics.

Only scores and counts leave this module: the texts are scored in memory and never logged or returned.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from tasks.common.jsonl import read_objects
from tasks.common.tokens import tokenize
from tasks.eval.lm import pad_id, token_nlls
from tasks.pii.subjects import audit_unit

MIN_K_FRACTION = 0.2  # Shi et al.'s recommended k
FPR_TARGETS = (0.01, 0.1)
RESAMPLES = 1000
SEED = 20260101
# The primary score (what `auc` and the gate report) is declared before any audit, not picked per run: min-k was
# the strongest on the memorising control of bench/bench_privacy.py at both 8 and 30 epochs (docs/evaluation.md).
# The base-model reference is weaker there: the base never saw insurer text, so its loss is mostly domain
# unfamiliarity, not the record's own difficulty. Scores missing from an audit fall back in this order.
SCORE_ORDER = ("min_k", "reference", "zlib", "loss")


def min_k_score(nlls: Sequence[float], k: float = MIN_K_FRACTION) -> float:
    """Mean log-probability of the ceil(k·n) least likely tokens (= −mean of the largest NLLs)."""
    if not nlls:
        return float("nan")
    n = max(1, math.ceil(k * len(nlls)))
    worst = sorted(nlls, reverse=True)[:n]
    return -sum(worst) / n


def zlib_bytes(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def record_scores(
    nlls: Sequence[Sequence[float]],
    zlib_sizes: Sequence[int],
    reference_losses: Sequence[float] | None = None,
    *,
    k: float = MIN_K_FRACTION,
) -> dict[str, list[float]]:
    """Every score per record from per-token NLLs (and the reference model's mean losses, when given)."""
    losses = [_mean(x) for x in nlls]
    scores = {
        "loss": [-x for x in losses],
        "min_k": [min_k_score(x, k) for x in nlls],
        "zlib": [-x / max(1, z) for x, z in zip(losses, zlib_sizes)],
    }
    if reference_losses is not None:
        scores["reference"] = [r - x for r, x in zip(reference_losses, losses)]
    return scores


def score_texts(
    model, tokenizer, texts: Sequence[str], *, max_len: int, batch_size: int = 32, reference: tuple | None = None
) -> dict[str, list[float]]:
    """Every score of every text under `model`; `reference` = (model, tokenizer) of a model that never saw them."""
    rows = tokenize(list(texts), tokenizer, max_len)
    nlls = token_nlls(model, rows, pad_id=pad_id(tokenizer), batch_size=batch_size)
    # zlib of what was scored (the cut text), not of the whole record
    sizes = [zlib_bytes(tokenizer.decode(row, skip_special_tokens=True)) for row in rows]
    ref_losses = None
    if reference is not None:
        ref_model, ref_tok = reference
        ref_rows = tokenize(list(texts), ref_tok, max_len)
        ref_losses = [_mean(x) for x in token_nlls(ref_model, ref_rows, pad_id=pad_id(ref_tok), batch_size=batch_size)]
    return record_scores(nlls, sizes, ref_losses)


def group_means(scores: Sequence[float], keys: Sequence[Hashable]) -> list[float]:
    """One score per key (first-appearance order): the mean of that key's records' scores."""
    if len(scores) != len(keys):
        raise ValueError(f"group_means: {len(scores)} scores but {len(keys)} group keys")
    sums: dict[Hashable, list[float]] = {}
    for s, key in zip(scores, keys):
        sums.setdefault(key, []).append(float(s))
    return [_mean(v) for v in sums.values()]


def fast_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Exact ROC AUC from mid-ranks (ties count 1/2), vectorised for the bootstrap."""
    pooled = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first copy
    mid = starts + (counts + 1) / 2.0
    n, m = len(positive), len(negative)
    rank_sum = mid[inverse[:n]].sum()
    return float((rank_sum - n * (n + 1) / 2) / (n * m))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float) -> float:
    """Share of members flagged at the strictest threshold that flags at most fpr·m non-members."""
    allowed = math.floor(fpr * len(negative))
    ordered = np.sort(negative)[::-1]
    threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float(np.mean(positive > threshold))


def attack_metrics(
    positive: Sequence[float], negative: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """{"auc", "auc_ci_low", "auc_ci_high", "tpr_at_fpr": {"0.01": …}, "n_members", "n_non_members"}.

    The CI is a percentile bootstrap that resamples members and non-members apart (stratified), 95 %."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not len(pos) or not len(neg):
        raise ValueError(f"AUC needs both classes; got {len(pos)} members and {len(neg)} non-members")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("membership scores must be finite (a record scored no tokens)")
    rng = np.random.default_rng(seed)
    boot = [
        fast_auc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
        for _ in range(resamples)
    ]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "auc": round(fast_auc(pos, neg), 4),
        "auc_ci_low": round(float(lo), 4),
        "auc_ci_high": round(float(hi), 4),
        "tpr_at_fpr": {f"{f:g}": round(tpr_at_fpr(pos, neg, f), 4) for f in FPR_TARGETS},
        "n_members": len(pos),
        "n_non_members": len(neg),
    }


def audit(
    members: dict[str, list[float]],
    non_members: dict[str, list[float]],
    *,
    member_groups: Sequence[Hashable] | None = None,
    non_member_groups: Sequence[Hashable] | None = None,
    resamples: int = RESAMPLES,
) -> dict:
    """Metrics for every score, and the primary one (the first of SCORE_ORDER present) on top:
    {"score", "auc", "auc_ci_low", "auc_ci_high", "tpr_at_fpr", "unit", "scores": {name: metrics}}."""
    if (member_groups is None) != (non_member_groups is None):
        raise ValueError("audit: give group keys for both members and non-members, or for neither")
    unit = "record" if member_groups is None else "group"
    per: dict[str, dict] = {}
    for name in [s for s in SCORE_ORDER if s in members]:
        pos, neg = members[name], non_members[name]
        if member_groups is not None:
            pos, neg = group_means(pos, member_groups), group_means(neg, non_member_groups)
        per[name] = attack_metrics(pos, neg, resamples=resamples)
    primary = next(iter(per))
    top = {k: per[primary][k] for k in ("auc", "auc_ci_low", "auc_ci_high", "tpr_at_fpr")}
    return {"score": primary, **top, "unit": unit, "scores": per}


def sample_units(
    path: Path, n_units: int, seed: int, *, subject_entity: str | None = None, records_per_unit: int = 8
) -> tuple[list[str], list[str]]:
    """Texts of `n_units` random units of a split and, per text, its unit's key (for a per-unit MIA score).

    A unit is a record, or under `subject_entity` a subject with all its records (`audit_unit`); a subject
    with more than `records_per_unit` records gives a seeded sample of them, so a few prolific members do
    not dominate the scoring time. The keys stay in memory: pseudonyms and record ids, never raw values."""
    units: dict[str, list[str]] = {}
    for row in read_objects(Path(path), fields=("record_id", "text")):
        units.setdefault(audit_unit(row, subject_entity), []).append(str(row["text"]))
    rng = random.Random(seed)
    keys = sorted(units)
    rng.shuffle(keys)
    texts, groups = [], []
    for key in keys[:n_units]:
        chosen = units[key] if len(units[key]) <= records_per_unit else rng.sample(units[key], records_per_unit)
        texts += chosen
        groups += [key] * len(chosen)
    return texts, groups
