"""Several processes, one training: the torchrun launch command, process-group setup, the model wrappers
(Opacus DPDDP under DP, plain DDP without), the Poisson sampler that keeps every rank in step, and the
digest that shows the ranks ended with the same weights.

One node runs `torchrun --standalone`; several meet at a c10d rendezvous (`torchrun_args`). NCCL on GPUs,
gloo on CPU. Under DP each rank draws its own Poisson batch (expected local batch = batch_size / world,
rank-specific generator), clips locally, rank 0 adds the noise, and the gradients are all-reduced.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


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
        rdzv_id = (
            train_cfg.get("rdzv_id") or re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id or "").strip("_.") or "privatetune"
        )
        cmd += [
            f"--nnodes={nnodes}",
            f"--nproc_per_node={nproc}",
            f"--rdzv_backend={train_cfg.get('rdzv_backend', 'c10d')}",
            f"--rdzv_endpoint={train_cfg['rdzv_endpoint']}",
            f"--rdzv_id={rdzv_id}",
        ]
    else:
        if nnodes > 1:
            raise ValueError(f"train.rdzv_endpoint: required when train.nnodes={nnodes} > 1")
        cmd += ["--standalone", f"--nproc_per_node={nproc}"]
    return [*cmd, "--max_restarts=0", "-m", "tasks.train.recipe", "--spec", str(spec_path)]


def die_with_launcher() -> None:
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


def close_distributed() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_ranks(model, *, dp: bool, device, local_rank: int):
    """DPDDP (DP) or DDP around the (PEFT) model. Under DP this comes before make_private, which sees the
    wrapper and switches to distributed Poisson sampling (local batch ~ batch_size/world) and the
    DistributedDPOptimizer."""
    import torch

    if dp:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        return DPDDP(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)


def unwrap(model):
    """The PEFT/HF model under Opacus' GradSampleModule and (DP)DDP."""
    import torch

    inner = model._module if hasattr(model, "_module") else model
    if (
        isinstance(inner, torch.nn.parallel.DistributedDataParallel)
        or type(inner).__name__ == "DifferentiallyPrivateDistributedDataParallel"
    ):
        inner = inner.module
    return inner


def broadcast_from_rank0(values: list, world: int) -> list:
    """Rank 0's `values` on every rank (unchanged with one process)."""
    if world > 1:
        import torch.distributed as dist

        box = list(values)
        dist.broadcast_object_list(box, src=0)
        return box
    return values


def sum_over_ranks(values: list[int], *, device, world: int) -> list[int]:
    """Integer counts summed over every rank (unchanged with one process)."""
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    counts = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(counts)
    return [int(c) for c in counts.tolist()]


@functools.lru_cache(maxsize=1)
def keep_empty_sampler_class():
    """The class of `KeepEmptyDistributedSampler` (built on first use: Opacus is imported lazily)."""
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
            indices = indices[self.rank : self.total_size : self.num_replicas]
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


def rank_digests(model, world: int) -> list[str] | None:
    """Every rank's `weights_digest` (None with one process); logs an error when they differ."""
    if world == 1:
        return None
    import torch.distributed as dist

    digests = [None] * world
    dist.all_gather_object(digests, weights_digest(model))
    if len(set(digests)) != 1:
        log.error("ranks hold different trainable weights after training (digests %s)", digests)
    return digests
