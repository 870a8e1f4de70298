"""Training recipe: parameter-efficient fine-tuning under differential privacy.

Launched as `torchrun --standalone --nproc_per_node=N -m tasks.train --spec SPEC.json`, so
the same entrypoint runs on a laptop, a Celery GPU worker or a Kubernetes pod. It only
reads the masked, versioned dataset (clean zone).

setup → (DP) make_private → train loop → save adapter + train_result.json

Reads like a torchtune recipe on purpose: one file, every knob from the spec (the
resolved pipeline config plus paths), no class hierarchy.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from pathlib import Path

from tasks import offline
from tasks.jsonl import read_objects

log = logging.getLogger("tasks.train")


# ---------------------------------------------------------------- setup helpers

def load_texts(path: Path) -> list[str]:
    texts = [row["text"] for row in read_objects(path, fields=("text",), hint="; re-run the version stage")]
    if not texts:
        raise ValueError(f"{path}: the training set is empty")
    return texts


def tokenize(texts: list[str], tokenizer, max_len: int) -> list[list[int]]:
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    return [tokenizer(bos + t + eos, truncation=True, max_length=max_len, add_special_tokens=False)["input_ids"]
            for t in texts]


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


def apply_peft(model, spec: dict):
    from peft import LoraConfig, get_peft_model

    t = spec["train"]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in t["target_modules"] if m not in present]
    if missing:
        raise ValueError(f"train.target_modules: {missing} not found in the model; it has e.g. {sorted(present)[:12]}")
    lora = LoraConfig(r=t["lora_r"], lora_alpha=t["lora_alpha"], lora_dropout=t["lora_dropout"],
                      target_modules=t["target_modules"], bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


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


def init_distributed():
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import torch

        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


# ---------------------------------------------------------------- the recipe

def train(spec: dict) -> dict:
    offline.apply()
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = spec["train"]
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(t["cpu_threads"])
    rank, world = init_distributed()
    random.seed(t["seed"] + rank)
    torch.manual_seed(t["seed"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")

    # -- model: to its device before PEFT and Opacus wrap it (Opacus+PEFT silent-failure guard)
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["base_model_dir"], dtype=torch.float32).to(device)
    model = apply_peft(model, spec)
    model.config.use_cache = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    initial = trainable_state(model)
    frozen_before = frozen_checksums(model)

    # -- data
    texts = load_texts(Path(spec["data_path"]))
    rows = tokenize(texts, tokenizer, t["max_seq_len"])
    n = len(rows)
    if t["batch_size"] > n:
        raise ValueError(f"train.batch_size ({t['batch_size']}) is larger than the dataset ({n} records)")
    delta = t["target_delta"] or 1.0 / (10 * n)
    if t["dp"] and delta >= 1.0 / n:
        raise ValueError(f"train.target_delta ({delta}) must be < 1/N = {1.0 / n:.2e} for N={n} records")
    dataset = TokenDataset(rows)
    loader = DataLoader(dataset, batch_size=t["batch_size"], shuffle=True,
                        collate_fn=make_collate(tokenizer.pad_token_id, t["max_seq_len"]),
                        generator=torch.Generator().manual_seed(t["seed"]))
    steps_per_epoch = max(1, math.ceil(n / t["batch_size"]))
    total_steps = max(1, round(t["epochs"] * steps_per_epoch))

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    privacy_engine, noise = None, 0.0
    if t["dp"]:
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier

        sample_rate = t["batch_size"] / n
        noise = get_noise_multiplier(target_epsilon=t["target_epsilon"], target_delta=delta,
                                     sample_rate=sample_rate, steps=total_steps, accountant="prv")
        privacy_engine = PrivacyEngine(accountant="prv", secure_mode=False)
        model, optimizer, loader = privacy_engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=t["max_grad_norm"], poisson_sampling=True, grad_sample_mode="hooks")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / total_steps)))

    mlflow_run = _mlflow_start(spec) if rank == 0 else None
    if mlflow_run:
        _mlflow_log_params(spec, n=n, delta=delta, noise=noise, trainable=trainable, total=total)

    # -- train loop
    model.train()
    step, history, start, tokens = 0, [], time.perf_counter(), 0
    epsilon = 0.0
    while step < total_steps:
        batches = _physical_batches(loader, optimizer, t, privacy_engine)
        with batches as it:
            for ids, labels in it:
                if step >= total_steps:
                    break
                ids, labels = ids.to(device), labels.to(device)
                if ids.shape[0] > 0:
                    logits = model(input_ids=ids, attention_mask=(labels != -100).long()).logits
                    loss = per_sample_mean_loss(logits, labels)
                    loss.backward()
                    tokens += int((labels != -100).sum())
                    loss_value = loss.item()
                else:
                    loss_value = float("nan")
                optimizer.step()
                skipped = getattr(optimizer, "_is_last_step_skipped", False)
                optimizer.zero_grad(set_to_none=True)
                if skipped:
                    continue  # a physical sub-batch of a larger logical batch: no update yet
                scheduler.step()
                step += 1
                if privacy_engine is not None:
                    epsilon = privacy_engine.get_epsilon(delta)
                history.append({"step": step, "loss": loss_value, "epsilon": epsilon})
                if step % max(1, total_steps // 20) == 0 or step == total_steps:
                    rate = tokens / (time.perf_counter() - start)
                    log.info("step %d/%d loss %.4f lr %.2e epsilon %.3f tokens/s %.0f",
                             step, total_steps, loss_value, scheduler.get_last_lr()[0], epsilon, rate)
                    if mlflow_run:
                        import mlflow

                        mlflow.log_metrics({"loss": loss_value, "epsilon": epsilon, "tokens_per_s": rate,
                                            "lr": scheduler.get_last_lr()[0]}, step=step)

    elapsed = time.perf_counter() - start
    peft_model = model._module if hasattr(model, "_module") else model
    peft_model = peft_model.module if hasattr(peft_model, "module") and world > 1 else peft_model
    changed = _changed_share(initial, trainable_state(peft_model))
    frozen_after = frozen_checksums(peft_model)
    frozen_moved = sum(1 for k, v in frozen_before.items() if frozen_after.get(k) != v)
    result = {
        "method": t["method"], "dp": t["dp"], "epsilon": round(epsilon, 4) if t["dp"] else None,
        "target_epsilon": t["target_epsilon"] if t["dp"] else None, "delta": delta if t["dp"] else None,
        "noise_multiplier": round(noise, 4), "max_grad_norm": t["max_grad_norm"],
        "steps": step, "epochs": t["epochs"], "records": n, "batch_size": t["batch_size"],
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 3),
        "trainable_tensors_changed": changed, "frozen_tensors_changed": frozen_moved, "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(elapsed, 1), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "world_size": world, "adapter_dir": str(out_dir / "adapter"),
        "mlflow_run_id": mlflow_run.info.run_id if mlflow_run else None,
    }
    if rank == 0:
        peft_model.save_pretrained(out_dir / "adapter")
        (out_dir / "train_history.json").write_text(json.dumps(history))
        (out_dir / "train_result.json").write_text(json.dumps(result, indent=2))
        if mlflow_run:
            import mlflow

            mlflow.log_metrics({"final_epsilon": epsilon, "trainable_pct": result["trainable_pct"]})
            mlflow.end_run()
    return result


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
    from tasks.tracking import mlflow_experiment

    experiment_id = mlflow_experiment(Paths(Path(spec["mlflow"]["home"])))
    tags = {"dataset_rev": spec.get("dataset_rev", ""), "dp": str(spec["train"]["dp"]).lower()}
    if spec["mlflow"].get("run_id"):  # the pipeline's run, shared with the data and evaluation stages
        run = mlflow.start_run(run_id=spec["mlflow"]["run_id"])
        mlflow.set_tags(tags)
        return run
    return mlflow.start_run(experiment_id=experiment_id, run_name=spec["mlflow"].get("run_name"),
                            tags={"pipeline_run_id": spec["mlflow"].get("run_name", ""), **tags})


def _mlflow_log_params(spec: dict, *, n: int, delta: float, noise: float, trainable: int, total: int) -> None:
    import mlflow

    t = spec["train"]
    params = {k: t[k] for k in ("method", "lora_r", "lora_alpha", "lora_dropout", "epochs", "batch_size",
                                "physical_batch_size", "learning_rate", "max_seq_len", "dp", "target_epsilon",
                                "max_grad_norm", "seed")}
    params.update({"optimizer": t.get("optimizer", "adamw"), "target_modules": ",".join(t["target_modules"]),
                   "records": n, "delta": delta,
                   "noise_multiplier": round(noise, 5), "trainable_params": trainable, "total_params": total,
                   "base_model": Path(spec["base_model_dir"]).name, "dataset_rev": spec.get("dataset_rev", "")})
    mlflow.log_params(params)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [rank %(process)d] %(message)s")
    parser = argparse.ArgumentParser(description="PrivateTune training recipe (run under torchrun).")
    parser.add_argument("--spec", type=Path, required=True, help="JSON: resolved config + paths")
    args = parser.parse_args()
    result = train(json.loads(args.spec.read_text()))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
