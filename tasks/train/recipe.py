"""Training recipe: parameter-efficient fine-tuning under differential privacy.

Launched as `torchrun --standalone --nproc_per_node=N -m tasks.train.recipe --spec SPEC.json`, so
the same entrypoint runs on a laptop, a Celery GPU worker or a Kubernetes pod. It only
reads the masked, versioned dataset (clean zone).

`train(spec)` reads top to bottom as its phases: setup (preflight: config, model dir, data, no compute;
ranks and seeds) → model + method (lora | adapter | prefix | freeze | full) → engine (ranks, data,
optimizer, DP make_private, LR schedule) → resume from the last checkpoint, if any → train loop, capped
at the last step within target ε, checkpointing every `checkpoint_every` steps → finish: adapter (or full
weights) + train_result.json + loss/ε plots, MLflow, checkpoints deleted.

Distributed (WORLD_SIZE > 1; gloo on CPU, NCCL on GPU): under DP the PEFT model is wrapped in
Opacus DPDDP before make_private, which then samples Poisson batches per rank (expected local
batch = batch_size / world, rank-specific generator), clips on every rank, adds the noise once
(rank 0) and all-reduces; without DP plain DDP with a DistributedSampler. Rank 0 alone logs
progress, talks to MLflow and saves. DeepSpeed ZeRO: non-private, CUDA only (tasks.train.deepspeed).

Reads like torchtune's lora_finetune_single_device recipe on purpose: every knob from the spec (the
resolved pipeline config plus paths), no class hierarchy, the reusable pieces in the library beside it:
preflight, methods (what trains), data (rows, batches, loss), dp (mechanism, make_private), distributed
(launch, ranks), optim (optimizer, schedule, physical batches), checkpoint, results, tracking (MLflow).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.common import offline
from tasks.train import tracking
from tasks.train.data import batch_loss, load_units, make_dataset, make_loader
from tasks.train.deepspeed import train_deepspeed
from tasks.train.distributed import (
    broadcast_from_rank0,
    close_distributed,
    die_with_launcher,
    init_distributed,
    rank_digests,
    sum_over_ranks,
    unwrap,
    wrap_for_ranks,
)
from tasks.train.dp import (
    check_sample_rate,
    make_private,
    planned_mechanism,
    planned_steps_for,
    resolve_grad_sample_mode,
)
from tasks.train.methods import (
    apply_method,
    changed_share,
    frozen_checksums,
    frozen_moved,
    load_init_adapter,
    trainable_state,
)
from tasks.train.optim import OomHint, lr_schedule, make_optimizer, physical_batches
from tasks.train.preflight import preflight
from tasks.train.results import Progress, discard_checkpoints, save_outputs, train_result

log = logging.getLogger("tasks.train.recipe")


@dataclass
class Run:
    """This process's part of a training run: the spec, its place among the ranks, what preflight found."""

    spec: dict
    info: dict  # preflight: model_type, tied_embeddings, blocks, delta
    units: dict  # the privacy unit and its counts (records, units, subjects…): no text
    rank: int
    world: int
    local_rank: int
    device: Any

    @property
    def t(self) -> dict:
        return self.spec["train"]

    @property
    def out_dir(self) -> Path:
        return Path(self.spec["out_dir"])


@dataclass
class Base:
    """The base model with the method applied, and what it looked like before training."""

    model: Any
    tokenizer: Any
    trainable: int  # parameters
    total: int
    initial: dict  # trainable tensors before training
    frozen_before: dict  # checksums of the frozen ones
    warm_start: dict | None


@dataclass
class Engine:
    """What the loop drives: the (rank-wrapped, private) model, optimizer, loader and schedule, and the mechanism."""

    model: Any
    optimizer: Any
    loader: Any
    records: int  # training examples = privacy units: records, or subjects (+ records without one); the DP N
    planned_steps: int
    total_steps: int  # planned, or under DP capped at the last step within target ε
    scheduler: Any = None
    privacy_engine: Any = None
    criterion: Any = None  # ghost clipping's loss wrapper
    noise: float = 0.0
    accountant: str | None = None
    mode: str | None = None  # grad-sample mode


# ---------------------------------------------------------------- the recipe


