"""Training recipe: parameter-efficient fine-tuning under differential privacy.

Launched as `torchrun --standalone --nproc_per_node=N -m tasks.train.recipe --spec SPEC.json`, so
the same entrypoint runs on a laptop, a Celery GPU worker or a Kubernetes pod. It only
reads the masked, versioned dataset (clean zone).

preflight (config, model dir, data; no compute) → model + method (lora | adapter | prefix |
freeze | full) → (DP) make_private → resume from the last checkpoint, if any → train loop,
capped at the last step within target ε, checkpointing every `checkpoint_every` steps → save
adapter (or full weights) + train_result.json + loss/ε plots → delete the checkpoints

Distributed (WORLD_SIZE > 1; gloo on CPU, NCCL on GPU): under DP the PEFT model is wrapped in
Opacus DPDDP before make_private, which then samples Poisson batches per rank (expected local
batch = batch_size / world, rank-specific generator), clips on every rank, adds the noise once
(rank 0) and all-reduces; without DP plain DDP with a DistributedSampler. Rank 0 alone logs
progress, talks to MLflow and saves. `torchrun_args` builds the launch command (one node:
--standalone; several: c10d rendezvous from config). DeepSpeed ZeRO: non-private, CUDA only.

Reads like a torchtune recipe on purpose: one file, every knob from the spec (the
resolved pipeline config plus paths), no class hierarchy.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import random
import time
import warnings
from pathlib import Path

from tasks.common import offline
from tasks.common.jsonl import read_objects
from tasks.config import REPO_ROOT
from tasks.common.tokens import tokenize

log = logging.getLogger("tasks.train.recipe")


# ---------------------------------------------------------------- setup helpers

def load_texts(path: Path) -> list[str]:
    texts = [row["text"] for row in read_objects(path, fields=("text",), hint="; re-run the version stage")]
    if not texts:
        raise ValueError(f"{path}: the training set is empty")
    return texts


class TokenDataset:
    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        return torch.tensor(self.rows[i], dtype=torch.long)


def make_collate(pad_id: int, max_len: int):
    """Right-pad to the longest row; labels are -100 on padding. Poisson batches may be empty."""
    import torch

    def collate(rows):
        width = max([len(r) for r in rows], default=1)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            labels[i, : len(r)] = r
        return ids, labels

    return collate


def per_sample_mean_loss(logits, labels):
    """Token-mean loss per example, then mean over the batch: each record weighs the same."""
    import torch.nn.functional as F

    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    token_loss = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
    mask = (shift_labels != -100).float()
    return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


# Per model_type module names for the target shorthands (PEFT matches a name or a ".name" suffix).
_LLAMA_LIKE = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}
FAMILY_MODULES = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gpt2": {"attention": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},  # Conv1D layers
}


def resolve_targets(target, model_type: str, method: str) -> list[str] | str:
    """`mlp` | `attention` | `all` per family, `all-linear` through PEFT (LoRA), or an explicit list."""
    if isinstance(target, list):
        return list(target)
    # PEFT expands "all-linear" itself, but not together with layers_to_transform (freeze + LoRA)
    if target == "all-linear" and method not in ("adapter", "freeze"):
        return target
    family = FAMILY_MODULES.get(model_type)
    if family is None:
        raise ValueError(f"train.target_modules: no default '{target}' modules for model_type '{model_type}' "
                         f"(known: {sorted(FAMILY_MODULES)}); list the module names explicitly")
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


def _check_targets(model, targets) -> None:
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
        return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=t["num_virtual_tokens"], task_type="CAUSAL_LM"))
    targets = resolve_targets(t["target_modules"], model_type, method)
    _check_targets(model, targets)
    if method == "adapter":
        mlp = set(FAMILY_MODULES.get(model_type, {}).get("mlp", []))
        # IA3 scales the input of feed-forward layers and the output of the others
        return get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=[m for m in targets if m in mlp],
                                               task_type="CAUSAL_LM"))
    lora = dict(r=t["lora_r"], lora_alpha=t["lora_alpha"], lora_dropout=t["lora_dropout"], target_modules=targets,
                bias="none", task_type="CAUSAL_LM")
    if method == "lora":
        return get_peft_model(model, LoraConfig(**lora))
    # freeze: only the top N blocks train; nothing below them needs a gradient, so backward stops there
    blocks_name, blocks = find_blocks(model)
    top = list(range(len(blocks) - t["trainable_layers"], len(blocks)))
    if t["freeze_with_lora"]:
        return get_peft_model(model, LoraConfig(**lora, layers_to_transform=top,
                                                layers_pattern=blocks_name.rsplit(".", 1)[-1]))
    for p in model.parameters():
        p.requires_grad_(False)
    for i in top:
        for p in blocks[i].parameters():
            p.requires_grad_(True)
    return model


# PEFT config fields that must match for a saved adapter's weights to mean the same thing in a new model.
ADAPTER_SHAPE_FIELDS = ("peft_type", "r", "lora_alpha", "target_modules", "layers_to_transform", "num_virtual_tokens",
                        "feedforward_modules")


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

    return [f"{f}: adapter {norm(saved.get(f))!r} vs this run {norm(current.get(f))!r}"
            for f in ADAPTER_SHAPE_FIELDS if norm(saved.get(f)) != norm(current.get(f))]


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
        raise ValueError(f"warm start from {adapter_dir}: {len(unexpected)} adapter tensors matched nothing in the "
                         f"model (first: {unexpected[0]})")
    return {"adapter_dir": str(adapter_dir), "tensors": len(weights)}


def apply_peft(model, spec: dict):
    """Kept for callers that rebuild the seeded initial adapter (e2e test)."""
    return apply_method(model, spec)


# ---------------------------------------------------------------- preflight: no compute before this passes

def check_model_dir(model_dir: Path) -> dict:
    """A local HF causal-LM directory; returns its config.json. Named after the user-facing field."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"base_model.path: {model_dir} is not a Hugging Face model directory "
                                f"(no config.json); point it at a local causal-LM directory")
    cfg = json.loads(config_file.read_text())
    arch = cfg.get("architectures") or []
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in arch):
        raise ValueError(f"base_model.path: {model_dir} holds {arch or 'no architecture'}, not a causal LM")
    return cfg


