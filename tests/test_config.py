from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config import (
    InvalidRunId,
    Paths,
    PipelineConfig,
    PolicyViolation,
    apply_overrides,
    load_config,
    resolve_params,
    safe_run_id,
)


def test_committed_config_validates():
    cfg = load_config()
    assert cfg.train.dp is True and cfg.train.target_epsilon > 0


def test_params_override_a_documented_subset():
    cfg = apply_overrides(PipelineConfig(), {"target_epsilon": 3.0, "epochs": None, "base_model_size": "tiny"})
    assert cfg.train.target_epsilon == 3.0 and cfg.base_model.size == "tiny"
    assert cfg.train.epochs == PipelineConfig().train.epochs  # None keeps the config value
    with pytest.raises(ValueError, match="unknown Param 'batch'"):
        apply_overrides(PipelineConfig(), {"batch": 3})


@pytest.mark.parametrize("param", ["model_name", "approvers", "gates", "epsilon_budget", "allow_non_private"])
def test_policy_is_not_a_param(param):
    with pytest.raises(ValueError, match=f"unknown Param '{param}'"):
        apply_overrides(PipelineConfig(), {param: "anything"})


def test_a_param_may_tighten_policy_but_never_loosen_it():
    strict = PipelineConfig()  # require_approval true, DP on, ε 8
    cfg, refused = resolve_params(strict, {"require_approval": False, "dp": False, "target_epsilon": 50.0})
    assert cfg.registry.require_approval is True and cfg.train.dp is True and cfg.train.target_epsilon == 8.0
    assert sorted(r["param"] for r in refused) == ["dp", "require_approval", "target_epsilon"]
    assert all("stricter, not looser" in r["reason"] for r in refused)
    lax = PipelineConfig.model_validate(
        {"registry": {"require_approval": False}, "train": {"dp": False}, "privacy": {"allow_non_private": True}}
    )
    cfg, refused = resolve_params(lax, {"require_approval": True, "dp": True, "target_epsilon": 2.0})
    assert (cfg.registry.require_approval, cfg.train.dp, cfg.train.target_epsilon, refused) == (True, True, 2.0, [])


def test_base_model_param_must_name_an_allowed_directory(tmp_path):
    digest = "ab" * 32
    cfg = PipelineConfig.model_validate(
        {"base_model": {"allowed": [{"path": str(tmp_path / "llama"), "sha256": digest}]}}
    )
    with pytest.raises(PolicyViolation, match="not an allowed base model"):
        apply_overrides(cfg, {"base_model_path": str(tmp_path / "memorised-model")})
    with pytest.raises(PolicyViolation, match="none are configured"):
        apply_overrides(PipelineConfig(), {"base_model_path": str(tmp_path / "llama")})
    chosen = apply_overrides(cfg, {"base_model_path": str(tmp_path / "llama" / ".." / "llama")})
    from tasks.config import expected_base_sha256

    assert chosen.base_model.path == str(tmp_path / "llama") and expected_base_sha256(chosen) == digest


def test_a_deployment_config_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 1.5\nregistry:\n  model_name: base-name\n")
    (tmp_path / "site.yaml").write_text("extends: base.yaml\nregistry:\n  require_approval: false\n")
    cfg = load_config(tmp_path / "site.yaml")
    assert (cfg.train.epochs, cfg.registry.model_name, cfg.registry.require_approval) == (1.5, "base-name", False)
    demo = load_config(__import__("tasks.config").config.INCLUDE_DIR / "config" / "demo.yaml")
    assert demo.registry.require_approval is False
    # the demo trains the committed recipe; only its thread count (it runs alone on the machine) differs
    assert demo.train.cpu_threads == 2 and demo.train.model_copy(update={"cpu_threads": 1}) == load_config().train
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    "override, field",
    [({"target_epsilon": 0}, "target_epsilon"), ({"lora_r": 0}, "lora_r"), ({"epochs": -1}, "epochs")],
)
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


def test_run_ids_that_clean_alike_keep_distinct_folders(tmp_path):
    # ... including a run named after another run's cleaned name
    ids = [
        "manual__2026-01-01T00:00:00+00:00",
        "manual__2026-01-01T00_00_00_00_00",
        "a+b",
        "a_b",
        "a b",
        "a..b",
        safe_run_id("a+b"),
        "x.lock",
        "x",
        "monthly-2026-01",
    ]
    keys = [safe_run_id(i) for i in ids]
    assert len(set(keys)) == len(ids), dict(zip(ids, keys))
    assert safe_run_id("monthly-2026-01") == "monthly-2026-01"  # a safe id keeps its name
    assert all(Paths(tmp_path).run_dir(i).parent == tmp_path / "runs" for i in ids)
    assert all(".." not in k and not k.endswith(".lock") for k in keys)
    for unnamed in ("___", "._", "+", "..", "", "."):
        with pytest.raises(InvalidRunId):
            safe_run_id(unnamed)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"method": "adapter"}, "adapter.*cannot run under DP.*dp: false"),
        ({"method": "prefix", "grad_sample_mode": "ghost"}, "grad_sample_mode.*prefix"),
        ({"method": "lora", "freeze_with_lora": True}, "freeze_with_lora"),
        ({"target_modules": "everything"}, "target_modules"),
        ({"target_modules": []}, "target_modules"),
        ({"method": "dora"}, "method"),
        ({"grad_sample_mode": "ew"}, "grad_sample_mode"),
    ],
)
def test_method_and_dp_combinations_refused_at_validation(train, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate({"train": train})


def test_methods_that_run_validate():
    for train in (
        {"method": "adapter", "dp": False},
        {"method": "prefix"},
        {"method": "full"},
        {"method": "freeze", "trainable_layers": 2, "freeze_with_lora": True, "target_modules": "all"},
        {"method": "lora", "target_modules": ["q_proj", "v_proj"], "grad_sample_mode": "ghost"},
    ):
        assert PipelineConfig.model_validate({"train": train}).train.method == train["method"]
    cfg = apply_overrides(
        PipelineConfig(),
        {"train_method": "freeze", "trainable_layers": 2, "freeze_with_lora": True, "grad_sample_mode": "hooks"},
    )
    assert (cfg.train.method, cfg.train.trainable_layers, cfg.train.grad_sample_mode) == ("freeze", 2, "hooks")
