"""Resumable training: atomic checkpoints every N logical steps, resumed bit-for-bit.

A checkpoint holds everything the next step depends on: the trainable weights (by name), the
optimizer and LR-schedule state, the RNG states (python, numpy, torch, CUDA; per rank), the
sampler position inside the current epoch, the privacy accountant's history, the step and a
caller-chosen `extra` dict (loss history, token count, elapsed seconds). Resuming from it and
training on gives the same weights and, under DP, the same ε as a run that was never stopped.

Layout under `ckpt_dir` (one directory per training run; an Airflow retry of the same run finds it):

    step-00000012/manifest.json   step, fingerprint, world size, files (written by rank 0)
    step-00000012/shared.pt       weights, optimizer, scheduler, accountant, extra (rank 0)
    step-00000012/rank-0.pt ...   RNG states and sampler position, one file per rank
    latest                        the name of the newest complete checkpoint, written last

Atomicity: every rank writes into `.tmp-step-…`, all ranks meet at a barrier, rank 0 renames the
directory and only then replaces `latest` (write-to-temp + os.replace). Only `latest` is trusted,
so a SIGKILL at any moment leaves either the previous checkpoint or the new one, never half of
one. The directory must be on a filesystem every rank sees (multi-node: a shared volume).

Run identity: a checkpoint records a fingerprint of the run spec parts that decide the result
(data path and revision, base model, every `train` hyperparameter except execution-only knobs
such as the physical batch size, world size). Resuming from a checkpoint with another
fingerprint is REFUSED (CheckpointMismatch, naming the differing fields): silently restarting
would throw away paid-for privacy budget and silently mixing would train a model nobody asked
for. Delete the directory, or restore the old config, to go on.

How the train loop calls it (tasks/train/recipe.py)::

    from tasks.train.checkpoint import Checkpointer, spec_fingerprint

    # after make_private (so model/optimizer/loader are the wrapped ones) and the scheduler:
    ckpt = Checkpointer(out_dir / "checkpoints", fingerprint=spec_fingerprint(spec, world=world),
                        every=t["checkpoint_every"], keep=t["checkpoint_keep"], rank=rank, world=world)
    step, history, tokens, elapsed_before = 0, [], 0, 0.0
    state = ckpt.load_latest()                      # None: fresh start; raises on a foreign checkpoint
    if state is not None:
        extra = ckpt.restore(state, model=model, optimizer=optimizer, scheduler=scheduler,
                             data_loader=loader, privacy_engine=privacy_engine)
        step, history, tokens, elapsed_before = state.step, extra["history"], extra["tokens"], extra["elapsed"]
        log.info("resuming from step %d (%s)", step, state.path)
    while step < total_steps:
        ckpt.begin_epoch(loader, step)              # before the loader (or BatchMemoryManager) is iterated;
                                                    # it calls set_epoch on a DistributedSampler itself
        with batches as it:
            for ids, labels in ckpt.batches(it):    # skips batches a resumed non-DP epoch already used
                ...forward/backward; optimizer.step(); skipped = ...; optimizer.zero_grad()
                if skipped: continue
                scheduler.step(); step += 1; epsilon = ...; history.append(...)
                ckpt.maybe_save(step, model=model, optimizer=optimizer, scheduler=scheduler,
                                data_loader=loader, privacy_engine=privacy_engine,
                                extra={"history": history, "tokens": tokens, "elapsed": elapsed_before + ...})

`restore` must come after everything that consumes random numbers at setup (model init, PEFT,
make_private), because it resets the RNGs to where the checkpoint left them. `maybe_save` must be
called on every rank (it synchronises them with barriers when world > 1). `every=0` disables both
saving and resuming.

Sampler position. Under DP the loader is Opacus' DPDataLoader: each logical batch is one Poisson
draw `torch.rand(N, generator=G)`, and starting an epoch (iter() on the loader) also draws one
seed from G. The checkpoint stores G's state after the last consumed draw and how many draws of
the epoch were used; the resumed epoch samples from a copy of that state for the remaining draws
only (the seed draw at its start goes to the unused original G), and at the next epoch G is set
to the copy's state — exactly where an uninterrupted run's G would be. The non-DP loader
(shuffle=True, seeded generator) draws its whole permutation at the epoch start, so the
checkpoint stores G's state at the epoch start and the number of batches used; the resumed epoch
restarts G there and `batches()` skips the used batches. Both need the DataLoader built with
`generator=torch.Generator().manual_seed(seed)`. A CSPRNG sampler (tasks.train.noise, production)
has no state: the resumed epoch draws its remaining steps afresh, so the weights differ from an
uninterrupted run's but the steps, and with them ε, are the same.
A dataset that draws its examples (subject packing, tasks.train.data.SubjectDataset: which ≤ k records form
a sampled subject's example) has its own seeded generator; the rank state keeps it too (`draw_state`): where
it stood after the last step under Poisson sampling, at the epoch start for the non-DP loader (the skipped
batches replay its draws). Under secure noise it draws from the CSPRNG and has nothing to keep.
The position is counted in logical steps. Opacus' distributed Poisson sampler silently drops a
draw that is empty on one rank (desynchronising DPDDP ranks, and such an epoch would resume one
draw off); tasks.train.dp.make_private replaces it with `KeepEmptyDistributedSampler` (tasks.train.distributed), which yields the empty draw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tasks.train.checkpoint")

FORMAT = 1
# Knobs that change speed or bookkeeping, not the trained model or the privacy spent.
# World size is fingerprinted on its own; rendezvous settings may change between attempts (new host, new id).
EXECUTION_ONLY = frozenset(
    {
        "physical_batch_size",
        "cpu_threads",
        "nproc_per_node",
        "checkpoint_every",
        "checkpoint_keep",
        "nnodes",
        "rdzv_endpoint",
        "rdzv_backend",
        "rdzv_id",
    }
)
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointMismatch(ValueError):
    """A checkpoint exists but belongs to a run with another spec."""


def spec_fingerprint(spec: dict, *, world: int, ignore: Iterable[str] = EXECUTION_ONLY) -> dict:
    """The parts of a run spec that must match for a checkpoint to be resumed (readable, not hashed)."""
    ignored = set(ignore)
    train = {k: v for k, v in sorted(spec["train"].items()) if k not in ignored}
    return {
        "data_path": str(spec.get("data_path", "")),
        "dataset_rev": str(spec.get("dataset_rev", "")),
        "base_model_dir": str(spec.get("base_model_dir", "")),
        "world_size": int(world),
        "train": json.loads(json.dumps(train, default=str)),
    }


def _digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


@dataclass
class CheckpointState:
    path: Path
    step: int
    shared: dict
    rank_state: dict


# ---------------------------------------------------------------- object helpers


def _unwrap(model):
    """The PEFT/HF model under Opacus' GradSampleModule and (DP)DDP, so names do not depend on wrapping."""
    import torch

    for _ in range(4):
        if hasattr(model, "_module") and isinstance(model._module, torch.nn.Module):
            model = model._module
        elif (
            isinstance(model, torch.nn.parallel.DistributedDataParallel)
            or type(model).__name__ == "DifferentiallyPrivateDistributedDataParallel"
        ):
            model = model.module
        else:
            break
    return model


