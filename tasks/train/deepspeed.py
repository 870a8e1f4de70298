"""DeepSpeed ZeRO-2/3 training: non-private, CUDA only, the optional requirements-gpu.txt package.

UNTESTED HERE: the CI machine has no GPU and no deepspeed package. Only the refusals (dp: true, no CUDA,
no package, bad config file) and the config filling are tested; the loop is written against the
DeepSpeed 0.19 engine API. It shares the recipe's optimizer, LR schedule, result fields and outputs.
(`import deepspeed` inside this module is the installed package: imports are absolute.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tasks.common.tokens import tokenize
from tasks.config import REPO_ROOT
from tasks.train import tracking
from tasks.train.data import TokenDataset, make_collate, per_sample_mean_loss
from tasks.train.dp import planned_steps_for
from tasks.train.optim import lr_schedule, make_optimizer
from tasks.train.results import Progress, discard_checkpoints, save_outputs, train_result

log = logging.getLogger(__name__)


def deepspeed_config(t: dict, *, world: int, config_path: Path | str, bf16_supported: bool) -> dict:
    """The ZeRO config with its "auto" values filled from the train config: micro batch = physical batch,
    accumulation = batch / (physical × world), bf16 when the GPU supports it."""
    path = Path(config_path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(
            f"train.deepspeed: {path} does not exist (ZeRO configs: include/deepspeed/zero2.json, zero3.json)"
        )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"train.deepspeed: {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    micro, accum = t["physical_batch_size"], t["batch_size"] // (t["physical_batch_size"] * world)
    if accum < 1 or micro * accum * world != t["batch_size"]:
        raise ValueError(
            f"train.batch_size ({t['batch_size']}) must be a multiple of physical_batch_size × world "
            f"({micro} × {world}) under DeepSpeed"
        )
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
        raise ValueError(
            "train.deepspeed: cannot be combined with dp: true (DeepSpeed bypasses Opacus's per-sample "
            "clipping); leave deepspeed: null for private multi-GPU training (Opacus DPDDP)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.deepspeed: needs CUDA GPUs and this machine has none; set deepspeed: null "
            "(torchrun DDP runs on CPU) or run the training task on a GPU worker"
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(
            "train.deepspeed: the deepspeed package is not installed; pip install -r requirements-gpu.txt "
            "on the GPU workers, or set deepspeed: null"
        )


def train_deepspeed(
    spec: dict,
    *,
    model,
    tokenizer,
    texts: list[str],
    model_type: str,
    rank: int,
    world: int,
    device,
    trainable: int,
    total: int,
    warm_start: dict | None = None,
) -> dict:
    """Non-private ZeRO-2/3 training of the method's model: setup → loop → finish, as the recipe."""
    import deepspeed  # optional GPU extra
    import torch

    t = spec["train"]
    cfg = deepspeed_config(t, world=world, config_path=t["deepspeed"], bf16_supported=torch.cuda.is_bf16_supported())
    rows = tokenize(texts, tokenizer, t["max_seq_len"])
    loader = _micro_batch_loader(rows, pad_id=tokenizer.pad_token_id, t=t, cfg=cfg, rank=rank, world=world)
    total_steps = planned_steps_for(t, len(rows))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_schedule(optimizer, total_steps), config=cfg
    )
    ckpt_dir = (
        Path(spec["out_dir"]) / "checkpoints" / "deepspeed"
    )  # ZeRO shards optimizer state per rank: DeepSpeed's own format
    progress = _resume(engine, ckpt_dir, t)
    _loop(
        engine,
        scheduler,
        loader,
        progress,
        t=t,
        total_steps=total_steps,
        ckpt_dir=ckpt_dir,
        micro_per_step=cfg["gradient_accumulation_steps"],
        rank=rank,
        world=world,
        device=device,
    )
    progress.stop_clock()
    inner = engine.module
    zero_stage = cfg.get("zero_optimization", {}).get("stage")
    state_dict = (
        engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    )  # collective: every rank calls it
    out_dir = Path(spec["out_dir"])
    result = train_result(
        t,
        progress,
        records=len(rows),
        planned_steps=total_steps,
        model_type=model_type,
        trainable=trainable,
        total=total,
        world=world,
        out_dir=out_dir,
        is_peft=hasattr(inner, "peft_config"),
        warm_start=warm_start,
        deepspeed={"config": t["deepspeed"], "zero_stage": zero_stage},
    )
    if rank == 0:
        mlflow_run = tracking.start_run(spec)
        result["mlflow_run_id"] = mlflow_run.info.run_id if mlflow_run else None
        plots = save_outputs(
            inner, tokenizer, out_dir, result=result, history=progress.history, dp=False, state_dict=state_dict
        )
        tracking.finish_run(mlflow_run, result, plots, epsilon=0.0)
        discard_checkpoints(out_dir)
    return result


