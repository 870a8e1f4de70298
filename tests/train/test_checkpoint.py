"""Resumable training: a stopped or SIGKILLed run resumes from its last checkpoint and ends where an
uninterrupted run ends (same weights bit for bit on CPU, same ε exactly).

`run()` is a compact copy of the tasks.train.recipe loop (PEFT LoRA on a random Llama, Opacus make_private
with Poisson sampling and BatchMemoryManager, or a seeded shuffled DataLoader without DP). This file
also runs as a script (`python -m tests.train.test_checkpoint ...`) so the kill test can SIGKILL a real
training process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.train.checkpoint import Checkpointer, CheckpointMismatch, describe, spec_fingerprint
from tests.helpers import masked_records, random_llama

ROOT = Path(__file__).resolve().parents[2]


class Stop(Exception):
    """Simulated crash at a given step."""


def _spec(base_dir: Path, data_path: Path, *, dp: bool, lr: float = 0.05) -> dict:
    return {
        "base_model_dir": str(base_dir),
        "data_path": str(data_path),
        "dataset_rev": "rev-test",
        "train": {
            "method": "lora",
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.1,
            "target_modules": ["q_proj", "v_proj", "gate_proj"],
            "optimizer": "adamw",
            "batch_size": 8,
            "physical_batch_size": 4,
            "learning_rate": lr,
            "max_seq_len": 32,
            "seed": 3,
            "dp": dp,
            "target_epsilon": 8.0,
            "max_grad_norm": 1.0,
            "checkpoint_every": 0,
            "checkpoint_keep": 2,
            "cpu_threads": 1,
        },
    }


def run(
    spec: dict,
    ckpt_dir: Path,
    *,
    total_steps: int,
    every: int,
    keep: int = 2,
    stop_at: int | None = None,
    step_delay: float = 0.0,
) -> dict:
    """The tasks.train.recipe loop in miniature, with the checkpoint calls where the recipe makes them."""
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = spec["train"]
    torch.set_num_threads(1)
    torch.manual_seed(t["seed"])
    tok = AutoTokenizer.from_pretrained(spec["base_model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["base_model_dir"], dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=t["lora_r"],
            lora_alpha=t["lora_alpha"],
            lora_dropout=t["lora_dropout"],
            target_modules=t["target_modules"],
            task_type="CAUSAL_LM",
        ),
    )
    model.config.use_cache = False
    texts = [json.loads(line)["text"] for line in Path(spec["data_path"]).read_text().splitlines()]
    rows = [
        torch.tensor(
            tok(
                tok.bos_token + s + tok.eos_token,
                truncation=True,
                max_length=t["max_seq_len"],
                add_special_tokens=False,
            )["input_ids"]
        )
        for s in texts
    ]

    def collate(batch):
        width = max([len(r) for r in batch], default=1)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r)], labels[i, : len(r)] = r, r
        return ids, labels

    loader = DataLoader(
        rows,
        batch_size=t["batch_size"],
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(t["seed"]),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t["learning_rate"])
    engine, delta = None, 1.0 / (10 * len(rows))
    if t["dp"]:
        engine = PrivacyEngine(accountant="prv", secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=t["max_grad_norm"],
            poisson_sampling=True,
            grad_sample_mode="hooks",
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))

    ckpt = Checkpointer(ckpt_dir, fingerprint=spec_fingerprint(spec, world=1), every=every, keep=keep)
    step, history, resumed_from = 0, [], None
    state = ckpt.load_latest()
    if state is not None:
        extra = ckpt.restore(
            state, model=model, optimizer=optimizer, scheduler=scheduler, data_loader=loader, privacy_engine=engine
        )
        step, history, resumed_from = state.step, extra["history"], state.step
        print(f"resuming from step {step}", flush=True)
    model.train()
    while step < total_steps:
        ckpt.begin_epoch(loader, step)
        ctx = (
            BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=t["physical_batch_size"], optimizer=optimizer
            )
            if engine
            else _Null(loader)
        )
        with ctx as it:
            for ids, labels in ckpt.batches(it):
                if step >= total_steps:
                    break
                loss_value = float("nan")
                if ids.shape[0] > 0:
                    logits = model(input_ids=ids, attention_mask=(labels != -100).long()).logits
                    loss = torch.nn.functional.cross_entropy(
                        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100
                    )
                    loss.backward()
                    loss_value = loss.item()
                optimizer.step()
                skipped = getattr(optimizer, "_is_last_step_skipped", False)
                optimizer.zero_grad(set_to_none=True)
                if skipped:
                    continue
                scheduler.step()
                step += 1
                history.append({"step": step, "loss": loss_value})
                ckpt.maybe_save(
                    step,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    data_loader=loader,
                    privacy_engine=engine,
                    extra={"history": history},
                )
                if stop_at is not None and step == stop_at:
                    raise Stop(step)
                time.sleep(step_delay)
    # ε once at the end: a PRV evaluation costs ~1 s here; tasks.train.recipe logs it every step.
    epsilon = engine.get_epsilon(delta) if engine is not None else 0.0
    peft_model = model._module if hasattr(model, "_module") else model
    weights = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    return {
        "weights": weights,
        "epsilon": epsilon,
        "history": history,
        "resumed_from": resumed_from,
        "accountant": engine.accountant.state_dict() if engine else None,
    }


class _Null:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return random_llama(root / "base"), masked_records(root / "data" / "train.jsonl", 32)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:  # bit-identical: same CPU kernels on the same inputs in the same order, one thread
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dp", [True, False])
def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, setup, dp):
    base, data = setup
    spec = _spec(base, data, dp=dp)
    # 32 records / batch 8 → 4 logical steps an epoch: step 6 is mid-epoch 2, and the resumed
    # run crosses the epoch boundary at step 8 (where the sampler generator is handed back).
    reference = run(spec, tmp_path / "ref", total_steps=11, every=0)
    with pytest.raises(Stop):
        run(spec, tmp_path / "ckpt", total_steps=11, every=3, stop_at=7)
    assert describe(tmp_path / "ckpt")["step"] == 6
    resumed = run(spec, tmp_path / "ckpt", total_steps=11, every=3)
    assert resumed["resumed_from"] == 6
    _assert_same_weights(reference["weights"], resumed["weights"])
    assert [h["step"] for h in resumed["history"]] == list(range(1, 12))
    assert [h["loss"] for h in resumed["history"]] == pytest.approx(
        [h["loss"] for h in reference["history"]], nan_ok=True, rel=0, abs=0
    )
    if dp:
        assert resumed["epsilon"] == reference["epsilon"] > 0  # exact: the accountant history is restored
        assert resumed["accountant"] == reference["accountant"]
    # keep=2: only the two newest checkpoints remain, no temp directories
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-00000006", "step-00000009"]


def test_resume_at_an_epoch_boundary(tmp_path, setup):
    base, data = setup
    spec = _spec(base, data, dp=True)
    reference = run(spec, tmp_path / "ref", total_steps=9, every=0)
    with pytest.raises(Stop):
        run(spec, tmp_path / "ckpt", total_steps=9, every=4, stop_at=5)  # last checkpoint: end of epoch 1
    resumed = run(spec, tmp_path / "ckpt", total_steps=9, every=4)
    assert resumed["resumed_from"] == 4
    _assert_same_weights(reference["weights"], resumed["weights"])
    assert resumed["epsilon"] == reference["epsilon"]


def test_half_written_checkpoint_is_ignored(tmp_path, setup):
    base, data = setup
    spec = _spec(base, data, dp=True)
    with pytest.raises(Stop):
        run(spec, tmp_path / "ckpt", total_steps=8, every=2, stop_at=3)
    d = tmp_path / "ckpt"
    # What a SIGKILL in the middle of saving step 4 leaves: a temp dir with some files, and a renamed
    # step dir whose `latest` update never happened.
    (d / ".tmp-step-00000004").mkdir()
    (d / ".tmp-step-00000004" / "rank-0.pt").write_bytes(b"\x00garbage")
    import shutil

    shutil.copytree(d / "step-00000002", d / "step-00000004")
    (d / "step-00000004" / "shared.pt").write_bytes(b"truncated")
    assert describe(d)["step"] == 2
    resumed = run(spec, d, total_steps=8, every=2)
    assert resumed["resumed_from"] == 2
    reference = run(spec, tmp_path / "ref", total_steps=8, every=0)
    _assert_same_weights(reference["weights"], resumed["weights"])
    assert not list(d.glob(".tmp-*"))


def test_checkpoint_of_another_spec_is_refused(tmp_path, setup):
    base, data = setup
    with pytest.raises(Stop):
        run(_spec(base, data, dp=True), tmp_path / "ckpt", total_steps=6, every=2, stop_at=2)
    with pytest.raises(CheckpointMismatch, match=r"train\.learning_rate: 0\.05 -> 0\.1.*delete"):
        run(_spec(base, data, dp=True, lr=0.1), tmp_path / "ckpt", total_steps=6, every=2)
    # execution-only knobs may change between attempts (e.g. a smaller physical batch after OOM)
    spec = _spec(base, data, dp=True)
    spec["train"]["physical_batch_size"] = 2
    assert run(spec, tmp_path / "ckpt", total_steps=6, every=2)["resumed_from"] == 2


def test_restored_accountant_gives_the_same_epsilon():
    from opacus.accountants import PRVAccountant, RDPAccountant

    for cls in (PRVAccountant, RDPAccountant):
        a = cls()
        for _ in range(30):
            a.step(noise_multiplier=1.1, sample_rate=0.02)
        for _ in range(5):
            a.step(noise_multiplier=0.9, sample_rate=0.02)
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"acct-{os.getpid()}.pt"
        torch.save(a.state_dict(), path)
        b = cls()
        b.load_state_dict(torch.load(path, weights_only=True))
        path.unlink()
        assert b.history == a.history and len(b.history) == 2
        assert b.get_epsilon(1e-5) == a.get_epsilon(1e-5) > 0
        with pytest.raises(ValueError, match="mechanism"):  # a PRV history is never read as RDP's
            (RDPAccountant() if cls is PRVAccountant else PRVAccountant()).load_state_dict(a.state_dict())


@pytest.mark.slow  # a training subprocess, SIGKILLed and rerun
def test_sigkilled_training_process_resumes(tmp_path, setup, capsys):
    base, data = setup
    spec = _spec(base, data, dp=True)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tests.train.test_checkpoint",
        "--spec",
        str(spec_path),
        "--out",
        str(out),
        "--steps",
        "12",
        "--every",
        "1",
        "--step-delay",
        "0.3",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log_fh:  # a file, not a pipe: nobody reads a pipe while we poll
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (describe(out / "ckpt").get("step") or 0) < 2:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "no second checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None and proc.returncode is None:
            proc.kill()  # only when an assertion above failed: leave no training process behind
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists()
    killed_at = describe(out / "ckpt")["step"]
    assert 2 <= killed_at < 12

    # The rerun happens in this process (a fresh model, optimizer and loader, as in a new task attempt):
    # a second interpreter start would only add ~10 s of imports on the CI machine.
    resumed = run(spec, out / "ckpt", total_steps=12, every=1)
    printed = capsys.readouterr().out
    resumed_from = int(printed.split("resuming from step ")[1].split()[0])
    assert resumed_from == resumed["resumed_from"] == killed_at  # the last checkpoint, not step 0
    reference = run(spec, tmp_path / "ref", total_steps=12, every=0)
    assert resumed["epsilon"] == reference["epsilon"] > 0
    assert len(resumed["history"]) == 12
    _assert_same_weights(reference["weights"], resumed["weights"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Checkpointed miniature training run (for the kill test).")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args()
    res = run(
        json.loads(args.spec.read_text()),
        args.out / "ckpt",
        total_steps=args.steps,
        every=args.every,
        step_delay=args.step_delay,
    )
    torch.save(res["weights"], args.out / "weights.pt")
    (args.out / "result.json").write_text(
        json.dumps({"epsilon": res["epsilon"], "steps": len(res["history"]), "resumed_from": res["resumed_from"]})
    )


if __name__ == "__main__":
    main()


def _ddp_loop(rank: int, ckpt_dir: Path, *, total_steps: int, every: int, stop_at: int | None = None) -> dict:
    """Non-DP DDP with a DistributedSampler and dropout: per-rank RNG and the set_epoch shuffle."""
    from torch.utils.data import DataLoader, DistributedSampler

    torch.manual_seed(100 + rank)  # per-rank dropout masks
    data = [torch.randn(4, generator=torch.Generator().manual_seed(i)) for i in range(24)]
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    model = torch.nn.parallel.DistributedDataParallel(net)
    loader = DataLoader(data, batch_size=3, sampler=DistributedSampler(data, shuffle=True, seed=0), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    ckpt = Checkpointer(ckpt_dir, fingerprint={"toy": 1, "world": 2}, every=every, keep=2, rank=rank, world=2)
    step, resumed_from = 0, None
    state = ckpt.load_latest()
    if state is not None:
        ckpt.restore(state, model=model, optimizer=optimizer, scheduler=scheduler, data_loader=loader)
        step = resumed_from = state.step
    while step < total_steps:
        ckpt.begin_epoch(loader, step)
        for x in ckpt.batches(loader):
            if step >= total_steps:
                break
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            step += 1
            ckpt.maybe_save(step, model=model, optimizer=optimizer, scheduler=scheduler, data_loader=loader, extra={})
            if step == stop_at:
                raise Stop(step)
    return {"weights": {n: p.detach().clone() for n, p in net.named_parameters()}, "resumed_from": resumed_from}


def _ddp_worker(rank: int, port: int, root: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        root_path = Path(root)
        ref = _ddp_loop(rank, root_path / "ref", total_steps=10, every=0)
        try:
            _ddp_loop(rank, root_path / "ckpt", total_steps=10, every=3, stop_at=7)
        except Stop:
            pass
        resumed = _ddp_loop(rank, root_path / "ckpt", total_steps=10, every=3)
        same = all(torch.equal(ref["weights"][k], resumed["weights"][k]) for k in ref["weights"])
        result = {"same": same, "resumed_from": resumed["resumed_from"]}
        (root_path / f"result-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two DDP processes (torch.multiprocessing)
def test_two_rank_ddp_checkpoint_resumes_each_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert result == {"same": True, "resumed_from": 6}, rank
    assert sorted(p.name for p in (tmp_path / "ckpt" / "step-00000009").iterdir()) == [
        "manifest.json",
        "rank-0.pt",
        "rank-1.pt",
        "shared.pt",
    ]