def train(spec: dict) -> dict:
    """One training run: setup → train loop → finish. Returns train_result.json's figures."""
    offline.apply()
    units, run = setup(spec)
    base = setup_model(run)
    if run.t.get("deepspeed"):  # non-private only: the unit does not matter, every record trains
        return train_deepspeed(
            spec,
            model=base.model,
            tokenizer=base.tokenizer,
            texts=[text for unit in units for text in unit],
            rank=run.rank,
            world=run.world,
            device=run.device,
            model_type=run.info["model_type"],
            trainable=base.trainable,
            total=base.total,
            warm_start=base.warm_start,
        )
    engine = setup_engine(run, base, units)
    ckpt, progress = resume(run, engine)
    mlflow_run = start_tracking(run, base, engine)
    train_loop(run, engine, ckpt, progress, mlflow_run, pad_id=base.tokenizer.pad_token_id)
    return finish(run, base, engine, progress, mlflow_run)


def setup(spec: dict) -> tuple[list[list[str]], Run]:
    """The privacy units (records, or records grouped by subject); preflight (data file, model dir, batch, δ,
    targets, method × DP: nothing is computed before it passes), then the output directory, torch threads,
    the process group, seeds and device."""
    import torch

    t = spec["train"]
    units, counts = load_units(Path(spec["data_path"]), t)
    info = preflight(spec, len(units))
    Path(spec["out_dir"]).mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(t["cpu_threads"])
    rank, world, local_rank = init_distributed()
    random.seed(t["seed"] + rank)
    torch.manual_seed(t["seed"])  # same seed on every rank: identical initial weights (DDP broadcasts rank 0's anyway)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return units, Run(spec=spec, info=info, units=counts, rank=rank, world=world, local_rank=local_rank, device=device)


def setup_model(run: Run) -> Base:
    """Tokenizer and base model, on its device before PEFT and Opacus wrap it (Opacus+PEFT silent-failure
    guard); the method applied, the warm-start adapter loaded, and the before-training snapshot."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, t = run.spec, run.t
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["base_model_dir"], dtype=torch.float32).to(run.device)
    model = apply_method(model, spec, run.info["model_type"])
    warm_start = load_init_adapter(model, spec["init_adapter_dir"]) if spec.get("init_adapter_dir") else None
    model.config.use_cache = False
    model.train()  # Opacus refuses modules in eval mode (from_pretrained returns eval)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if run.rank == 0:
        log.info(
            "method %s: %d of %d parameters trainable (%.3f%%); world size %d",
            t["method"],
            trainable,
            total,
            100 * trainable / total,
            run.world,
        )
    return Base(
        model=model,
        tokenizer=tokenizer,
        trainable=trainable,
        total=total,
        initial=trainable_state(model),
        frozen_before=frozen_checksums(model),
        warm_start=warm_start,
    )


def setup_engine(run: Run, base: Base, units: list[list[str]]) -> Engine:
    """(DP)DDP across ranks, one token row per privacy unit and their loader, the optimizer, DP (make_private),
    the LR schedule."""
    import torch

    t, model = run.t, base.model
    if run.world > 1:
        model = wrap_for_ranks(model, dp=t["dp"], device=run.device, local_rank=run.local_rank)
        torch.manual_seed(t["seed"] + run.rank)  # from here on (dropout), ranks draw independently
    rows = make_dataset(units, base.tokenizer, t, positions=run.info.get("positions"), rank=run.rank)
    loader = make_loader(rows, pad_id=base.tokenizer.pad_token_id, t=t, rank=run.rank, world=run.world)
    planned = planned_steps_for(t, len(rows))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    engine = Engine(
        model=model, optimizer=optimizer, loader=loader, records=len(rows), planned_steps=planned, total_steps=planned
    )
    if t["dp"]:
        setup_privacy(run, engine)
    engine.scheduler = lr_schedule(engine.optimizer, engine.total_steps)
    return engine


def setup_privacy(run: Run, engine: Engine) -> None:
    """The DP-SGD mechanism (the one the pipeline charged to the ledger; rank 0 computes it, every rank uses
    its exact result), steps capped within target ε, the clipping mode, and Opacus make_private."""
    t = run.t
    noise, accountant, total_steps, charged_rate = 0.0, None, engine.planned_steps, 0.0
    if run.rank == 0:  # the run stops before exceeding its target: steps capped at the last one within ε
        mech = planned_mechanism(run.spec, engine.records)
        noise, accountant, total_steps, charged_rate = (
            mech[k] for k in ("noise", "accountant", "steps", "sample_rate")
        )
    # the search costs seconds of CPU: rank 0 runs it, every rank uses its exact result
    noise, accountant, total_steps, charged_rate = broadcast_from_rank0(
        [noise, accountant, total_steps, charged_rate], run.world
    )
    if total_steps < engine.planned_steps and run.rank == 0:
        log.warning(
            "capping training at %d of %d steps: more would exceed ε=%s",
            total_steps,
            engine.planned_steps,
            t["target_epsilon"],
        )
    mode = resolve_grad_sample_mode(t, engine.model, run.device, run.info["tied_embeddings"])
    if run.rank == 0:
        log.info(
            "DP-SGD per %s: accountant %s, noise %.4f, sample rate %.4f over %d units, clipping mode %s",
            run.units["privacy_unit"],
            accountant,
            noise,
            charged_rate,
            engine.records,
            mode,
        )
    engine.privacy_engine, engine.model, engine.optimizer, engine.loader, engine.criterion = make_private(
        engine.model,
        engine.optimizer,
        engine.loader,
        t=t,
        noise=noise,
        accountant=accountant,
        mode=mode,
        world=run.world,
    )
    check_sample_rate(engine.loader, charged_rate)  # the rate the ledger was charged for, not a recomputed one
    engine.noise, engine.accountant, engine.mode, engine.total_steps = noise, accountant, mode, total_steps


def resume(run: Run, engine: Engine):
    """The checkpointer, and the progress of its latest checkpoint (a fresh Progress when there is none).
    After everything that draws random numbers at setup: restoring resets the RNGs."""
    from tasks.train.checkpoint import Checkpointer, spec_fingerprint

    t = run.t
    ckpt = Checkpointer(
        run.out_dir / "checkpoints",
        fingerprint=spec_fingerprint(run.spec, world=run.world),
        every=t.get("checkpoint_every", 0),
        keep=t.get("checkpoint_keep", 2),
        rank=run.rank,
        world=run.world,
    )
    state = ckpt.load_latest()
    if state is None:
        return ckpt, Progress()
    extra = ckpt.restore(
        state,
        model=engine.model,
        optimizer=engine.optimizer,
        scheduler=engine.scheduler,
        data_loader=engine.loader,
        privacy_engine=engine.privacy_engine,
    )
    if run.rank == 0:
        log.info("resuming from step %d of %d (%s)", state.step, engine.total_steps, state.path)
    return ckpt, Progress.resumed(state.step, extra)


def start_tracking(run: Run, base: Base, engine: Engine):
    """Rank 0's MLflow run with the hyperparameters and mechanism; None on other ranks or without MLflow."""
    if run.rank != 0:
        return None
    mlflow_run = tracking.start_run(run.spec)
    if mlflow_run:
        tracking.log_params(
            run.spec,
            n=engine.records,
            delta=run.info["delta"],
            noise=engine.noise,
            trainable=base.trainable,
            total=base.total,
            accountant=engine.accountant,
            mode=engine.mode,
            model_type=run.info["model_type"],
        )
    return mlflow_run


