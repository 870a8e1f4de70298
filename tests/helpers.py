"""Small builders shared by tests: random (untrained) Llama and GPT-2 models + tokenizer, and masked-record files."""

from __future__ import annotations

import json
import os
from pathlib import Path


def cores_per_worker() -> int:
    """This test process's share of the cores: all of them alone, one each under two pytest-xdist workers.

    More torch (OpenMP) threads than free cores make every barrier spin: the e2e's demo base model, built on
    two threads while the other worker ran the backfill, took 14 min instead of about 3."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


SENTENCES = [
    "Question: What is the deductible for the Gold plan?\nAnswer: $500",
    "The annual deductible for the Silver plan is $1,500.",
    "Prior authorization is required for CPT 70551.",
    "Members have 60 days to file an appeal after a denial.",
    "Use Form HX-12 to file an out-of-network claim.",
]


def random_llama(out_dir: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """An untrained Llama with the project's tokenizer recipe: enough to exercise training code paths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.demo.base_model import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(SENTENCES * 4, vocab_size=300)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def random_gpt2(out_dir: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """An untrained GPT-2 (Conv1D projections, LayerNorm, learned positions, tied embeddings): the other family."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tasks.demo.base_model import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(SENTENCES * 4, vocab_size=300)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def masked_records(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {"record_id": f"R-{i}", "record_type": "plan_document", "text": SENTENCES[i % len(SENTENCES)]}
                )
                + "\n"
            )
    return path


def write_pipeline_config(path: Path, base_model: Path, overrides: dict[str, dict]) -> Path:
    """The committed include/config/pipeline.yaml, each section updated with `overrides`, pointing at
    `base_model` (the session's tiny model), written to `path` for a live Airflow's PFT_CONFIG."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "include" / "config" / "pipeline.yaml").read_text())
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    cfg["base_model"]["path"] = str(base_model)
    path.write_text(yaml.safe_dump(cfg))
    return path
