"""Build the demo base model: a small Llama-architecture causal LM with its own tokenizer.

No pretrained weights can be downloaded inside the customer's network, so the demo
and the tests build their own base model: a byte-level BPE tokenizer and a Llama
model trained briefly on the general corpus (QA format, no domain facts). It speaks
"Question: …\nAnswer: …" but does not know the health-plan domain, which is what
fine-tuning must teach. Deterministic for a seed, cached under PFT_HOME/models.

Real users set `base_model.path` to a local Hugging Face causal-LM directory instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.common import offline
from tasks.common.digest import update_from_file

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    steps: int
    batch: int
    lr: float


SIZES = {
    # ~1.3M parameters: big enough that the method comparisons mean something on 2 cores.
    "demo": ModelSize(
        hidden=128, layers=4, heads=4, kv_heads=4, intermediate=352, vocab=2048, steps=500, batch=32, lr=3e-3
    ),
    # ~0.3M parameters: builds in seconds for the tests.
    "tiny": ModelSize(
        hidden=64, layers=2, heads=4, kv_heads=4, intermediate=176, vocab=1024, steps=250, batch=32, lr=5e-3
    ),
}
MAX_POSITIONS = 256
SEQ_LEN = 128


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (no unknown bytes) with single-digit tokens, so amounts like $1,500 stay exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, **SPECIAL_TOKENS)


def model_dir_sha256(model_dir: Path) -> str:
    """sha256 over every file of a model directory (relative name and bytes, in 1 MiB blocks: weights are GBs).

    The evidence of a run names the base it was measured against by this digest; `base_model.allowed`
    pins directories by it. Links are read through (a Hugging Face cache snapshot links to its blobs)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no files to digest; is this a model directory?")
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        update_from_file(h, path)
    return h.hexdigest()


def model_dir_for(models_root: Path, size: str, corpus_path: Path, seed: int) -> Path:
    digest = hashlib.sha256(corpus_path.read_bytes() + json.dumps([asdict(SIZES[size]), seed]).encode()).hexdigest()[
        :10
    ]
    return models_root / f"base-{size}-{digest}"


def build_base_model(
    *, corpus_path: Path, models_root: Path, size: str = "demo", seed: int = 0, threads: int = 1
) -> dict:
    """Return the cached base model directory for this corpus/size/seed, building it if needed.

    `threads`: torch threads on CPU. One when builds share the cores (tests, the benchmark's side-by-side
    runs); `make demo` builds alone and passes two (measured: 0.42 s vs 0.22 s per step on 2 cores)."""
    offline.apply()
    out = model_dir_for(models_root, size, corpus_path, seed)
    if (out / "config.json").exists() and (out / "build.json").exists():
        return {"model_dir": str(out), "cached": True, **json.loads((out / "build.json").read_text())}

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = SIZES[size]
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    docs = [d.strip() for d in corpus_path.read_text().split("\n\n") if d.strip()]
    tokenizer = train_tokenizer(docs, spec.vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    encoded = [tokenizer(d + tokenizer.eos_token, truncation=True, max_length=SEQ_LEN)["input_ids"] for d in docs]

    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(s, spec.steps) / spec.steps))
    )
    rng = random.Random(seed)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(spec.steps):
        batch = rng.sample(encoded, spec.batch)
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(x)] = torch.tensor(x)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % 100 == 0 or step == spec.steps - 1:
            log.info("base model step %d/%d loss %.3f", step + 1, spec.steps, loss_value)

    info = {
        "size": size,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": spec.steps,
        "final_loss": round(loss_value, 4),
        "build_seconds": round(time.perf_counter() - start, 1),
        "corpus_docs": len(docs),
    }
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "build.json").write_text(json.dumps(info, indent=2))
    tmp.rename(out)  # a half-built model is never mistaken for a cached one
    return {"model_dir": str(out), "cached": False, **info}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description="Build (or reuse) the demo base model, or print a model's digest.")
    parser.add_argument(
        "--digest",
        type=Path,
        metavar="DIR",
        help="print the sha256 of a model directory (for base_model.sha256 / base_model.allowed) and exit",
    )
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--models-root", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads on CPU (default: up to 2)"
    )
    args = parser.parse_args()
    if args.digest:
        print(model_dir_sha256(args.digest))
        return
    if not (args.corpus and args.models_root):
        parser.error("--corpus and --models-root are required to build the demo model")
    print(
        json.dumps(
            build_base_model(
                corpus_path=args.corpus,
                models_root=args.models_root,
                size=args.size,
                seed=args.seed,
                threads=args.threads,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