def train_loop(run: Run, engine: Engine, ckpt, progress: Progress, mlflow_run, *, pad_id: int) -> None:
    """Logical steps until total_steps. Under DP each Poisson batch arrives as physical batches; the optimizer
    skips its step until the logical batch is complete, then `end_step` does the bookkeeping."""
    t = run.t
    step_samples = step_tokens = 0  # this rank's records and tokens in the current logical step
    progress.start_clock()
    with OomHint(t):
        while progress.step < engine.total_steps:
            ckpt.begin_epoch(
                engine.loader, progress.step
            )  # before the loader is iterated (sampler position, set_epoch)
            with physical_batches(engine.loader, engine.optimizer, t, engine.privacy_engine) as batches:
                for ids, labels in ckpt.batches(batches):
                    if progress.step >= engine.total_steps:
                        break
                    loss_value, samples, tokens = forward_backward(run, engine, ids, labels, pad_id=pad_id)
                    step_samples, step_tokens = step_samples + samples, step_tokens + tokens
                    engine.optimizer.step()
                    skipped = getattr(engine.optimizer, "_is_last_step_skipped", False)
                    engine.optimizer.zero_grad(set_to_none=True)
                    if skipped:
                        continue  # a physical sub-batch of a larger logical batch: no update yet
                    end_step(run, engine, ckpt, progress, mlflow_run, loss_value, step_samples, step_tokens)
                    step_samples = step_tokens = 0
    progress.stop_clock()


def forward_backward(run: Run, engine: Engine, ids, labels, *, pad_id: int) -> tuple[float, int, int]:
    """One physical batch forward and backward. Returns (loss, records, tokens); the loss is NaN for an empty draw."""
    import torch

    device = run.device
    ids, labels = ids.to(device), labels.to(device)
    rows = ids.shape[0]
    attention = (labels != -100).long()
    if rows == 0:
        # An empty Poisson draw still is a step (noise, accountant, the ranks' all-reduce): one
        # fully ignored row gives every parameter an exactly-zero per-sample gradient.
        ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
        labels, attention = torch.full_like(ids, -100), torch.ones_like(ids)
    kwargs = {"input_ids": ids, "attention_mask": attention}
    if run.t["dp"] and run.t["method"] == "full":
        # GPT-2's learned position embedding sees position_ids of batch 1 unless expanded: per-sample grads need the batch
        kwargs["position_ids"] = torch.arange(ids.shape[1], device=device).expand(ids.shape[0], -1)
    loss = batch_loss(engine.model(**kwargs).logits, labels, engine.criterion)
    loss.backward()
    return (loss.item() if rows else float("nan")), rows, int((labels != -100).sum())


