"""The optimizer side of a step: the optimizer, the LR schedule (the recipe and the DeepSpeed loop share it),
logical batches split into physical ones that fit memory, and the hint an out-of-memory error turns into."""

from __future__ import annotations

import contextlib
import math


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


def lr_schedule(optimizer, total_steps: int):
    """Linear warm-up over the first 10 % of the steps, then cosine decay to 0 at `total_steps`."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, total_steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / total_steps)),
    )


def physical_batches(loader, optimizer, t: dict, privacy_engine):
    """Under DP, BatchMemoryManager splits each Poisson logical batch into physical batches that fit memory
    (the optimizer skips its step until the logical batch is complete); without DP the loader as it is."""
    if privacy_engine is None:
        return contextlib.nullcontext(loader)
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=t["physical_batch_size"], optimizer=optimizer)


class OomHint:
    """Turn an out-of-memory error into one that says which knob to turn."""

    def __init__(self, t: dict):
        self.t = t

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        text = str(exc).lower()
        oom = (
            isinstance(exc, MemoryError)
            or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
        )
        if oom:
            pb = self.t["physical_batch_size"]
            raise MemoryError(
                f"training ran out of memory at train.physical_batch_size={pb} "
                f"(max_seq_len {self.t['max_seq_len']}); set a smaller train.physical_batch_size "
                f"(e.g. {max(1, pb // 2)}): under DP the logical batch_size stays the same"
            ) from exc
        return False
