"""Training methods: which parameters train. lora | adapter (PEFT IA3) | prefix (PEFT prefix-tuning) |
freeze (the top N blocks, optionally LoRA inside them) | full.

Target shorthands resolve per model family (`resolve_targets`), the transformer blocks are found by
the model's own no-split class (`find_blocks`), a warm start copies a saved adapter of the same shape
(`load_init_adapter`), and the snapshots at the end (`trainable_state`, `frozen_checksums`,
`changed_share`) show that the method trained what it should and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

# Per model_type module names for the target shorthands (PEFT matches a name or a ".name" suffix).
_LLAMA_LIKE = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}
FAMILY_MODULES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": {"attention": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},  # Conv1D layers
}

# PEFT config fields that must match for a saved adapter's weights to mean the same thing in a new model.
ADAPTER_SHAPE_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "layers_to_transform",
    "num_virtual_tokens",
    "feedforward_modules",
)


def uses_targets(t: dict) -> bool:
    """The method attaches to named modules (train.target_modules): lora, adapter, freeze with LoRA."""
    return t["method"] in ("lora", "adapter") or (t["method"] == "freeze" and t["freeze_with_lora"])


def resolve_targets(target, model_type: str, method: str) -> list[str] | str:
    """`mlp` | `attention` | `all` per family, `all-linear` through PEFT (LoRA), or an explicit list."""
    if isinstance(target, list):
        return list(target)
    # PEFT expands "all-linear" itself, but not together with layers_to_transform (freeze + LoRA)
    if target == "all-linear" and method not in ("adapter", "freeze"):
        return target
    family = FAMILY_MODULES.get(model_type)
    if family is None:
        raise ValueError(
            f"train.target_modules: no default '{target}' modules for model_type '{model_type}' "
            f"(known: {sorted(FAMILY_MODULES)}); list the module names explicitly"
        )
    if target in ("all", "all-linear"):
        return family["attention"] + family["mlp"]
    return list(family[target])


def find_blocks(model):
    """The transformer blocks: the ModuleList whose entries are the model's no-split block class
    (`model.model.layers` in Llama/Mistral/Qwen, `transformer.h` in GPT-2), else the largest ModuleList."""
    import torch.nn as nn

    no_split = set(getattr(model, "_no_split_modules", None) or [])
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no transformer blocks (ModuleList) found")
    tagged = [(name, m) for name, m in lists if type(m[0]).__name__ in no_split]
    name, blocks = max(tagged or lists, key=lambda nm: (len(nm[1]), sum(p.numel() for p in nm[1].parameters())))
    return name, blocks


def check_targets(model, targets) -> None:
    """Every named target module exists in `model` (a PEFT shorthand string is PEFT's to expand)."""
    if isinstance(targets, str):
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        present = sorted({n.rsplit(".", 1)[-1] for n in names if n})
        raise ValueError(f"train.target_modules: {missing} not found in the model; it has e.g. {present[:16]}")


def apply_method(model, spec: dict, model_type: str | None = None):
    """Make only the method's parameters trainable (PEFT for lora/adapter/prefix/freeze+LoRA)."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, get_peft_model

    t = spec["train"]
    model_type = model_type or model.config.model_type
    method = t["method"]
    if method == "full":
        return model
    if method == "prefix":
        return get_peft_model(
            model, PrefixTuningConfig(num_virtual_tokens=t["num_virtual_tokens"], task_type="CAUSAL_LM")
        )
    targets = resolve_targets(t["target_modules"], model_type, method)
    check_targets(model, targets)
    if method == "adapter":
        mlp = set(FAMILY_MODULES.get(model_type, {}).get("mlp", []))
        # IA3 scales the input of feed-forward layers and the output of the others
        return get_peft_model(
            model,
            IA3Config(
                target_modules=targets, feedforward_modules=[m for m in targets if m in mlp], task_type="CAUSAL_LM"
            ),
        )
    lora = {
        "r": t["lora_r"],
        "lora_alpha": t["lora_alpha"],
        "lora_dropout": t["lora_dropout"],
        "target_modules": targets,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    if method == "lora":
        model = get_peft_model(model, LoraConfig(**lora))
        return model if t.get("lora_train_a", True) else freeze_lora_a(model)  # specs from before the option
    # freeze: only the top N blocks train; nothing below them needs a gradient, so backward stops there
    blocks_name, blocks = find_blocks(model)
    top = list(range(len(blocks) - t["trainable_layers"], len(blocks)))
    if t["freeze_with_lora"]:
        return get_peft_model(
            model, LoraConfig(**lora, layers_to_transform=top, layers_pattern=blocks_name.rsplit(".", 1)[-1])
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for i in top:
        for p in blocks[i].parameters():
            p.requires_grad_(True)
    return model


def freeze_lora_a(model):
    """FFA-LoRA (Sun et al., ICLR 2024): A keeps its seeded random projection and only B trains. Under DP
    the noise is spread over half the coordinates, and B alone is still a rank-r update; the seeded init
    makes A the same on every rank and on resume."""
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
    return model


def apply_peft(model, spec: dict):
    """Kept for callers that rebuild the seeded initial adapter (e2e test)."""
    return apply_method(model, spec)


def adapter_mismatch(model, adapter_dir: Path) -> list[str]:
    """Why the adapter in `adapter_dir` cannot initialise `model`'s adapter ([] when it can)."""
    if not hasattr(model, "peft_config"):
        return ["the training method has no PEFT adapter to initialise"]
    saved_path = Path(adapter_dir) / "adapter_config.json"
    if not saved_path.is_file():
        return [f"{saved_path} does not exist"]
    saved = json.loads(saved_path.read_text())
    current = model.peft_config["default"].to_dict()

    def norm(value):
        return sorted(value) if isinstance(value, (list, set, tuple)) else value

    return [
        f"{f}: adapter {norm(saved.get(f))!r} vs this run {norm(current.get(f))!r}"
        for f in ADAPTER_SHAPE_FIELDS
        if norm(saved.get(f)) != norm(current.get(f))
    ]


def load_init_adapter(model, adapter_dir: str | Path) -> dict:
    """Warm start: copy a saved adapter's weights (the champion's) into the fresh PEFT adapter.

    Refuses an adapter of another shape (rank, targets, method) instead of half-loading it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    problems = adapter_mismatch(model, adapter_dir)
    if problems:
        raise ValueError(f"warm start from {adapter_dir}: incompatible adapter ({'; '.join(problems)})")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(
            f"warm start from {adapter_dir}: {len(unexpected)} adapter tensors matched nothing in the "
            f"model (first: {unexpected[0]})"
        )
    return {"adapter_dir": str(adapter_dir), "tensors": len(weights)}


# ---------------------------------------------------------------- did the method train what it should, and only that


def trainable_state(model) -> dict:
    """A copy of the trainable tensors, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen_checksums(model) -> dict:
    """Cheap per-tensor fingerprints of the frozen weights (a full copy would double memory)."""
    import torch

    with torch.no_grad():
        return {
            n: (float(p.double().sum()), float(p.double().abs().sum()))
            for n, p in model.named_parameters()
            if not p.requires_grad
        }


def changed_share(before: dict, after: dict) -> float:
    """Share of trainable tensors whose values moved: catches the Opacus+PEFT no-update failure."""
    keys = [k for k in before if k in after]
    if not keys:
        return 0.0
    moved = sum(1 for k in keys if not bool((before[k] == after[k].to(before[k].device)).all()))
    return round(moved / len(keys), 4)


def frozen_moved(before: dict, after: dict) -> int:
    """How many frozen tensors' checksums differ between two `frozen_checksums` snapshots (should be 0)."""
    return sum(1 for k, v in before.items() if after.get(k) != v)