def _trainable(model) -> dict:
    return {n: p for n, p in _unwrap(model).named_parameters() if p.requires_grad}


def _poisson_sampler(data_loader):
    from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler

    s = getattr(data_loader, "batch_sampler", None)
    return s if isinstance(s, (UniformWithReplacementSampler, DistributedUniformWithReplacementSampler)) else None


def _draws_attr(sampler) -> str:
    return "steps" if hasattr(sampler, "steps") else "num_batches"


def _secure(sampler) -> bool:
    """A CSPRNG Poisson sampler (tasks.train.noise) has no state to save: a resumed epoch draws afresh."""
    return sampler is not None and getattr(sampler, "secure", False)


def _draw_generator(data_loader):
    """The dataset's own generator, if its examples draw (subject packing: which records form the example)."""
    gen = getattr(getattr(data_loader, "dataset", None), "generator", None)
    return gen if type(gen).__name__ == "Generator" else None


def _require_generator(data_loader) -> None:
    sampler = _poisson_sampler(data_loader)
    if _secure(sampler):
        return
    gen = sampler.generator if sampler is not None else data_loader.generator
    if gen is None or type(gen).__name__ != "Generator":
        raise ValueError(
            "checkpointing needs the training DataLoader built with generator=torch.Generator()"
            ".manual_seed(seed) (and secure_mode off): without a seeded generator the sampler "
            "position cannot be restored"
        )


