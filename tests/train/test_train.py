"""Training recipe: every method trains what it should (and nothing else) under DP on Llama and GPT-2,
ε stays under target, clipping modes agree, bad configuration fails before compute."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tasks.config import TrainConfig
from tasks.train.recipe import train
from tests.helpers import masked_records, random_gpt2, random_llama


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return random_llama(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"))


def _spec(tmp_path, base_dir, n=64, **train_overrides):
    cfg = TrainConfig(
        **{
            "batch_size": 16,
            "physical_batch_size": 8,
            "epochs": 1.0,
            "lora_r": 4,
            "lora_alpha": 8,
            "max_seq_len": 48,
            **train_overrides,
        }
    ).model_dump()
    return {
        "train": cfg,
        "base_model_dir": str(base_dir),
        "out_dir": str(tmp_path / "out"),
        "data_path": str(masked_records(tmp_path / "data" / "train.jsonl", n)),
    }


def test_dp_training_changes_lora_weights_not_frozen_ones(tmp_path, base_dir):
    import hashlib

    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in base_dir.iterdir() if p.is_file()}
    result = train(_spec(tmp_path, base_dir))
    assert result["dp"] is True
    assert result["trainable_tensors_changed"] == 1.0  # every LoRA tensor moved (Opacus+PEFT no-update guard)
    assert result["frozen_tensors_changed"] == 0  # no base weight moved in memory
    adapter = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # PEFT initialises B to zero
    assert all("lora_" in k for k in adapter)  # the adapter holds only LoRA tensors
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in base_dir.iterdir() if p.is_file()}
    assert before == after  # the base model on disk is untouched


def test_ffa_lora_trains_b_only_and_keeps_a_at_its_seeded_init(tmp_path, base_dir):
    """lora_train_a: false (FFA-LoRA): only B gets gradients (and DP noise); A stays the seeded random
    projection, which the frozen-tensor check covers, and B still moves from its zero init."""
    full = train(_spec(tmp_path / "ab", base_dir, n=32, max_seq_len=24))
    ffa = train(_spec(tmp_path / "b", base_dir, n=32, max_seq_len=24, lora_train_a=False))
    adapter = load_file(tmp_path / "b" / "out" / "adapter" / "adapter_model.safetensors")
    b_params = sum(v.numel() for k, v in adapter.items() if "lora_B" in k)
    assert ffa["trainable_params"] == b_params < full["trainable_params"]
    assert ffa["trainable_tensors_changed"] == 1.0  # every B moved
    assert ffa["frozen_tensors_changed"] == 0  # A (frozen) and the base did not
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_epsilon_is_reported_and_within_target(tmp_path, base_dir):
    result = train(_spec(tmp_path, base_dir, target_epsilon=2.0, epochs=2.0))
    assert 0 < result["epsilon"] <= 2.0
    assert result["delta"] == pytest.approx(1 / (10 * 64))
    saved = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert saved["epsilon"] == result["epsilon"]
    history = json.loads((tmp_path / "out" / "train_history.json").read_text())
    eps = [h["epsilon"] for h in history]
    assert eps == sorted(eps) and eps[-1] <= 2.0  # ε only grows, and never past the target


def test_non_private_run_is_marked(tmp_path, base_dir):
    result = train(_spec(tmp_path, base_dir, dp=False))
    assert result["dp"] is False and result["epsilon"] is None and result["trainable_tensors_changed"] == 1.0


@pytest.mark.parametrize(
    "overrides, n, message",
    [
        ({"batch_size": 128, "physical_batch_size": 8}, 64, "batch_size"),
        ({"target_delta": 0.5}, 64, "target_delta"),
        ({"target_delta": 1 / 64}, 64, "target_delta"),  # δ must be strictly below 1/N
        ({"target_modules": ["not_a_layer"]}, 64, "target_modules"),
        ({"method": "freeze", "freeze_with_lora": True, "target_modules": ["c_attn"]}, 64, "target_modules"),
        ({"method": "freeze", "trainable_layers": 3}, 64, "trainable_layers"),
        ({"method": "full", "grad_sample_mode": "ghost"}, 64, "grad_sample_mode"),  # tied embeddings
    ],
)
def test_bad_configuration_fails_before_training(tmp_path, base_dir, overrides, n, message):
    with pytest.raises(ValueError, match=message):
        train(_spec(tmp_path, base_dir, n=n, **overrides))
    assert not (tmp_path / "out" / "adapter").exists()


def test_bad_training_file_names_file_and_line(tmp_path, base_dir):
    spec = _spec(tmp_path, base_dir)
    with open(spec["data_path"], "a") as fh:
        fh.write('{"record_id": "x"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:65"):
        train(spec)


def test_seeded_reconstruction_of_the_initial_adapter_is_exact(tmp_path, base_dir):
    """The e2e test rebuilds the initial LoRA weights from the seed to prove training moved them;
    this shows the rebuild is exact (a negligible step leaves lora_A equal to it), so that check can fail."""
    from transformers import AutoModelForCausalLM

    from tasks.train.methods import apply_peft

    spec = _spec(tmp_path, base_dir, dp=False, learning_rate=1e-30)
    train(spec)
    torch.manual_seed(spec["train"]["seed"])
    model = apply_peft(AutoModelForCausalLM.from_pretrained(base_dir), spec)
    initial = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_A" in k}
    trained = {
        k: v for k, v in load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors").items() if "lora_A" in k
    }
    assert trained and trained.keys() == initial.keys()
    assert all(torch.equal(initial[k], trained[k]) for k in trained)


# ---------------------------------------------------------------- methods × model families × DP

METHODS = {  # name → overrides; trainable-name fragments that must move
    "lora_all_linear": ({"method": "lora", "target_modules": "all-linear"}, "lora_"),
    "prefix": ({"method": "prefix", "num_virtual_tokens": 4}, "prompt_encoder"),
    "freeze": ({"method": "freeze", "trainable_layers": 1}, ".1."),
    "freeze_lora": (
        {"method": "freeze", "trainable_layers": 1, "freeze_with_lora": True, "target_modules": "all"},
        "lora_",
    ),
    "full": ({"method": "full", "learning_rate": 0.05}, ""),
}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_under_dp_on_both_families(tmp_path, base_dir, gpt2_dir, family, method):
    overrides, _ = METHODS[method]
    result = train(
        _spec(tmp_path, base_dir if family == "llama" else gpt2_dir, n=32, batch_size=16, max_seq_len=24, **overrides)
    )
    assert result["dp"] is True and 0 < result["epsilon"] <= 8.0
    assert result["model_type"] == family and result["grad_sample_mode"] == "hooks"  # auto on CPU
    assert result["trainable_tensors_changed"] == 1.0  # every trainable tensor moved
    assert result["frozen_tensors_changed"] == 0  # and nothing else did
    assert 0 < result["trainable_params"] <= result["total_params"]
    if method == "full":
        assert result["trainable_pct"] == 100.0 and result["adapter_dir"] is None
        assert (tmp_path / "out" / "model" / "config.json").is_file()
    else:
        assert result["trainable_pct"] < 100.0
    if method == "freeze":  # whole-block weights train, so the model (not an adapter) is saved
        assert result["model_dir"] and not (tmp_path / "out" / "adapter").exists()
    if method in ("lora_all_linear", "prefix", "freeze_lora"):
        assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_freeze_trains_only_the_top_blocks(tmp_path, base_dir):
    """freeze + LoRA: LoRA only in the top block; the lower block gets no adapter and no gradient."""
    result = train(
        _spec(tmp_path, base_dir, n=32, max_seq_len=24, method="freeze", trainable_layers=1, freeze_with_lora=True)
    )
    adapter = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".layers.1." in k for k in adapter)  # the random Llama has 2 blocks
    assert result["trainable_tensors_changed"] == 1.0 and result["frozen_tensors_changed"] == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapter_trains_without_dp_and_is_refused_under_dp(tmp_path, base_dir, gpt2_dir, family):
    with pytest.raises(ValueError, match=r"adapter.*cannot run under DP"):
        TrainConfig(method="adapter")
    result = train(
        _spec(
            tmp_path,
            base_dir if family == "llama" else gpt2_dir,
            n=32,
            max_seq_len=24,
            method="adapter",
            target_modules="all",
            dp=False,
        )
    )
    assert result["privacy"] == "NON-PRIVATE" and result["trainable_tensors_changed"] == 1.0
    assert result["frozen_tensors_changed"] == 0
    assert "ia3_l" in "".join(load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ghost_clipping_trains_and_keeps_the_per_record_loss(tmp_path, base_dir, gpt2_dir, family):
    """Ghost clipping's criterion must weigh each record by its token mean, as hooks mode does: the
    first step (before any update, same Poisson batch) reports the same loss in both modes."""
    model_dir = base_dir if family == "llama" else gpt2_dir
    runs = {}
    for mode in ("hooks", "ghost"):
        runs[mode] = train(
            _spec(
                tmp_path / mode,
                model_dir,
                n=32,
                max_seq_len=24,
                grad_sample_mode=mode,
                target_epsilon=3.0,
                secure_noise=False,
            )
        )  # seeded: the same first batch
        history = json.loads((tmp_path / mode / "out" / "train_history.json").read_text())
        runs[mode]["first_loss"] = history[0]["loss"]
    ghost = runs["ghost"]
    assert ghost["grad_sample_mode"] == "ghost" and 0 < ghost["epsilon"] <= 3.0
    assert ghost["trainable_tensors_changed"] == 1.0 and ghost["frozen_tensors_changed"] == 0
    assert ghost["first_loss"] == pytest.approx(runs["hooks"]["first_loss"], rel=1e-5)
    assert ghost["epsilon"] == runs["hooks"]["epsilon"]  # same mechanism, same accountant


def test_functorch_mode_trains(tmp_path, gpt2_dir):
    result = train(_spec(tmp_path, gpt2_dir, n=32, max_seq_len=24, grad_sample_mode="functorch"))
    assert result["grad_sample_mode"] == "functorch" and result["trainable_tensors_changed"] == 1.0


# ---------------------------------------------------------------- ε: cap, guard, accountant


def test_step_cap_is_the_last_step_within_target():
    from tasks.train.dp import epsilon_after, max_steps_within

    mech = {"noise": 0.8, "sample_rate": 0.25, "delta": 1e-3, "accountant": "rdp"}
    target = epsilon_after(10, **mech)  # exactly 10 steps' worth of ε
    cap = max_steps_within(target, 40, **mech)
    assert cap == 10 and epsilon_after(cap + 1, **mech) > target
    assert max_steps_within(target, 6, **mech) == 6  # below the limit: the plan stands


def test_rdp_is_the_fallback_when_prv_cannot_compute(caplog):
    from tasks.train.dp import epsilon_after, noise_for_target

    # a tiny sampling rate over 2 steps: Opacus's PRV raises "Cannot compute epsilon" here
    noise, accountant = noise_for_target(target_epsilon=3.0, delta=1e-3, sample_rate=1e-4, steps=2)
    assert accountant == "rdp" and "falling back to RDP" in caplog.text
    assert epsilon_after(2, noise=noise, sample_rate=1e-4, delta=1e-3, accountant="rdp") <= 3.0


def test_result_names_the_accountant_and_noise_source(tmp_path, base_dir):
    result = train(_spec(tmp_path, base_dir, n=32, max_seq_len=24))
    assert result["accountant"] == "prv" and result["steps"] == result["planned_steps"]
    assert result["privacy"].startswith("DP (epsilon=") and result["noise_source"] == "csprng (os.urandom)"


def test_production_noise_cannot_be_regenerated_from_the_seed(tmp_path, base_dir):
    """Same seed, same data: seeded noise gives the same adapter twice (and says so); CSPRNG noise does not."""

    def adapter(name, secure):
        result = train(_spec(tmp_path / name, base_dir, n=32, max_seq_len=24, secure_noise=secure))
        return result, (tmp_path / name / "out" / "adapter" / "adapter_model.safetensors").read_bytes()

    (s1, a1), (s2, a2) = adapter("s1", True), adapter("s2", True)
    (p1, b1), (_p2, b2) = adapter("p1", False), adapter("p2", False)
    assert a1 != a2 and b1 == b2
    assert s1["epsilon"] == s2["epsilon"] == p1["epsilon"]  # the same mechanism, only its randomness differs
    assert "REPRODUCIBLE seeded noise" in p1["privacy"] and "seeded" in p1["noise_source"]


# ---------------------------------------------------------------- progress artifacts, non-private marker, OOM


def test_plots_and_non_private_marker(tmp_path, base_dir):
    result = train(_spec(tmp_path, base_dir, n=32, max_seq_len=24, dp=False))
    assert result["privacy"] == "NON-PRIVATE" and result["accountant"] is None and result["grad_sample_mode"] is None
    assert (tmp_path / "out" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "epsilon_curve.png").exists()  # no ε without DP


def test_mlflow_gets_curves_tags_and_trainable_share(tmp_path, base_dir, monkeypatch):
    from mlflow import MlflowClient

    from tasks.config import Paths

    # set (not del): mlflow.set_tracking_uri exports the variable, and monkeypatch then removes it again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}")
    spec = _spec(tmp_path, base_dir, n=32, max_seq_len=24, method="freeze", trainable_layers=1)
    spec["mlflow"] = {"home": str(tmp_path / "home"), "run_name": "t"}
    result = train(spec)
    assert (tmp_path / "out" / "epsilon_curve.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri=Paths(tmp_path / "home").mlflow_tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["dp"] == "true" and run.data.tags["train_method"] == "freeze"
    assert run.data.params["accountant"] == "prv" and run.data.params["grad_sample_mode"] == "hooks"
    assert float(run.data.params["trainable_pct"]) == result["trainable_pct"] < 100
    assert {m.step for m in client.get_metric_history(run.info.run_id, "epsilon")} == set(range(1, result["steps"] + 1))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "training")} == {
        "training/loss_curve.png",
        "training/epsilon_curve.png",
    }


def test_out_of_memory_names_the_physical_batch():
    from tasks.train.optim import OomHint

    t = {"physical_batch_size": 64, "max_seq_len": 96}
    with pytest.raises(MemoryError, match=r"smaller train\.physical_batch_size \(e\.g\. 32\)"), OomHint(t):
        torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure (CPU allocator)
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass through unchanged
        with OomHint(t):
            raise ValueError("unrelated")


@pytest.mark.parametrize(
    "make_dir, message",
    [
        (lambda d: d / "missing", "no config.json"),
        (
            lambda d: (
                (d / "cls").mkdir()
                or (
                    (d / "cls" / "config.json").write_text(
                        json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"})
                    )
                    and d / "cls"
                )
            ),
            "not a causal LM",
        ),
    ],
)
def test_model_dir_is_checked_before_loading(tmp_path, base_dir, make_dir, message):
    spec = _spec(tmp_path, base_dir)
    spec["base_model_dir"] = str(make_dir(tmp_path))
    with pytest.raises((FileNotFoundError, ValueError), match=f"base_model.path.*{message}"):
        train(spec)
    assert not (tmp_path / "out").exists()  # nothing was created or computed


# ---------------------------------------------------------------- resumable: SIGKILL the real torchrun job, rerun it


def _launch(spec: dict, spec_path, log_path):
    """The command tasks.stages.privacy_finetune launches (torchrun_args), in its own process group so a kill takes every process."""
    import os
    import subprocess

    from tasks.config import REPO_ROOT
    from tasks.train.distributed import torchrun_args

    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as fh:  # a file, not a pipe: nobody reads a pipe while the test polls
        return subprocess.Popen(
            torchrun_args(spec["train"], spec_path=spec_path),
            cwd=REPO_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
    except FileNotFoundError:
        return False


@pytest.mark.slow  # a real torchrun job, SIGKILLed and rerun
@pytest.mark.parametrize("secure_noise", [False, True], ids=["seeded-noise", "csprng-noise"])
def test_sigkilled_torchrun_training_resumes_from_its_last_checkpoint(tmp_path, base_dir, secure_noise):
    """Seeded noise resumes bit for bit; CSPRNG noise (production) resumes to the same steps and ε with
    fresh draws after the checkpoint."""
    import hashlib
    import os
    import re
    import signal
    import time

    from tasks.train.checkpoint import describe

    # 32 records / batch 8: 4 steps an epoch, 12 steps; a checkpoint after every step
    spec = _spec(
        tmp_path,
        base_dir,
        n=32,
        batch_size=8,
        physical_batch_size=4,
        epochs=3.0,
        max_seq_len=24,
        checkpoint_every=1,
        checkpoint_keep=2,
        secure_noise=secure_noise,
    )
    ckpt_dir = tmp_path / "out" / "checkpoints"
    proc = _launch(spec, tmp_path / "spec.json", tmp_path / "killed.log")
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while (describe(ckpt_dir).get("step") or 0) < 2:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 2 within 60 s"
            time.sleep(0.02)
        # torchrun's process group. Its workers run in sessions of their own (torch elastic), so this kills
        # the launcher only; the recipe's parent-death signal must take the worker down with it.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        workers = {int(pid) for pid in re.findall(r"\[rank (\d+)\]", (tmp_path / "killed.log").read_text())}
        assert workers
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"worker(s) {workers} outlived the killed launcher"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in workers:  # only when an assertion above failed: leave no worker of this test behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "out" / "train_result.json").exists()
    killed_at = describe(ckpt_dir)["step"]  # read after the kill: nothing writes any more
    assert 2 <= killed_at < 12

    proc = _launch(spec, tmp_path / "spec.json", tmp_path / "resumed.log")  # what an Airflow retry runs
    assert proc.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    log_text = (tmp_path / "resumed.log").read_text()
    assert f"resuming from step {killed_at} of 12" in log_text
    resumed = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == 12
    assert not ckpt_dir.exists()  # the saved adapter supersedes the checkpoints

    ref_spec = {**spec, "out_dir": str(tmp_path / "ref"), "train": {**spec["train"], "checkpoint_every": 0}}
    reference = train(ref_spec)  # uninterrupted, never checkpointed
    assert reference["resumed_from_step"] is None
    assert resumed["epsilon"] == reference["epsilon"] > 0
    history = json.loads((tmp_path / "out" / "train_history.json").read_text())
    ref_history = json.loads((tmp_path / "ref" / "train_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 13))
    assert history[-1]["epsilon"] == ref_history[-1]["epsilon"]  # unrounded: the restored accountant is exact
    if secure_noise:  # fresh CSPRNG draws: the same privacy spend, other weights
        assert resumed["noise_source"] == reference["noise_source"] == "csprng (os.urandom)"
        return
    # bit-identical adapter: same CPU kernels, same batches, same RNG streams from the restored state
    digest = {
        d: hashlib.sha256((tmp_path / d / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
        for d in ("out", "ref")
    }
    assert digest["out"] == digest["ref"]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=0, abs=0, nan_ok=True)


def test_checkpointing_does_not_change_the_result(tmp_path, base_dir):
    """Saving reads RNG and sampler state without consuming it: a run checkpointed every step ends bit-identical."""
    a = train(_spec(tmp_path / "a", base_dir, n=32, max_seq_len=24, checkpoint_every=1, secure_noise=False))
    b = train(_spec(tmp_path / "b", base_dir, n=32, max_seq_len=24, checkpoint_every=0, secure_noise=False))
    assert a["epsilon"] == b["epsilon"] and a["final_loss"] == b["final_loss"]
    files = [p / "out" / "adapter" / "adapter_model.safetensors" for p in (tmp_path / "a", tmp_path / "b")]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert not (tmp_path / "a" / "out" / "checkpoints").exists()


# ---------------------------------------------------------------- launch command, DeepSpeed refusals


def test_torchrun_args_single_and_multi_node():
    import sys

    from tasks.train.distributed import torchrun_args

    one = torchrun_args(TrainConfig(nproc_per_node=2).model_dump(), spec_path="/r/spec.json")
    assert one == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max_restarts=0",
        "-m",
        "tasks.train.recipe",
        "--spec",
        "/r/spec.json",
    ]
    multi = TrainConfig(nnodes=2, nproc_per_node=4, rdzv_endpoint="node-0.cluster:29400").model_dump()
    cmd = torchrun_args(multi, spec_path="/r/spec.json", run_id="manual__2026-01-01T00:00:00+00:00")
    assert "--standalone" not in cmd
    assert cmd[3:8] == [
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=node-0.cluster:29400",
        "--rdzv_id=manual__2026-01-01T00_00_00_00_00",
    ]
    assert torchrun_args({**multi, "rdzv_id": "job7"}, spec_path="s")[7] == "--rdzv_id=job7"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_args({"nnodes": 2, "nproc_per_node": 1}, spec_path="s")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nnodes": 2}, r"train\.rdzv_endpoint: required when train\.nnodes=2"),
        ({"rdzv_endpoint": "no-port"}, r"train\.rdzv_endpoint: 'no-port' is not host:port"),
        (
            {"dp": False, "nproc_per_node": 3, "batch_size": 16, "physical_batch_size": 8},
            r"train\.batch_size \(16\) must be divisible",
        ),
        (
            {"deepspeed": "include/deepspeed/zero2.json"},
            r"train\.deepspeed: cannot be combined with dp: true.*per-sample",
        ),
        (
            {"deepspeed": "include/deepspeed/zero2.json", "dp": False, "batch_size": 12, "physical_batch_size": 8},
            r"multiple of physical_batch_size",
        ),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"checkpoint_keep": 0}, "checkpoint_keep"),
    ],
)
def test_launch_and_checkpoint_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_deepspeed_is_refused_before_compute_without_cuda(tmp_path, base_dir):
    assert not torch.cuda.is_available()  # the CI machine; on a GPU worker this refusal does not apply
    spec = _spec(tmp_path, base_dir, dp=False, deepspeed="include/deepspeed/zero2.json")
    with pytest.raises(RuntimeError, match=r"train\.deepspeed: needs CUDA GPUs"):
        train(spec)
    assert not (tmp_path / "out").exists()
    spec["train"]["dp"] = True  # a hand-written spec that skipped config validation
    with pytest.raises(ValueError, match=r"train\.deepspeed: cannot be combined with dp: true"):
        train(spec)


def test_deepspeed_without_the_package_is_refused(monkeypatch):
    """A CUDA machine without requirements-gpu.txt: CUDA is faked (there is none here), the package check is real."""
    import importlib.util

    from tasks.train.deepspeed import deepspeed_preflight

    assert importlib.util.find_spec("deepspeed") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"deepspeed package is not installed.*requirements-gpu\.txt"):
        deepspeed_preflight({"dp": False, "deepspeed": "include/deepspeed/zero2.json"})


def test_deepspeed_config_autos_are_filled_from_the_train_config(tmp_path):
    from tasks.train.deepspeed import deepspeed_config

    t = TrainConfig(
        dp=False, batch_size=64, physical_batch_size=8, deepspeed="include/deepspeed/zero3.json"
    ).model_dump()
    cfg = deepspeed_config(t, world=4, config_path=t["deepspeed"], bf16_supported=True)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (
        8,
        2,
        64,
    )
    assert cfg["bf16"]["enabled"] is True and cfg["zero_optimization"]["stage"] == 3
    assert deepspeed_config(t, world=1, config_path="include/deepspeed/zero2.json", bf16_supported=False)["bf16"] == {
        "enabled": False
    }
    with pytest.raises(FileNotFoundError, match=r"train\.deepspeed: .*missing\.json does not exist"):
        deepspeed_config(t, world=1, config_path=tmp_path / "missing.json", bf16_supported=False)
    with pytest.raises(ValueError, match="multiple of physical_batch_size"):
        deepspeed_config(t, world=3, config_path=t["deepspeed"], bf16_supported=False)


def test_freeze_with_lora_accepts_the_all_linear_shorthand():
    """PEFT refuses layers_to_transform with the string "all-linear"; the recipe resolves it per family."""
    from tasks.train.methods import resolve_targets

    assert resolve_targets("all-linear", "llama", "freeze") == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert resolve_targets("all-linear", "llama", "lora") == "all-linear"


def test_dp_rows_are_ordered_by_length_so_physical_batches_pad_less():
    """Poisson batches list records in index order; sorted rows make BatchMemoryManager's cuts
    length-homogeneous. Without DP the loader shuffles, so the order is left alone."""
    from tasks.train.data import make_loader

    rows = [[1] * n for n in (9, 2, 7, 4, 4, 1)]
    t = {"dp": True, "seed": 0, "batch_size": 2, "max_seq_len": 16}
    private = make_loader(rows, pad_id=0, t=t, rank=0, world=1)
    assert [len(r) for r in private.dataset.rows] == [1, 2, 4, 4, 7, 9]
    public = make_loader(rows, pad_id=0, t={**t, "dp": False}, rank=0, world=1)
    assert public.dataset.rows == rows
    # The recipe's path: make_dataset builds the record dataset, sorted under DP too.
    from tasks.train.data import make_dataset

    class Chars:  # one token per character
        bos_token = eos_token = ""

        def __call__(self, text, **kw):
            return {"input_ids": [1] * min(len(text), kw["max_length"])}

    built = make_dataset([["x" * n] for n in (9, 2, 7)], Chars(), {**t, "privacy_unit": "record"})
    assert [len(r) for r in built.rows] == [2, 7, 9]
