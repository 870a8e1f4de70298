"""2-process torchrun training on CPU (gloo): DP-SGD through Opacus DPDDP keeps both ranks' weights
bit-identical, the per-step global Poisson batch matches batch_size, and ε equals a single-process
run's (the accountant depends only on q, σ and the step count). Plain DDP without DP briefly.
Two single-process launchers meeting at a c10d rendezvous on 127.0.0.1, as two nodes would."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess

import pytest

from tasks.cluster.topology import free_port
from tasks.config import REPO_ROOT, TrainConfig
from tasks.train.distributed import torchrun_args
from tasks.train.recipe import train
from tests.helpers import masked_records, random_llama

pytestmark = pytest.mark.slow  # torchrun jobs of two processes


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return random_llama(tmp_path_factory.mktemp("base"))


def _spec(tmp_path, base_dir, n, **overrides) -> dict:
    cfg = TrainConfig(
        **{
            "batch_size": 16,
            "physical_batch_size": 8,
            "lora_r": 4,
            "lora_alpha": 8,
            "max_seq_len": 24,
            "checkpoint_every": 0,
            **overrides,
        }
    ).model_dump()
    return {
        "train": cfg,
        "base_model_dir": str(base_dir),
        "out_dir": str(tmp_path / "out"),
        "data_path": str(masked_records(tmp_path / "data" / "train.jsonl", n)),
    }


def _torchrun(spec: dict, tmp_path) -> dict:
    spec_path, log_path = tmp_path / "spec.json", tmp_path / "torchrun.log"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as fh:
        proc = subprocess.run(
            torchrun_args(spec["train"], spec_path=spec_path),
            cwd=REPO_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert proc.returncode == 0, log_path.read_text()[-4000:]
    return json.loads((tmp_path / "out" / "train_result.json").read_text())


def test_two_rank_dp_training_stays_in_sync_with_the_global_batch_and_epsilon(tmp_path, base_dir):
    n, batch = 64, 16  # q = 0.25; each rank's expected local batch is 8
    spec = _spec(tmp_path, base_dir, n, nproc_per_node=2, epochs=4.0, checkpoint_every=5)  # 16 logical steps
    result = _torchrun(spec, tmp_path)
    assert result["world_size"] == 2 and result["dp"] is True and result["steps"] == 16
    # DPDDP: rank 0 adds the noise, gradients are all-reduced, so every rank applies the same update
    assert result["ranks_in_sync"] is True and len(set(result["rank_weight_digests"])) == 1
    assert len(result["rank_weight_digests"]) == 2
    assert result["trainable_tensors_changed"] == 1.0 and result["frozen_tensors_changed"] == 0
    assert "(step 15)" in (tmp_path / "torchrun.log").read_text()  # both ranks met at the checkpoint barriers
    assert not (tmp_path / "out" / "checkpoints").exists()

    # per-step global sample counts (all-reduced over the ranks): Poisson with mean q·N = batch_size
    history = json.loads((tmp_path / "out" / "train_history.json").read_text())
    samples = [h["samples"] for h in history]
    mean, q = sum(samples) / len(samples), batch / n
    sd_of_mean = math.sqrt(n * q * (1 - q) / len(samples))  # Var(Binomial(N, q)) / steps
    assert abs(mean - batch) <= 3 * sd_of_mean, (mean, samples)
    assert len(set(samples)) > 1  # Poisson sizes vary; a fixed batch would mean the sampler is not Poisson
    assert max(samples) <= n

    # ε: the same mechanism (q, σ, steps) as one process running the same config
    single = train(_spec(tmp_path / "single", base_dir, n, epochs=4.0))
    assert single["world_size"] == 1 and single["steps"] == result["steps"]
    assert result["noise_multiplier"] == single["noise_multiplier"]
    single_history = json.loads((tmp_path / "single" / "out" / "train_history.json").read_text())
    assert history[-1]["epsilon"] == single_history[-1]["epsilon"] > 0  # exact, unrounded


def test_two_rank_non_private_ddp_stays_in_sync(tmp_path, base_dir):
    spec = _spec(tmp_path, base_dir, 32, nproc_per_node=2, dp=False, epochs=1.0)
    result = _torchrun(spec, tmp_path)
    assert result["world_size"] == 2 and result["privacy"] == "NON-PRIVATE" and result["steps"] == 2
    assert result["ranks_in_sync"] is True and result["trainable_tensors_changed"] == 1.0
    history = json.loads((tmp_path / "out" / "train_history.json").read_text())
    assert [h["samples"] for h in history] == [16, 16]  # DistributedSampler: batch_size / 2 on each rank


def test_empty_local_poisson_draws_are_kept_not_skipped():
    """Opacus' distributed sampler drops a draw that is empty on one rank; ours yields it, so every rank
    takes the same number of draws (the all-reduce pairs step k with step k)."""
    import torch
    import torch.distributed as dist

    from tasks.train.distributed import keep_empty_sampler_class

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler

        opacus_sampler = DistributedUniformWithReplacementSampler(
            total_size=4, sample_rate=0.2, generator=torch.Generator().manual_seed(0)
        )
        ours = DistributedUniformWithReplacementSampler(
            total_size=4, sample_rate=0.2, generator=torch.Generator().manual_seed(0)
        )
        ours.__class__ = keep_empty_sampler_class()
        theirs, mine = list(opacus_sampler), list(ours)
        assert len(mine) == 5 and any(len(b) == 0 for b in mine)  # 1/q draws, empties included
        assert len(theirs) < len(mine)  # Opacus skipped the empty ones
        assert [b.tolist() for b in mine if len(b)] == [b.tolist() for b in theirs]  # same non-empty draws
    finally:
        dist.destroy_process_group()


def test_two_node_rendezvous_trains_dp_in_sync_with_single_process_epsilon(tmp_path, base_dir):
    """Two torchrun launchers (`nnodes=2`, one process each) meet at a real c10d rendezvous on 127.0.0.1,
    as two machines would, and train DP LoRA over gloo: equal weights on both, every trainable tensor
    moved, and the ε of one process running the same config."""
    n = 64
    endpoint = f"127.0.0.1:{free_port()}"
    spec = _spec(tmp_path, base_dir, n, nnodes=2, nproc_per_node=1, rdzv_endpoint=endpoint, epochs=2.0)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = torchrun_args(spec["train"], spec_path=spec_path, run_id="rendezvous-test")
    assert "--nnodes=2" in cmd and f"--rdzv_endpoint={endpoint}" in cmd and "--standalone" not in cmd
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(log, "wb")) for log in logs]
        nodes = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT) for out in outs]
        stack.callback(lambda: [node.kill() for node in nodes])  # a hung rendezvous leaves no launcher behind
        codes = [node.wait(timeout=300) for node in nodes]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    result = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["dp"] is True
    assert result["ranks_in_sync"] is True and len(set(result["rank_weight_digests"])) == 1
    assert len(result["rank_weight_digests"]) == 2
    assert result["trainable_tensors_changed"] == 1.0 and result["frozen_tensors_changed"] == 0

    single = train(_spec(tmp_path / "single", base_dir, n, epochs=2.0))
    assert single["steps"] == result["steps"] and single["noise_multiplier"] == result["noise_multiplier"]
    history = json.loads((tmp_path / "out" / "train_history.json").read_text())
    single_history = json.loads((tmp_path / "single" / "out" / "train_history.json").read_text())
    assert history[-1]["epsilon"] == single_history[-1]["epsilon"] > 0
