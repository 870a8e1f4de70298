"""Training recipe: every method trains what it should (and nothing else) under DP on Llama and GPT-2,
ε stays under target, clipping modes agree, bad configuration fails before compute."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tasks.config import TrainConfig
from tasks.train import train
from tests.helpers import masked_records, random_gpt2, random_llama


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return random_llama(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"))


def _spec(tmp_path, base_dir, n=64, **train_overrides):
    cfg = TrainConfig(**{"batch_size": 16, "physical_batch_size": 8, "epochs": 1.0, "lora_r": 4, "lora_alpha": 8,
                         "max_seq_len": 48, **train_overrides}).model_dump()
    return {"train": cfg, "base_model_dir": str(base_dir), "out_dir": str(tmp_path / "out"),
            "data_path": str(masked_records(tmp_path / "data" / "train.jsonl", n))}


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


@pytest.mark.parametrize("overrides, n, message", [
    ({"batch_size": 128, "physical_batch_size": 8}, 64, "batch_size"),
    ({"target_delta": 0.5}, 64, "target_delta"),
    ({"target_delta": 1 / 64}, 64, "target_delta"),  # δ must be strictly below 1/N
    ({"target_modules": ["not_a_layer"]}, 64, "target_modules"),
    ({"method": "freeze", "freeze_with_lora": True, "target_modules": ["c_attn"]}, 64, "target_modules"),
    ({"method": "freeze", "trainable_layers": 3}, 64, "trainable_layers"),
    ({"method": "full", "grad_sample_mode": "ghost"}, 64, "grad_sample_mode"),  # tied embeddings
])
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

    from tasks.train import apply_peft

    spec = _spec(tmp_path, base_dir, dp=False, learning_rate=1e-30)
    train(spec)
    torch.manual_seed(spec["train"]["seed"])
    model = apply_peft(AutoModelForCausalLM.from_pretrained(base_dir), spec)
    initial = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_A" in k}
    trained = {k: v for k, v in load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors").items()
               if "lora_A" in k}
    assert trained and trained.keys() == initial.keys()
    assert all(torch.equal(initial[k], trained[k]) for k in trained)


# ---------------------------------------------------------------- methods × model families × DP

METHODS = {  # name → overrides; trainable-name fragments that must move
    "lora_all_linear": ({"method": "lora", "target_modules": "all-linear"}, "lora_"),
    "prefix": ({"method": "prefix", "num_virtual_tokens": 4}, "prompt_encoder"),
    "freeze": ({"method": "freeze", "trainable_layers": 1}, ".1."),
    "freeze_lora": ({"method": "freeze", "trainable_layers": 1, "freeze_with_lora": True, "target_modules": "all"}, "lora_"),
    "full": ({"method": "full", "learning_rate": 0.05}, ""),
}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_under_dp_on_both_families(tmp_path, base_dir, gpt2_dir, family, method):
    overrides, _ = METHODS[method]
    result = train(_spec(tmp_path, base_dir if family == "llama" else gpt2_dir, n=32, batch_size=16,
                         max_seq_len=24, **overrides))
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
    result = train(_spec(tmp_path, base_dir, n=32, max_seq_len=24, method="freeze", trainable_layers=1,
                         freeze_with_lora=True))
    adapter = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".layers.1." in k for k in adapter)  # the random Llama has 2 blocks
    assert result["trainable_tensors_changed"] == 1.0 and result["frozen_tensors_changed"] == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapter_trains_without_dp_and_is_refused_under_dp(tmp_path, base_dir, gpt2_dir, family):
    with pytest.raises(ValueError, match="adapter.*cannot run under DP"):
        TrainConfig(method="adapter")
    result = train(_spec(tmp_path, base_dir if family == "llama" else gpt2_dir, n=32, max_seq_len=24,
                         method="adapter", target_modules="all", dp=False))
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
        runs[mode] = train(_spec(tmp_path / mode, model_dir, n=32, max_seq_len=24, grad_sample_mode=mode,
                                 target_epsilon=3.0))
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
    from tasks.train import epsilon_after, max_steps_within

    mech = {"noise": 0.8, "sample_rate": 0.25, "delta": 1e-3, "accountant": "rdp"}
    target = epsilon_after(10, **mech)  # exactly 10 steps' worth of ε
    cap = max_steps_within(target, 40, **mech)
    assert cap == 10 and epsilon_after(cap + 1, **mech) > target
    assert max_steps_within(target, 6, **mech) == 6  # below the limit: the plan stands


def test_rdp_is_the_fallback_when_prv_cannot_compute(caplog):
    from tasks.train import epsilon_after, noise_for_target

    # a tiny sampling rate over 2 steps: Opacus's PRV raises "Cannot compute epsilon" here
    noise, accountant = noise_for_target(target_epsilon=3.0, delta=1e-3, sample_rate=1e-4, steps=2)
    assert accountant == "rdp" and "falling back to RDP" in caplog.text
    assert epsilon_after(2, noise=noise, sample_rate=1e-4, delta=1e-3, accountant="rdp") <= 3.0


def test_result_names_the_accountant_and_noise_source(tmp_path, base_dir):
    result = train(_spec(tmp_path, base_dir, n=32, max_seq_len=24))
    assert result["accountant"] == "prv" and result["steps"] == result["planned_steps"]
    assert result["privacy"].startswith("DP (epsilon=")


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
        "training/loss_curve.png", "training/epsilon_curve.png"}


def test_out_of_memory_names_the_physical_batch():
    from tasks.train import _OomHint

    t = {"physical_batch_size": 64, "max_seq_len": 96}
    with pytest.raises(MemoryError, match=r"smaller train\.physical_batch_size \(e\.g\. 32\)"):
        with _OomHint(t):
            torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure (CPU allocator)
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass through unchanged
        with _OomHint(t):
            raise ValueError("unrelated")


@pytest.mark.parametrize("make_dir, message", [
    (lambda d: d / "missing", "no config.json"),
    (lambda d: (d / "cls").mkdir() or ((d / "cls" / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"})) and d / "cls"),
     "not a causal LM"),
])
def test_model_dir_is_checked_before_loading(tmp_path, base_dir, make_dir, message):
    spec = _spec(tmp_path, base_dir)
    spec["base_model_dir"] = str(make_dir(tmp_path))
    with pytest.raises((FileNotFoundError, ValueError), match=f"base_model.path.*{message}"):
        train(spec)
    assert not (tmp_path / "out").exists()  # nothing was created or computed