def preflight(spec: dict, n_records: int) -> dict:
    """Every check that needs only the config, the model's config.json and the record count; builds
    the model skeleton on the meta device (no weights, no RNG) to check module names and blocks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t = spec["train"]
    model_cfg = check_model_dir(Path(spec["base_model_dir"]))
    if t.get("deepspeed"):
        deepspeed_preflight(t)
    if t["batch_size"] > n_records:
        raise ValueError(f"train.batch_size ({t['batch_size']}) is larger than the dataset ({n_records} records)")
    delta = t["target_delta"] or 1.0 / (10 * n_records)
    if t["dp"] and delta >= 1.0 / n_records:
        raise ValueError(f"train.target_delta ({delta}) must be < 1/N = {1.0 / n_records:.2e} for N={n_records} records")
    model_type = model_cfg.get("model_type", "")
    tied = bool(model_cfg.get("tie_word_embeddings", model_type == "gpt2"))
    if t["dp"] and t["method"] == "full" and t["grad_sample_mode"] == "ghost" and tied:
        raise ValueError("train.grad_sample_mode: 'ghost' cannot clip full fine-tuning of a model with tied input/output "
                         "embeddings (Opacus: parameter tying is not supported with ghost clipping); use 'hooks' or 'auto'")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["base_model_dir"]))
    _, blocks = find_blocks(skeleton)
    if t["method"] == "freeze" and t["trainable_layers"] > len(blocks):
        raise ValueError(f"train.trainable_layers ({t['trainable_layers']}) exceeds the model's {len(blocks)} blocks")
    if t["method"] in ("lora", "adapter") or (t["method"] == "freeze" and t["freeze_with_lora"]):
        _check_targets(skeleton, resolve_targets(t["target_modules"], model_type, t["method"]))
    return {"model_type": model_type, "tied_embeddings": tied, "blocks": len(blocks), "delta": delta}


def make_optimizer(params: list, t: dict):
    """AdamW (default) or SGD with momentum. Under DP-SGD the noise is isotropic: SGD keeps it so, while
    Adam rescales every coordinate, noise included, which can favour either depending on the signal."""
    import torch

    name = t.get("optimizer", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t["learning_rate"], weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=t["learning_rate"], momentum=0.9)
    raise ValueError(f"train.optimizer: '{name}' is not one of 'adamw', 'sgd'")


def frozen_checksums(model) -> dict:
    """Cheap per-tensor fingerprints of the frozen weights (a full copy would double memory)."""
    import torch

    with torch.no_grad():
        return {n: (float(p.double().sum()), float(p.double().abs().sum()))
                for n, p in model.named_parameters() if not p.requires_grad}


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@functools.lru_cache(maxsize=32)
def noise_for_target(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> tuple[float, str]:
    """Noise multiplier from the PRV accountant (tightest); RDP when PRV cannot compute — it raises, or
    gives a non-finite ε, for some tiny-noise / many-step settings. Returns (noise, accountant name).
    Cached: the search is the slowest part of a small run's setup and is deterministic."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        noise = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant="prv")
        if not math.isfinite(epsilon_after(steps, noise=noise, sample_rate=sample_rate, delta=delta, accountant="prv")):
            raise ArithmeticError("PRV epsilon is not finite")
        return noise, "prv"
    except Exception as exc:  # noqa: BLE001 — any PRV numerical failure; RDP is a valid (looser) bound
        log.warning("PRV accountant could not compute (%s: %s); falling back to RDP", type(exc).__name__, exc)
        return get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                    steps=steps, accountant="rdp"), "rdp"