def _micro_batch_loader(rows, *, pad_id: int, t: dict, cfg: dict, rank: int, world: int):
    """Micro-batches of train_micro_batch_size_per_gpu, sharded over the ranks, seeded, full batches only."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    dataset = TokenDataset(rows)
    sampler = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=t["seed"]) if world > 1 else None
    )
    return DataLoader(
        dataset,
        batch_size=cfg["train_micro_batch_size_per_gpu"],
        sampler=sampler,
        shuffle=sampler is None,
        collate_fn=make_collate(pad_id, t["max_seq_len"]),
        generator=torch.Generator().manual_seed(t["seed"]),
        drop_last=True,
    )


def _resume(engine, ckpt_dir: Path, t: dict) -> Progress:
    """The progress of DeepSpeed's own latest checkpoint, when checkpointing is on and one exists."""
    if t.get("checkpoint_every", 0) and (ckpt_dir / "latest").is_file():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        if client:
            log.info("resuming from step %d (%s)", client["step"], ckpt_dir)
            return Progress(
                step=client["step"], history=client["history"], tokens=client["tokens"], resumed_from=client["step"]
            )
    return Progress()


def _loop(
    engine,
    scheduler,
    loader,
    progress: Progress,
    *,
    t: dict,
    total_steps: int,
    ckpt_dir: Path,
    micro_per_step: int,
    rank: int,
    world: int,
    device,
) -> None:
    """Micro-batches until `total_steps` optimizer steps; a resumed epoch skips the micro-batches it used."""
    sampler = loader.sampler if world > 1 else None
    steps_per_epoch = max(1, len(loader) // micro_per_step)
    progress.start_clock()
    epoch = progress.step // steps_per_epoch
    while progress.step < total_steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        skip = (progress.step - epoch * steps_per_epoch) * micro_per_step  # micro-batches a resumed epoch already used
        for i, (ids, labels) in enumerate(loader):
            if i < skip:
                continue
            if progress.step >= total_steps:
                break
            ids, labels = ids.to(device), labels.to(device)
            loss = per_sample_mean_loss(engine(input_ids=ids, attention_mask=(labels != -100).long()).logits, labels)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()  # optimizer + scheduler at the accumulation boundary only
            progress.tokens += int((labels != -100).sum()) * world
            if not boundary:
                continue
            progress.step += 1
            step = progress.step
            progress.history.append({"step": step, "loss": loss.item(), "epsilon": 0.0})
            if rank == 0 and (step % max(1, total_steps // 20) == 0 or step == total_steps):
                log.info(
                    "step %d/%d loss %.4f lr %.2e epsilon %.3f tokens/s %.0f",
                    step,
                    total_steps,
                    loss.item(),
                    scheduler.get_last_lr()[0],
                    0.0,
                    progress.tokens / progress.elapsed(),
                )
            if t.get("checkpoint_every", 0) and step % t["checkpoint_every"] == 0:
                engine.save_checkpoint(
                    str(ckpt_dir),
                    tag=f"step-{step:08d}",
                    client_state={"step": step, "history": progress.history, "tokens": progress.tokens},
                )
        epoch += 1
