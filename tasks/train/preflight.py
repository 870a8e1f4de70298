"""Preflight: every check that needs only the config, the model's config.json and the record count, so a
bad setting fails in seconds, before any weights are loaded or any compute is spent."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.train.deepspeed import deepspeed_preflight
from tasks.train.methods import check_targets, find_blocks, resolve_targets, uses_targets


def check_model_dir(model_dir: Path) -> dict:
    """A local HF causal-LM directory; returns its config.json. Named after the user-facing field."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"base_model.path: {model_dir} is not a Hugging Face model directory "
            f"(no config.json); point it at a local causal-LM directory"
        )
    cfg = json.loads(config_file.read_text())
    arch = cfg.get("architectures") or []
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
        raise ValueError(f"base_model.path: {model_dir} holds {arch or 'no architecture'}, not a causal LM")
    return cfg


def model_positions(model_cfg: dict) -> int | None:
    return model_cfg.get("max_position_embeddings") or model_cfg.get("n_positions")


def check_packed_length(t: dict, model_cfg: dict) -> None:
    """Under privacy_unit: subject a row packs up to subject_max_records records into `subject_max_tokens`
    (default: the model's positions). That budget must fit the model, and hold one whole record of
    max_seq_len, so a subject's single record is never cut shorter than a record-level run cuts it."""
    if t.get("privacy_unit") != "subject":
        return
    positions, cap = model_positions(model_cfg), t.get("subject_max_tokens")
    if cap and positions and cap > positions:
        raise ValueError(
            f"privacy.subject_max_tokens ({cap}) exceeds the model's {positions} positions; lower it, or leave it "
            "unset to pack up to the model's positions"
        )
    budget = cap or positions
    if budget and budget < t["max_seq_len"]:
        source = "privacy.subject_max_tokens" if cap else "the model's positions"
        raise ValueError(
            f"{source} ({budget}) is shorter than train.max_seq_len ({t['max_seq_len']}): a subject's packed "
            "example could not hold one whole record; raise privacy.subject_max_tokens or lower train.max_seq_len"
        )


def preflight(spec: dict, n_records: int) -> dict:
    """Model dir, DeepSpeed prerequisites, batch vs records, δ < 1/N, ghost clipping vs tied embeddings, and
    the method against the model skeleton, built on the meta device (no weights, no RNG): module names and
    blocks. Returns what the run needs from it: model_type, tied_embeddings, blocks, δ and positions."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t = spec["train"]
    model_cfg = check_model_dir(Path(spec["base_model_dir"]))
    if t.get("deepspeed"):
        deepspeed_preflight(t)
    if t["batch_size"] > n_records:  # n_records: the privacy units (records, or subjects + records without one)
        raise ValueError(f"train.batch_size ({t['batch_size']}) is larger than the dataset ({n_records} units)")
    delta = t["target_delta"] or 1.0 / (10 * n_records)
    if t["dp"] and delta >= 1.0 / n_records:
        raise ValueError(
            f"train.target_delta ({delta}) must be < 1/N = {1.0 / n_records:.2e} for N={n_records} records"
        )
    check_packed_length(t, model_cfg)
    model_type = model_cfg.get("model_type", "")
    tied = bool(model_cfg.get("tie_word_embeddings", model_type == "gpt2"))
    if t["dp"] and t["method"] == "full" and t["grad_sample_mode"] == "ghost" and tied:
        raise ValueError(
            "train.grad_sample_mode: 'ghost' cannot clip full fine-tuning of a model with tied input/output "
            "embeddings (Opacus: parameter tying is not supported with ghost clipping); use 'hooks' or 'auto'"
        )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["base_model_dir"]))
    _, blocks = find_blocks(skeleton)
    if t["method"] == "freeze" and t["trainable_layers"] > len(blocks):
        raise ValueError(f"train.trainable_layers ({t['trainable_layers']}) exceeds the model's {len(blocks)} blocks")
    if uses_targets(t):
        check_targets(skeleton, resolve_targets(t["target_modules"], model_type, t["method"]))
    return {
        "model_type": model_type,
        "tied_embeddings": tied,
        "blocks": len(blocks),
        "delta": delta,
        "positions": model_positions(model_cfg),
    }