def _rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, this process sees %d: CUDA RNG not "
                "restored (results will be equivalent in distribution, not identical)",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain(obj):
    """numpy scalars (Opacus' accountant history holds some) → python, so weights_only loading accepts them."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _save(obj, path: Path) -> None:
    import torch

    with open(path, "wb") as fh:
        torch.save(_plain(obj), fh)
        fh.flush()
        os.fsync(fh.fileno())


def _load(path: Path):
    import torch

    # weights_only: a checkpoint directory is not a place to run pickled code from.
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- the checkpointer


class Checkpointer:
    """Saves every `every` logical steps into `ckpt_dir`, keeps the newest `keep`, resumes from `latest`."""

    def __init__(
        self, ckpt_dir: Path | str, *, fingerprint: dict, every: int, keep: int = 2, rank: int = 0, world: int = 1
    ):
        if every < 0:
            raise ValueError(f"train.checkpoint_every must be >= 0 (0 = off), got {every}")
        if keep < 1:
            raise ValueError(f"train.checkpoint_keep must be >= 1, got {keep}")
        self.dir = Path(ckpt_dir)
        self.fingerprint, self.digest = fingerprint, _digest(fingerprint)
        self.every, self.keep, self.rank, self.world = every, keep, rank, world
        # sampler cursor: where the current epoch began and, after a resume, what to replay
        self._epoch_start_step = 0
        self._epoch_start_gen_state = None  # non-DP: loader generator state before the epoch's iter()
        self._epoch_start_draw_state = None  # non-DP: the dataset's draw generator then (replayed with the skip)
        self._pending: dict | None = None  # sampler position from a checkpoint, used by the next begin_epoch
        self._swap = None  # DP: (original generator, draws per epoch) while a resumed epoch samples from a copy
        self._skip = 0
        self._epoch = -1  # epochs begun; a DistributedSampler gets it through set_epoch

    @property
    def enabled(self) -> bool:
        return self.every > 0

    # -- resume

    def load_latest(self) -> CheckpointState | None:
        """The checkpoint `latest` names, or None. Raises CheckpointMismatch for another run's checkpoint."""
        if not self.enabled:
            return None
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        path = self.dir / name
        if not _STEP_DIR.match(name) or not (path / "manifest.json").is_file():
            raise RuntimeError(
                f"{pointer}: names '{name}', which is not a complete checkpoint; delete {self.dir} to start over"
            )
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("fingerprint_sha256") != self.digest:
            diffs = _differences(manifest.get("fingerprint", {}), self.fingerprint)
            raise CheckpointMismatch(
                f"{path}: checkpoint was written by a run with another spec ({'; '.join(diffs) or 'format change'}); "
                f"refusing to resume it. Restore that config, or delete {self.dir} to start this run from step 0"
            )
        rank_file = path / f"rank-{self.rank}.pt"
        if not rank_file.is_file():
            raise RuntimeError(f"{rank_file}: missing for rank {self.rank}; delete {self.dir} to start over")
        return CheckpointState(
            path=path, step=int(manifest["step"]), shared=_load(path / "shared.pt"), rank_state=_load(rank_file)
        )

    def restore(self, state: CheckpointState, *, model, optimizer, scheduler, data_loader, privacy_engine=None) -> dict:
        """Load the state into the (already wrapped) training objects; returns the saved `extra` dict."""
        import torch

        shared, mine = state.shared, state.rank_state
        params = _trainable(model)
        saved = shared["trainable"]
        if set(saved) != set(params):
            missing, unknown = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
            raise RuntimeError(
                f"{state.path}: trainable parameters differ from the model's "
                f"(missing {missing[:5]}, unexpected {unknown[:5]})"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(p.device))
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        if privacy_engine is not None:
            if shared.get("accountant") is None:
                raise RuntimeError(f"{state.path}: holds no privacy accountant state; cannot resume a DP run from it")
            privacy_engine.accountant.load_state_dict(shared["accountant"])
        _require_generator(data_loader)
        self._epoch_start_step = mine["sampler"]["epoch_start_step"]
        self._pending = mine["sampler"]
        _set_rng_state(mine["rng"])  # last: nothing after this may draw random numbers before the next step
        return shared["extra"]

    # -- the epoch protocol

    def begin_epoch(self, data_loader, step: int) -> None:
        """Call at the top of every epoch, before the loader is iterated."""
        sampler = _poisson_sampler(data_loader)
        if self._swap is not None:  # the resumed partial epoch is over: hand its generator state back
            original, draws = self._swap
            if original is not None:
                original.set_state(sampler.generator.get_state())
                sampler.generator = original
            setattr(sampler, _draws_attr(sampler), draws)
            self._swap = None
        pending, self._pending = self._pending, None
        self._skip = 0
        self._epoch = pending["epoch"] if pending is not None else self._epoch + 1
        inner = getattr(data_loader.batch_sampler, "sampler", None)
        if sampler is None and hasattr(inner, "set_epoch"):  # torch DistributedSampler: reshuffle per epoch
            inner.set_epoch(self._epoch)
        if not self.enabled:
            return
        _require_generator(data_loader)
        draws = _draw_generator(data_loader)
        if pending is None:
            self._epoch_start_step = step
            self._epoch_start_gen_state = None if sampler is not None else data_loader.generator.get_state()
            self._epoch_start_draw_state = draws.get_state() if draws is not None and sampler is None else None
            return
        if draws is not None and pending.get("draw_state") is not None:  # where the dataset's draws stood
            draws.set_state(pending["draw_state"])
            self._epoch_start_draw_state = pending["draw_state"] if sampler is None else None
        used = step - pending["epoch_start_step"]
        if _secure(sampler):  # fresh CSPRNG draws for what is left of the epoch: same step count, same ε
            if pending["kind"] != "poisson-secure":
                raise RuntimeError(
                    "checkpoint was written with seeded Poisson sampling, this run draws from the CSPRNG"
                )
            draws = getattr(sampler, _draws_attr(sampler))
            self._swap = (None, draws)
            setattr(sampler, _draws_attr(sampler), draws - used)
        elif sampler is not None:
            import torch

            if pending["kind"] != "poisson":
                raise RuntimeError("checkpoint was written with a non-DP loader, this run uses Poisson sampling")
            draws = getattr(sampler, _draws_attr(sampler))
            copy = torch.Generator()
            copy.set_state(pending["generator_state"])
            self._swap = (sampler.generator, draws)
            sampler.generator = copy
            setattr(sampler, _draws_attr(sampler), draws - used)
        else:
            if pending["kind"] != "shuffle":
                raise RuntimeError("checkpoint was written with Poisson sampling, this run uses a plain loader")
            data_loader.generator.set_state(pending["generator_state"])
            self._epoch_start_gen_state = pending["generator_state"]
            self._skip = used

    def batches(self, iterable: Iterable) -> Iterator:
        """The epoch's batches, minus those a resumed non-DP epoch already trained on."""
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(iterable):
            if i < skip:
                continue
            yield batch

    # -- save

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def maybe_save(self, step: int, **objects) -> Path | None:
        return self.save(step, **objects) if self.due(step) else None

    def save(
        self, step: int, *, model, optimizer, scheduler, data_loader, privacy_engine=None, extra: dict | None = None
    ) -> Path:
        """Write a checkpoint at a logical-step boundary (after scheduler.step and step += 1). All ranks call it."""
        name = f"step-{step:08d}"
        tmp = self.dir / f".tmp-{name}"
        final = self.dir / name
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier(self.world)

        sampler = _poisson_sampler(data_loader)
        used = step - self._epoch_start_step
        if _secure(sampler):
            position = {"kind": "poisson-secure"}
        elif sampler is not None:
            position = {"kind": "poisson", "generator_state": sampler.generator.get_state()}
        else:
            position = {"kind": "shuffle", "generator_state": self._epoch_start_gen_state}
        position.update(epoch=self._epoch, epoch_start_step=self._epoch_start_step, used=used)
        draws = _draw_generator(data_loader)
        if draws is not None:  # Poisson: where the draws stand now; shuffle: at the epoch start (the skip replays)
            position["draw_state"] = draws.get_state() if sampler is not None else self._epoch_start_draw_state
        _save({"rng": _rng_state(), "sampler": position}, tmp / f"rank-{self.rank}.pt")

        if self.rank == 0:
            shared = {
                "trainable": {n: p.detach().cpu().clone() for n, p in _trainable(model).items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "accountant": privacy_engine.accountant.state_dict() if privacy_engine is not None else None,
                "extra": extra or {},
            }
            _save(shared, tmp / "shared.pt")
        _barrier(self.world)

        if self.rank == 0:
            ranks = [f"rank-{r}.pt" for r in range(self.world)]
            absent = [r for r in ranks if not (tmp / r).is_file()]
            if absent:
                raise RuntimeError(f"{tmp}: ranks did not write {absent}; is {self.dir} on a shared filesystem?")
            manifest = {
                "format": FORMAT,
                "step": step,
                "world_size": self.world,
                "files": ["shared.pt", *ranks],
                "fingerprint": self.fingerprint,
                "fingerprint_sha256": self.digest,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            _fsync_dir(tmp)
            if final.exists():  # a resumed run re-reaching a step it saved before the kill
                shutil.rmtree(final)
            os.replace(tmp, final)
            pointer_tmp = self.dir / ".latest.tmp"
            pointer_tmp.write_text(name + "\n")
            with open(pointer_tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(pointer_tmp, self.dir / "latest")  # the commit point
            _fsync_dir(self.dir)
            self._prune(keep_name=name)
            log.info("checkpoint %s written (step %d)", final, step)
        _barrier(self.world)
        return final

    def _prune(self, keep_name: str) -> None:
        steps = sorted((p for p in self.dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=lambda p: p.name)
        older = [p for p in steps if p.name <= keep_name]
        keep = {p.name for p in older[-self.keep :]}
        for p in steps:  # newer than `latest`: orphans of a save killed before the pointer moved
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob(".tmp-step-*"):  # leftovers of saves killed half-way
            shutil.rmtree(p, ignore_errors=True)


def describe(ckpt_dir: Path | str) -> dict[str, Any]:
    """What `latest` points at (for logs and the task's XCom): paths and counts only."""
    d = Path(ckpt_dir)
    pointer = d / "latest"
    if not pointer.is_file():
        return {"dir": str(d), "latest": None}
    name = pointer.read_text().strip()
    match = _STEP_DIR.match(name)
    # the step from the name, not the manifest: safe to call while a training process is pruning
    return {"dir": str(d), "latest": name, "step": int(match.group(1)) if match else None}
