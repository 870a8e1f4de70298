from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config import PipelineConfig, Paths, apply_overrides, load_config, safe_run_id


def test_committed_config_validates():
    cfg = load_config()
    assert cfg.train.dp is True and cfg.train.target_epsilon > 0


def test_params_override_a_documented_subset():
    cfg = apply_overrides(PipelineConfig(), {"target_epsilon": 3.0, "epochs": None, "base_model_size": "tiny"})
    assert cfg.train.target_epsilon == 3.0 and cfg.base_model.size == "tiny"
    assert cfg.train.epochs == PipelineConfig().train.epochs  # None keeps the config value
    with pytest.raises(ValueError, match="unknown override 'batch'"):
        apply_overrides(PipelineConfig(), {"batch": 3})


@pytest.mark.parametrize("override, field", [({"target_epsilon": 0}, "target_epsilon"), ({"lora_r": 0}, "lora_r"),
                                             ({"epochs": -1}, "epochs")])
def test_bad_hyperparameters_are_rejected_naming_the_field(override, field):
    with pytest.raises(ValidationError, match=field):
        apply_overrides(PipelineConfig(), override)


def test_physical_batch_must_fit_the_logical_batch():
    with pytest.raises(ValidationError, match="physical_batch_size"):
        PipelineConfig.model_validate({"train": {"batch_size": 8, "physical_batch_size": 16}})


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValidationError, match="learning_rat"):
        PipelineConfig.model_validate({"train": {"learning_rat": 1e-3}})


def test_paths_derive_from_one_root(tmp_path):
    p = Paths(tmp_path)
    assert p.run_dir("manual__2026-01-01T00:00:00+00:00").parent == tmp_path / "runs"
    assert ":" not in safe_run_id("manual__2026-01-01T00:00:00+00:00")
    assert p.mlflow_tracking_uri.startswith("sqlite:///") and str(tmp_path) in p.mlflow_tracking_uri


@pytest.mark.parametrize("train, message", [
    ({"method": "adapter"}, "adapter.*cannot run under DP.*dp: false"),
    ({"method": "prefix", "grad_sample_mode": "ghost"}, "grad_sample_mode.*prefix"),
    ({"method": "lora", "freeze_with_lora": True}, "freeze_with_lora"),
    ({"target_modules": "everything"}, "target_modules"),
    ({"target_modules": []}, "target_modules"),
    ({"method": "dora"}, "method"),
    ({"grad_sample_mode": "ew"}, "grad_sample_mode"),
])
def test_method_and_dp_combinations_refused_at_validation(train, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate({"train": train})


def test_methods_that_run_validate():
    for train in ({"method": "adapter", "dp": False}, {"method": "prefix"}, {"method": "full"},
                  {"method": "freeze", "trainable_layers": 2, "freeze_with_lora": True, "target_modules": "all"},
                  {"method": "lora", "target_modules": ["q_proj", "v_proj"], "grad_sample_mode": "ghost"}):
        assert PipelineConfig.model_validate({"train": train}).train.method == train["method"]
    cfg = apply_overrides(PipelineConfig(), {"train_method": "freeze", "trainable_layers": 2, "freeze_with_lora": True,
                                             "grad_sample_mode": "hooks"})
    assert (cfg.train.method, cfg.train.trainable_layers, cfg.train.grad_sample_mode) == ("freeze", 2, "hooks")