def end_step(
    run: Run, engine: Engine, ckpt, progress: Progress, mlflow_run, loss_value: float, samples: int, tokens: int
) -> None:
    """A logical step is done: LR schedule, global records and tokens, ε (and its guard), history, progress
    lines (MLflow every step, the task log every ~5 %), and a checkpoint every `checkpoint_every` steps."""
    t = run.t
    engine.scheduler.step()
    progress.step += 1
    samples, tokens = sum_over_ranks([samples, tokens], device=run.device, world=run.world)
    progress.tokens += tokens
    if engine.privacy_engine is not None and run.rank == 0:  # every rank's accountant is the same; rank 0 reports
        progress.epsilon = engine.privacy_engine.get_epsilon(run.info["delta"])
        if progress.epsilon > t["target_epsilon"]:  # unreachable with the cap; never release such a model
            raise RuntimeError(
                f"privacy guard: ε={progress.epsilon:.4f} after step {progress.step} exceeds "
                f"train.target_epsilon={t['target_epsilon']}; the run is stopped unsaved"
            )
    progress.history.append(
        {"step": progress.step, "loss": loss_value, "epsilon": progress.epsilon, "samples": samples}
    )
    rate, lr = progress.tokens / max(progress.elapsed(), 1e-9), engine.scheduler.get_last_lr()[0]
    tracking.log_step(mlflow_run, progress.step, loss=loss_value, epsilon=progress.epsilon, tokens_per_s=rate, lr=lr)
    if run.rank == 0 and (progress.step % max(1, engine.total_steps // 20) == 0 or progress.step == engine.total_steps):
        log.info(
            "step %d/%d loss %.4f lr %.2e epsilon %.3f tokens/s %.0f",
            progress.step,
            engine.total_steps,
            loss_value,
            lr,
            progress.epsilon,
            rate,
        )
    ckpt.maybe_save(
        progress.step,
        model=engine.model,
        optimizer=engine.optimizer,
        scheduler=engine.scheduler,
        data_loader=engine.loader,
        privacy_engine=engine.privacy_engine,
        extra=progress.checkpoint_extra(),
    )


def finish(run: Run, base: Base, engine: Engine, progress: Progress, mlflow_run) -> dict:
    """Every rank: weight digests (they must agree) and the result. Rank 0: the adapter or model, history,
    result and curves saved, MLflow finished, the checkpoints deleted."""
    inner = unwrap(engine.model)
    result = train_result(
        run.t,
        progress,
        records=engine.records,
        planned_steps=engine.planned_steps,
        model_type=run.info["model_type"],
        trainable=base.trainable,
        total=base.total,
        world=run.world,
        out_dir=run.out_dir,
        is_peft=hasattr(inner, "peft_config"),
        delta=run.info["delta"],
        noise=engine.noise,
        accountant=engine.accountant,
        mode=engine.mode,
        changed=changed_share(base.initial, trainable_state(inner)),
        frozen_moved=frozen_moved(base.frozen_before, frozen_checksums(inner)),
        digests=rank_digests(inner, run.world),  # every rank must hold the same weights; rank 0's are saved
        mlflow_run_id=mlflow_run.info.run_id if mlflow_run else None,
        warm_start=base.warm_start,
        units=run.units,
    )
    if run.rank == 0:
        plots = save_outputs(
            inner, base.tokenizer, run.out_dir, result=result, history=progress.history, dp=run.t["dp"]
        )
        tracking.finish_run(mlflow_run, result, plots, epsilon=progress.epsilon)
        discard_checkpoints(run.out_dir)
    return result


def main() -> None:
    """The torchrun entry point: `-m tasks.train.recipe --spec SPEC.json`; rank 0 prints the result."""
    die_with_launcher()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [rank %(process)d] %(message)s")
    parser = argparse.ArgumentParser(description="PrivateTune training recipe (run under torchrun).")
    parser.add_argument("--spec", type=Path, required=True, help="JSON: resolved config + paths")
    args = parser.parse_args()
    try:
        result = train(json.loads(args.spec.read_text()))
    finally:
        close_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
