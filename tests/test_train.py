"""Training recipe: updates are real under DP, frozen weights stay, ε stays under target, bad input fails early."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tasks.config import TrainConfig
from tasks.train import train
from tests.helpers import masked_records, random_llama


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return random_llama(tmp_path_factory.mktemp("base"))


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
    ({"target_modules": ["not_a_layer"]}, 64, "target_modules"),
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