@functools.lru_cache(maxsize=256)
def epsilon_after(steps: int, *, noise: float, sample_rate: float, delta: float, accountant: str) -> float:
    """ε after `steps` Poisson-sampled steps, from a fresh accountant of the engine's kind."""
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(noise, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def max_steps_within(target_epsilon: float, upper: int, **mech) -> int:
    """Largest step count ≤ `upper` whose ε ≤ target (ε grows with steps: binary search)."""
    if epsilon_after(upper, **mech) <= target_epsilon:
        return upper
    lo, hi = 0, upper  # ε(lo) ≤ target < ε(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if epsilon_after(mid, **mech) <= target_epsilon else (lo, mid)
    return lo


def planned_steps_for(t: dict, n: int) -> int:
    return max(1, round(t["epochs"] * max(1, math.ceil(n / t["batch_size"]))))


def dp_mechanism(t: dict, n: int) -> dict:
    """The DP-SGD mechanism a run on `n` records will use: δ, sample rate, noise (PRV, RDP fallback), steps
    capped at the last one within the target ε, and the ε those steps spend. The recipe runs with it and the
    pipeline charges the privacy ledger with it, so the two can never disagree."""
    delta = t["target_delta"] or 1.0 / (10 * n)
    planned = planned_steps_for(t, n)
    sample_rate = t["batch_size"] / n
    noise, accountant = noise_for_target(target_epsilon=t["target_epsilon"], delta=delta,
                                         sample_rate=sample_rate, steps=planned)
    mech = {"noise": noise, "sample_rate": sample_rate, "delta": delta, "accountant": accountant}
    steps = max_steps_within(t["target_epsilon"], planned, **mech)
    return {**mech, "planned_steps": planned, "steps": steps, "epsilon": epsilon_after(steps, **mech)}


DP_INPUTS = ("target_epsilon", "target_delta", "batch_size", "epochs")


def planned_mechanism(spec: dict, n: int) -> dict:
    """The mechanism the pipeline computed (and charged to the ledger) for this spec, when it still
    applies: same records and DP inputs. Saves the noise search a second time inside torchrun."""
    pre = spec.get("dp_mechanism") or {}
    t = spec["train"]
    if pre.get("records") == n and pre.get("inputs") == {k: t.get(k) for k in DP_INPUTS}:
        return pre["mechanism"]
    return dp_mechanism(t, n)


def ghost_supported(model) -> bool:
    """Ghost clipping computes norms without per-sample gradients only for layers with a norm sampler."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as GSM

    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    return bool(trainable) and all(type(m) in GSM.NORM_SAMPLERS for m in trainable)


def resolve_grad_sample_mode(t: dict, model, device, tied: bool) -> str:
    """`auto`: per-sample hooks on CPU, where ghost's second backward pass costs more than it saves
    (measured on the 2-core CI box, 8-layer hidden-64 Llama, LoRA r4 on MLP, batch 16×48 tokens:
    hooks 1.34x a non-private step, ghost 2.42x, functorch 2.38x); ghost on CUDA when every
    trainable layer has a norm sampler (LoRA's nn.Linear does; prefix and tied full FT don't)."""
    mode = t["grad_sample_mode"]
    if mode != "auto":
        return mode
    if device.type != "cuda" or t["method"] == "prefix" or (t["method"] == "full" and tied):
        return "hooks"
    return "ghost" if ghost_supported(model) else "hooks"


class _OomHint:
    """Turn an out-of-memory error into one that says which knob to turn."""

    def __init__(self, t: dict):
        self.t = t

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        text = str(exc).lower()
        oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
        if oom:
            pb = self.t["physical_batch_size"]
            raise MemoryError(f"training ran out of memory at train.physical_batch_size={pb} "
                              f"(max_seq_len {self.t['max_seq_len']}); set a smaller train.physical_batch_size "
                              f"(e.g. {max(1, pb // 2)}): under DP the logical batch_size stays the same") from exc
        return False


def save_plots(history: list[dict], out_dir: Path, dp: bool) -> list[Path]:
    """Loss and ε curves as PNGs (matplotlib Agg); skipped with a log line when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed; no training plots")
        return []
    steps = [h["step"] for h in history]
    curves = [("loss", "training loss")] + ([("epsilon", "privacy spent ε")] if dp else [])
    paths = []
    for key, title in curves:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(steps, [h[key] for h in history], marker="." if len(steps) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{key}_curve.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def init_distributed() -> tuple[int, int, int]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: NCCL across GPUs, gloo on CPU. Returns (rank, world, local rank)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before NCCL init: each process owns one GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local_rank


def torchrun_args(train_cfg: dict, *, spec_path: Path | str, run_id: str | None = None) -> list[str]:
    """The full launch command of the recipe. One node: `--standalone`. Several: every node runs this same
    command and they meet at the c10d rendezvous `rdzv_endpoint` under one `rdzv_id` (default: the run id,
    so two pipeline runs never join each other's job). No restarts inside torchrun: an Airflow retry
    relaunches the task, which resumes from the last checkpoint."""
    import re
    import sys

    nnodes, nproc = int(train_cfg.get("nnodes", 1)), int(train_cfg.get("nproc_per_node", 1))
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if train_cfg.get("rdzv_endpoint"):
        rdzv_id = train_cfg.get("rdzv_id") or re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id or "").strip("_.") or "privatetune"
        cmd += [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--rdzv_backend={train_cfg.get('rdzv_backend', 'c10d')}",
                f"--rdzv_endpoint={train_cfg['rdzv_endpoint']}", f"--rdzv_id={rdzv_id}"]
    else:
        if nnodes > 1:
            raise ValueError(f"train.rdzv_endpoint: required when train.nnodes={nnodes} > 1")
        cmd += ["--standalone", f"--nproc_per_node={nproc}"]
    return cmd + ["--max_restarts=0", "-m", "tasks.train.recipe", "--spec", str(spec_path)]


@functools.lru_cache(maxsize=1)
def _keep_empty_sampler_class():
    from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler

    class KeepEmptyDistributedSampler(DistributedUniformWithReplacementSampler):
        """Opacus' distributed Poisson sampler, except that a draw that selects nothing on this rank is
        yielded (empty) instead of skipped. Skipping desynchronises the ranks: one rank's k-th step pairs
        with another's (k+1)-th draw in the gradient all-reduce, and a local batch conditioned on being
        non-empty is no longer Poisson. The recipe turns an empty draw into a zero-gradient step."""

        def __iter__(self):
            import torch

            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self.shuffle_seed + self.epoch)
                indices = torch.randperm(self.total_size, generator=g)
            else:
                indices = torch.arange(self.total_size)
            indices = indices[self.rank: self.total_size: self.num_replicas]
            for _ in range(self.num_batches):
                mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
                yield indices[mask.nonzero(as_tuple=False).reshape(-1)]

    return KeepEmptyDistributedSampler


def weights_digest(model) -> str:
    """sha256 over the trainable tensors (name, dtype, bytes): equal digests = bit-identical weights."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        h.update(name.encode() + str(p.dtype).encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unwrapped(model):
    """The PEFT/HF model under Opacus' GradSampleModule and (DP)DDP."""
    import torch

    inner = model._module if hasattr(model, "_module") else model
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel) or \
            type(inner).__name__ == "DifferentiallyPrivateDistributedDataParallel":
        inner = inner.module
    return inner


# ---------------------------------------------------------------- the recipe

def train(spec: dict) -> dict:
    offline.apply()
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.train.checkpoint import Checkpointer, spec_fingerprint

    t = spec["train"]
    out_dir = Path(spec["out_dir"])
    # -- preflight: model dir, data file, batch, δ, targets, method × DP; nothing is computed before it passes
    texts = load_texts(Path(spec["data_path"]))
    info = preflight(spec, len(texts))
    delta = info["delta"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(t["cpu_threads"])
    rank, world, local_rank = init_distributed()
    random.seed(t["seed"] + rank)
    torch.manual_seed(t["seed"])  # same seed on every rank: identical initial weights (DDP broadcasts rank 0's anyway)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")

    # -- model: to its device before PEFT and Opacus wrap it (Opacus+PEFT silent-failure guard)
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["base_model_dir"], dtype=torch.float32).to(device)
    model = apply_method(model, spec, info["model_type"])
    warm_start = load_init_adapter(model, spec.get("init_adapter_dir")) if spec.get("init_adapter_dir") else None
    model.config.use_cache = False
    model.train()  # Opacus refuses modules in eval mode (from_pretrained returns eval)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if rank == 0:
        log.info("method %s: %d of %d parameters trainable (%.3f%%); world size %d", t["method"], trainable, total,
                 100 * trainable / total, world)
    initial = trainable_state(model)
    frozen_before = frozen_checksums(model)
    if t.get("deepspeed"):
        return _train_deepspeed(spec, model=model, tokenizer=tokenizer, texts=texts, info=info, rank=rank,
                                world=world, device=device, trainable=trainable, total=total)
    if world > 1:
        # DPDDP (DP) / DDP: wrapped after PEFT and before make_private, which sees the wrapper and switches to
        # distributed Poisson sampling (local batch ~ batch_size/world) and the DistributedDPOptimizer.
        if t["dp"]:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

            model = DPDDP(model)
        else:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        torch.manual_seed(t["seed"] + rank)  # from here on (dropout), ranks draw independently

    # -- data
    rows = tokenize(texts, tokenizer, t["max_seq_len"])
    n = len(rows)
    dataset = TokenDataset(rows)
    collate = make_collate(tokenizer.pad_token_id, t["max_seq_len"])
    # the generator draws the Poisson masks under DP: one stream per rank (rank 0's = the single-process one)
    generator = torch.Generator().manual_seed(t["seed"] + rank)
    if world > 1 and not t["dp"]:
        from torch.utils.data import DistributedSampler

        loader = DataLoader(dataset, batch_size=t["batch_size"] // world, collate_fn=collate, generator=generator,
                            sampler=DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=t["seed"]))
    else:  # under DP this loader only conveys the global sample rate (batch_size / N) to make_private
        loader = DataLoader(dataset, batch_size=t["batch_size"], shuffle=True, collate_fn=collate, generator=generator)
    planned_steps = total_steps = planned_steps_for(t, n)

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    privacy_engine, noise, accountant, mode, criterion = None, 0.0, None, None, None
    if t["dp"]:
        from opacus import PrivacyEngine

        sample_rate = t["batch_size"] / n
        if rank == 0:  # the run stops before exceeding its target: steps capped at the last one within ε
            mech = planned_mechanism(spec, n)
            noise, accountant, total_steps = mech["noise"], mech["accountant"], mech["steps"]
        if world > 1:  # the search costs seconds of CPU: rank 0 runs it, every rank uses its exact result
            box = [noise, accountant, total_steps]
            dist.broadcast_object_list(box, src=0)
            noise, accountant, total_steps = box
        if total_steps < planned_steps and rank == 0:
            log.warning("capping training at %d of %d steps: more would exceed ε=%s", total_steps, planned_steps,
                        t["target_epsilon"])
        mode = resolve_grad_sample_mode(t, model, device, info["tied_embeddings"])
        if rank == 0:
            log.info("DP-SGD: accountant %s, noise %.4f, sample rate %.4f, clipping mode %s", accountant, noise,
                     sample_rate, mode)
        with warnings.catch_warnings():
            if t.get("secure_noise", True):  # Opacus' own secure_mode needs torchcsprng; ours is tasks.train.noise
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
            privacy_engine = PrivacyEngine(accountant=accountant, secure_mode=False)
        private = privacy_engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=t["max_grad_norm"], poisson_sampling=True, grad_sample_mode=mode,
            criterion=torch.nn.CrossEntropyLoss(ignore_index=-100))
        if mode == "ghost":  # the wrapped criterion runs both backward passes of ghost clipping
            model, optimizer, criterion, loader = private
        else:
            model, optimizer, loader = private
        if world > 1:
            loader.batch_sampler.__class__ = _keep_empty_sampler_class()
        if t.get("secure_noise", True):  # production: noise and sampling nobody can regenerate from the seed
            from tasks.train.noise import use_csprng

            use_csprng(optimizer, loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / total_steps)))

    # -- resume: after everything that draws random numbers at setup (restore resets the RNGs)
    ckpt = Checkpointer(out_dir / "checkpoints", fingerprint=spec_fingerprint(spec, world=world),
                        every=t.get("checkpoint_every", 0), keep=t.get("checkpoint_keep", 2), rank=rank, world=world)
    step, history, tokens, elapsed_before, resumed_from = 0, [], 0, 0.0, None
    epsilon = 0.0
    state = ckpt.load_latest()
    if state is not None:
        extra = ckpt.restore(state, model=model, optimizer=optimizer, scheduler=scheduler, data_loader=loader,
                             privacy_engine=privacy_engine)
        step, history, tokens, elapsed_before = state.step, extra["history"], extra["tokens"], extra["elapsed"]
        resumed_from = step
        epsilon = history[-1]["epsilon"] if history else 0.0
        if rank == 0:
            log.info("resuming from step %d of %d (%s)", step, total_steps, state.path)

    mlflow_run = _mlflow_start(spec) if rank == 0 else None
    if mlflow_run:
        _mlflow_log_params(spec, n=n, delta=delta, noise=noise, trainable=trainable, total=total,
                           accountant=accountant, mode=mode, model_type=info["model_type"])

    # -- train loop
    # GPT-2's learned position embedding sees position_ids of batch 1 unless expanded: per-sample grads need the batch
    expand_positions = t["dp"] and t["method"] == "full"
    start = time.perf_counter()
    step_samples = step_tokens = 0  # this rank's records and tokens in the current logical step
    with _OomHint(t):
        while step < total_steps:
            ckpt.begin_epoch(loader, step)  # before the loader is iterated (sampler position, set_epoch)
            batches = _physical_batches(loader, optimizer, t, privacy_engine)
            with batches as it:
                for ids, labels in ckpt.batches(it):
                    if step >= total_steps:
                        break
                    ids, labels = ids.to(device), labels.to(device)
                    rows_here = ids.shape[0]
                    attention = (labels != -100).long()
                    if rows_here == 0:
                        # An empty Poisson draw still is a step (noise, accountant, the ranks' all-reduce): one
                        # fully ignored row gives every parameter an exactly-zero per-sample gradient.
                        ids = torch.full((1, 2), tokenizer.pad_token_id, dtype=torch.long, device=device)
                        labels, attention = torch.full_like(ids, -100), torch.ones_like(ids)
                    kwargs = {"input_ids": ids, "attention_mask": attention}
                    if expand_positions:
                        kwargs["position_ids"] = torch.arange(ids.shape[1], device=device).expand(ids.shape[0], -1)
                    logits = model(**kwargs).logits
                    loss = per_sample_mean_loss(logits, labels) if criterion is None else ghost_loss(criterion, logits, labels)
                    loss.backward()
                    loss_value = loss.item() if rows_here else float("nan")
                    step_samples += rows_here
                    step_tokens += int((labels != -100).sum())
                    optimizer.step()
                    skipped = getattr(optimizer, "_is_last_step_skipped", False)
                    optimizer.zero_grad(set_to_none=True)
                    if skipped:
                        continue  # a physical sub-batch of a larger logical batch: no update yet
                    scheduler.step()
                    step += 1
                    if world > 1:  # global records and tokens of this logical step
                        counts = torch.tensor([step_samples, step_tokens], dtype=torch.long, device=device)
                        dist.all_reduce(counts)
                        step_samples, step_tokens = (int(c) for c in counts.tolist())
                    tokens += step_tokens
                    if privacy_engine is not None and rank == 0:  # every rank's accountant is the same; rank 0 reports
                        epsilon = privacy_engine.get_epsilon(delta)
                        if epsilon > t["target_epsilon"]:  # unreachable with the cap above; never release such a model
                            raise RuntimeError(f"privacy guard: ε={epsilon:.4f} after step {step} exceeds "
                                               f"train.target_epsilon={t['target_epsilon']}; the run is stopped unsaved")
                    history.append({"step": step, "loss": loss_value, "epsilon": epsilon, "samples": step_samples})
                    step_samples = step_tokens = 0
                    elapsed = elapsed_before + time.perf_counter() - start
                    rate = tokens / max(elapsed, 1e-9)
                    if rank == 0 and mlflow_run:  # every step to MLflow; the task log gets a line every ~5 %
                        import mlflow

                        mlflow.log_metrics({"loss": loss_value, "epsilon": epsilon, "tokens_per_s": rate,
                                            "lr": scheduler.get_last_lr()[0]}, step=step)
                    if rank == 0 and (step % max(1, total_steps // 20) == 0 or step == total_steps):
                        log.info("step %d/%d loss %.4f lr %.2e epsilon %.3f tokens/s %.0f",
                                 step, total_steps, loss_value, scheduler.get_last_lr()[0], epsilon, rate)
                    ckpt.maybe_save(step, model=model, optimizer=optimizer, scheduler=scheduler, data_loader=loader,
                                    privacy_engine=privacy_engine,
                                    extra={"history": history, "tokens": tokens, "elapsed": elapsed})

    elapsed = elapsed_before + time.perf_counter() - start
    inner = _unwrapped(model)
    changed = _changed_share(initial, trainable_state(inner))
    frozen_after = frozen_checksums(inner)
    frozen_moved = sum(1 for k, v in frozen_before.items() if frozen_after.get(k) != v)
    is_peft = hasattr(inner, "peft_config")
    digests = None
    if world > 1:  # every rank must hold the same weights; rank 0's are the ones saved
        digests = [None] * world
        dist.all_gather_object(digests, weights_digest(inner))
        if len(set(digests)) != 1:
            log.error("ranks hold different trainable weights after training (digests %s)", digests)
    result = {
        "method": t["method"], "dp": t["dp"], "privacy": privacy_marker(t, epsilon, delta),
        "noise_source": noise_source(t),
        "epsilon": round(epsilon, 4) if t["dp"] else None,
        "target_epsilon": t["target_epsilon"] if t["dp"] else None, "delta": delta if t["dp"] else None,
        "noise_multiplier": round(noise, 4), "max_grad_norm": t["max_grad_norm"],
        "accountant": accountant, "grad_sample_mode": mode,
        "steps": step, "planned_steps": planned_steps, "epochs": t["epochs"], "records": n, "batch_size": t["batch_size"],
        "model_type": info["model_type"],
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 3),
        "trainable_tensors_changed": changed, "frozen_tensors_changed": frozen_moved, "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(elapsed, 1), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "world_size": world, "resumed_from_step": resumed_from,
        "rank_weight_digests": digests, "ranks_in_sync": None if digests is None else len(set(digests)) == 1,
        # PEFT methods save an adapter; freeze (without LoRA) and full save the whole model
        "adapter_dir": str(out_dir / "adapter") if is_peft else None,
        "model_dir": None if is_peft else str(out_dir / "model"),
        "mlflow_run_id": mlflow_run.info.run_id if mlflow_run else None,
        "warm_start": warm_start,
    }
    if rank == 0:
        _save_outputs(inner, tokenizer, is_peft, out_dir, history, result, t, mlflow_run, epsilon, trainable)
        # Checkpoints exist to finish an unfinished run. The saved adapter/model supersedes them, and for full
        # fine-tuning each one is ~3x the model (weights + optimizer moments): removed once the result is written.
        ckpt_dir = out_dir / "checkpoints"
        if ckpt_dir.exists():
            import shutil

            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


def _save_outputs(inner, tokenizer, is_peft: bool, out_dir: Path, history: list, result: dict, t: dict,
                  mlflow_run, epsilon: float, trainable: int, state_dict=None) -> None:
    if is_peft:
        inner.save_pretrained(out_dir / "adapter", **({"state_dict": state_dict} if state_dict is not None else {}))
    else:
        inner.save_pretrained(out_dir / "model", **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(out_dir / "model")
    (out_dir / "train_history.json").write_text(json.dumps(history))
    (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    plots = save_plots(history, out_dir, t["dp"])
    if mlflow_run:
        import mlflow

        mlflow.log_metrics({"final_epsilon": epsilon, "trainable_pct": result["trainable_pct"],
                            "trainable_params": trainable})
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="training")
        mlflow.end_run()


# ---------------------------------------------------------------- DeepSpeed (non-private, CUDA only)
# UNTESTED HERE: the CI machine has no GPU and no deepspeed package. Only the refusals (dp: true, no CUDA,
# no package, bad config file) are tested; this path is written against the DeepSpeed 0.19 engine API.

def deepspeed_config(t: dict, *, world: int, config_path: Path | str, bf16_supported: bool) -> dict:
    """The ZeRO config with its "auto" values filled from the train config: micro batch = physical batch,
    accumulation = batch / (physical × world), bf16 when the GPU supports it."""
    path = Path(config_path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"train.deepspeed: {path} does not exist (ZeRO configs: include/deepspeed/zero2.json, zero3.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"train.deepspeed: {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    micro, accum = t["physical_batch_size"], t["batch_size"] // (t["physical_batch_size"] * world)
    if accum < 1 or micro * accum * world != t["batch_size"]:
        raise ValueError(f"train.batch_size ({t['batch_size']}) must be a multiple of physical_batch_size × world "
                         f"({micro} × {world}) under DeepSpeed")
    fill = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum}
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    cfg["train_batch_size"] = cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * world
    if cfg.get("gradient_clipping") == "auto":
        cfg["gradient_clipping"] = t["max_grad_norm"]
    bf16 = cfg.setdefault("bf16", {"enabled": "auto"})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = bool(bf16_supported)
    return cfg


def deepspeed_preflight(t: dict) -> None:
    """Refuse before any compute: DeepSpeed needs CUDA GPUs and the optional package (requirements-gpu.txt)."""
    import importlib.util

    import torch

    if t.get("dp"):  # also refused by the config validator; a hand-written spec may bypass it
        raise ValueError("train.deepspeed: cannot be combined with dp: true (DeepSpeed bypasses Opacus's per-sample "
                         "clipping); leave deepspeed: null for private multi-GPU training (Opacus DPDDP)")
    if not torch.cuda.is_available():
        raise RuntimeError("train.deepspeed: needs CUDA GPUs and this machine has none; set deepspeed: null "
                           "(torchrun DDP runs on CPU) or run the training task on a GPU worker")
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError("train.deepspeed: the deepspeed package is not installed; pip install -r requirements-gpu.txt "
                           "on the GPU workers, or set deepspeed: null")


def _train_deepspeed(spec: dict, *, model, tokenizer, texts, info, rank: int, world: int, device, trainable: int,
                     total: int) -> dict:
    """Non-private ZeRO-2/3 training. UNTESTED HERE (no GPU): see the section comment."""
    import deepspeed  # noqa: F401 — optional GPU extra
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    t = spec["train"]
    out_dir = Path(spec["out_dir"])
    cfg = deepspeed_config(t, world=world, config_path=t["deepspeed"], bf16_supported=torch.cuda.is_bf16_supported())
    rows = tokenize(texts, tokenizer, t["max_seq_len"])
    dataset = TokenDataset(rows)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=t["seed"]) if world > 1 else None
    loader = DataLoader(dataset, batch_size=cfg["train_micro_batch_size_per_gpu"], sampler=sampler, shuffle=sampler is None,
                        collate_fn=make_collate(tokenizer.pad_token_id, t["max_seq_len"]),
                        generator=torch.Generator().manual_seed(t["seed"]), drop_last=True)
    micro_per_step = cfg["gradient_accumulation_steps"]
    steps_per_epoch = max(1, len(loader) // micro_per_step)
    total_steps = max(1, round(t["epochs"] * max(1, math.ceil(len(rows) / t["batch_size"]))))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=cfg)
    ckpt_dir = out_dir / "checkpoints" / "deepspeed"  # ZeRO shards optimizer state per rank: DeepSpeed's own format
    step, history, tokens, resumed_from = 0, [], 0, None
    if t.get("checkpoint_every", 0) and (ckpt_dir / "latest").is_file():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        if client:
            step, history, tokens, resumed_from = client["step"], client["history"], client["tokens"], client["step"]
            log.info("resuming from step %d (%s)", step, ckpt_dir)
    start, epoch = time.perf_counter(), step // steps_per_epoch
    while step < total_steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * micro_per_step  # micro-batches a resumed epoch already used
        for i, (ids, labels) in enumerate(loader):
            if i < skip:
                continue
            if step >= total_steps:
                break
            ids, labels = ids.to(device), labels.to(device)
            loss = per_sample_mean_loss(engine(input_ids=ids, attention_mask=(labels != -100).long()).logits, labels)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()  # optimizer + scheduler at the accumulation boundary only
            tokens += int((labels != -100).sum()) * world
            if not boundary:
                continue
            step += 1
            history.append({"step": step, "loss": loss.item(), "epsilon": 0.0})
            if rank == 0 and (step % max(1, total_steps // 20) == 0 or step == total_steps):
                log.info("step %d/%d loss %.4f lr %.2e epsilon %.3f tokens/s %.0f", step, total_steps, loss.item(),
                         scheduler.get_last_lr()[0], 0.0, tokens / (time.perf_counter() - start))
            if t.get("checkpoint_every", 0) and step % t["checkpoint_every"] == 0:
                engine.save_checkpoint(str(ckpt_dir), tag=f"step-{step:08d}",
                                       client_state={"step": step, "history": history, "tokens": tokens})
        epoch += 1
    elapsed = time.perf_counter() - start
    inner = engine.module
    is_peft = hasattr(inner, "peft_config")
    zero3 = cfg.get("zero_optimization", {}).get("stage") == 3
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3 else None  # collective: every rank calls it
    result = {
        "method": t["method"], "dp": False, "privacy": privacy_marker(t, 0.0, 0.0), "epsilon": None,
        "target_epsilon": None, "delta": None, "noise_multiplier": 0.0, "max_grad_norm": t["max_grad_norm"],
        "accountant": None, "grad_sample_mode": None, "steps": step, "planned_steps": total_steps, "epochs": t["epochs"],
        "records": len(rows), "batch_size": t["batch_size"], "model_type": info["model_type"],
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 3),
        "trainable_tensors_changed": None, "frozen_tensors_changed": None,
        "final_loss": history[-1]["loss"] if history else None, "train_seconds": round(elapsed, 1),
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1), "world_size": world, "resumed_from_step": resumed_from,
        "rank_weight_digests": None, "ranks_in_sync": None, "deepspeed": {"config": t["deepspeed"], "zero_stage":
                                                                          cfg.get("zero_optimization", {}).get("stage")},
        "adapter_dir": str(out_dir / "adapter") if is_peft else None, "model_dir": None if is_peft else str(out_dir / "model"),
        "mlflow_run_id": None,
    }
    if rank == 0:
        mlflow_run = _mlflow_start(spec)
        result["mlflow_run_id"] = mlflow_run.info.run_id if mlflow_run else None
        _save_outputs(inner, tokenizer, is_peft, out_dir, history, result, t, mlflow_run, 0.0, trainable,
                      state_dict=state_dict)
        import shutil

        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return result


def ghost_loss(criterion, logits, labels):
    """Opacus's ghost-clipping criterion on per-token logits; with `shape=` and ignore_index it
    reduces each record to its token mean, as `per_sample_mean_loss` does, so each record weighs the same."""
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    return criterion(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                     shape=tuple(shift_labels.shape))


def privacy_marker(t: dict, epsilon: float, delta: float) -> str:
    if not t["dp"]:
        return "NON-PRIVATE"
    seeded = "" if t.get("secure_noise", True) else ", REPRODUCIBLE seeded noise: not a production guarantee"
    return f"DP (epsilon={epsilon:.3f}, delta={delta:.2e}{seeded})"


def noise_source(t: dict) -> str | None:
    """Where the DP noise and Poisson sampling came from: the OS CSPRNG, or a seeded PRNG (tests, benchmarks)."""
    from tasks.train.noise import NOISE_SOURCE_CSPRNG, NOISE_SOURCE_SEEDED

    if not t["dp"]:
        return None
    return NOISE_SOURCE_CSPRNG if t.get("secure_noise", True) else NOISE_SOURCE_SEEDED


def _physical_batches(loader, optimizer, t: dict, privacy_engine):
    """Under DP, BatchMemoryManager splits each Poisson logical batch into physical batches that fit memory."""
    if privacy_engine is None:
        import contextlib

        return contextlib.nullcontext(loader)
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=t["physical_batch_size"], optimizer=optimizer)


def _changed_share(before: dict, after: dict) -> float:
    """Share of trainable tensors whose values moved: catches the Opacus+PEFT no-update failure."""
    keys = [k for k in before if k in after]
    if not keys:
        return 0.0
    moved = sum(1 for k in keys if not bool((before[k] == after[k].to(before[k].device)).all()))
    return round(moved / len(keys), 4)


def _mlflow_start(spec: dict):
    if not spec.get("mlflow"):
        return None
    import mlflow

    from tasks.config import Paths
    from tasks.common.tracking import mlflow_experiment

    experiment_id = mlflow_experiment(Paths(Path(spec["mlflow"]["home"])))
    dp = spec["train"]["dp"]
    tags = {"dataset_rev": spec.get("dataset_rev", ""), "dp": str(dp).lower(),
            "privacy": "DP" if dp else "NON-PRIVATE", "train_method": spec["train"]["method"],
            "dp_noise": noise_source(spec["train"]) or "none",
            "base_model_sha256": spec.get("base_model_sha256") or ""}
    if spec["mlflow"].get("run_id"):  # the pipeline's run, shared with the data and evaluation stages
        run = mlflow.start_run(run_id=spec["mlflow"]["run_id"])
        mlflow.set_tags(tags)
        return run
    return mlflow.start_run(experiment_id=experiment_id, run_name=spec["mlflow"].get("run_name"),
                            tags={"pipeline_run_id": spec["mlflow"].get("run_name", ""), **tags})


def _mlflow_log_params(spec: dict, *, n: int, delta: float, noise: float, trainable: int, total: int,
                       accountant: str | None, mode: str | None, model_type: str) -> None:
    import mlflow

    t = spec["train"]
    params = {k: t[k] for k in ("method", "epochs", "batch_size", "physical_batch_size", "learning_rate",
                                "max_seq_len", "dp", "target_epsilon", "max_grad_norm", "seed", "secure_noise")}
    if t["method"] in ("lora", "adapter") or (t["method"] == "freeze" and t["freeze_with_lora"]):
        targets = resolve_targets(t["target_modules"], model_type, t["method"])
        params["target_modules"] = targets if isinstance(targets, str) else ",".join(targets)
    if t["method"] == "lora" or (t["method"] == "freeze" and t["freeze_with_lora"]):
        params.update({k: t[k] for k in ("lora_r", "lora_alpha", "lora_dropout")})
    if t["method"] == "prefix":
        params["num_virtual_tokens"] = t["num_virtual_tokens"]
    if t["method"] == "freeze":
        params.update({"trainable_layers": t["trainable_layers"], "freeze_with_lora": t["freeze_with_lora"]})
    params.update({"optimizer": t.get("optimizer", "adamw"), "records": n, "delta": delta,
                   "accountant": accountant or "none", "grad_sample_mode": mode or "none",
                   "noise_multiplier": round(noise, 5), "trainable_params": trainable, "total_params": total,
                   "trainable_pct": round(100 * trainable / total, 3),
                   "base_model": Path(spec["base_model_dir"]).name, "dataset_rev": spec.get("dataset_rev", "")})
    mlflow.log_params(params)


def _die_with_launcher() -> None:
    """torchrun starts every worker in a session of its own, so a SIGKILL of the launcher (a killed Airflow
    task, the OOM killer) would leave its workers training on, writing into the checkpoint directory that
    the retry resumes from. On Linux the kernel SIGKILLs this worker when its parent (the launcher) dies."""
    import signal
    import sys

    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() == 1:  # the launcher was already gone before the request took effect
        os._exit(1)


def main() -> None:
    _die_with_launcher()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [rank %(process)d] %(message)s")
    parser = argparse.ArgumentParser(description="PrivateTune training recipe (run under torchrun).")
    parser.add_argument("--spec", type=Path, required=True, help="JSON: resolved config + paths")
    args = parser.parse_args()
    try:
        result = train(json.loads(args.spec.read_text()))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
