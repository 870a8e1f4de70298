"""MLflow registration and release: pyfunc logged with base model + adapter, version tags, aliases,
promotion / rejection / rollback / retirement, the champion's download, loading by alias."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.common import offline

offline.apply()

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from tasks.config import Paths  # noqa: E402
from tasks.release.registry import (  # noqa: E402
    RegistryError,
    audit_trail,
    champion,
    download_champion,
    mark_for_retirement,
    pip_requirements,
    promote,
    record_rejection,
    register_model,
    rollback,
)

NAME = "test-domain-lm"
TAGS = {"dataset_rev": "0" * 40, "epsilon": 7.93, "delta": 1e-5, "qa_exact_match": 0.5}


def tiny_tokenizer(first_token: str):
    """A byte-level tokenizer whose id 0 is `first_token` (a multi-byte token nothing encodes to)."""
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {first_token: 0, "<eos>": 1, "<pad>": 2}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def build_model(root: Path, first_token: str) -> tuple[Path, Path]:
    """A throwaway 2-layer Llama whose greedy output is always token 0, plus a non-trivial LoRA adapter.

    Zeroing the final norm makes every logit 0, so argmax picks id 0: the test
    knows exactly what greedy decoding must produce.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(first_token)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    base_dir, adapter_dir = root / "base", root / "adapter"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def forget_tracking_uri() -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI (MLflow 3) and Paths.mlflow_tracking_uri
    prefers that variable: without this, the first test's store would serve every later Paths(home)."""
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "restored-after-the-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    # id 0 decodes to " yes": greedy output is " yes" repeated until the 24-token cap.
    return build_model(tmp_path_factory.mktemp("model"), "Ġyes")


def test_register_tags_alias_and_serves(tmp_path, tiny_model):
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    res = register_model(
        paths=paths,
        model_name=NAME,
        alias="challenger",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=None,
        tags=TAGS,
        metrics={"qa_exact_match": 0.5, "toxicity_rate": 0.0},
    )
    assert set(res) == {"model_name", "version", "alias", "run_id", "model_uri"}
    assert res["model_name"] == NAME and res["version"] == 1 and res["alias"] == "challenger"
    assert res["model_uri"] == f"models:/{NAME}/1"
    json.dumps(res)  # XCom-safe
    assert mlflow.get_tracking_uri() == paths.mlflow_tracking_uri  # the embedded store under PFT_HOME

    client = MlflowClient()
    mv = client.get_model_version(NAME, "1")
    assert mv.run_id == res["run_id"]
    assert mv.tags == {k: str(v) for k, v in TAGS.items()}
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 1
    run = client.get_run(res["run_id"])
    assert run.data.metrics["qa_exact_match"] == 0.5
    assert run.info.experiment_id == mlflow.get_experiment_by_name("privacy_finetune").experiment_id

    # Serving side: resolve by alias, as tasks.serve.app does.
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    out = model.predict(pd.DataFrame({"question": ["hi"]}))
    assert len(out) == 1 and isinstance(out[0], str)
    assert out[0] == " ".join(["yes"] * 24)  # greedy, capped at 24 new tokens
    assert model.metadata.get_input_schema().input_names() == ["question"]

    # The artifact is self-contained: base model, adapter, the pyfunc code, pinned requirements.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "dl")))
    reqs = (local / "requirements.txt").read_text().split()
    assert set(pip_requirements()) <= set(reqs)
    assert any(local.rglob("adapter_config.json")) and any(local.rglob("tokenizer.json"))

    # Registering again makes version 2 and moves the alias.
    again = register_model(
        paths=paths,
        model_name=NAME,
        alias="challenger",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=None,
        tags={"dataset_rev": "1" * 40},
        metrics={},
    )
    assert again["version"] == 2
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 2
    assert client.get_model_version(NAME, "1").tags["dataset_rev"] == "0" * 40


def test_register_inside_existing_run(tmp_path, tiny_model):
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    from tasks.common.tracking import mlflow_experiment

    exp = mlflow_experiment(paths)
    with mlflow.start_run(experiment_id=exp) as run:
        run_id = run.info.run_id
    res = register_model(
        paths=paths,
        model_name=NAME,
        alias="candidate",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=run_id,
        tags={},
        metrics={"m": 1.0},
    )
    assert res["run_id"] == run_id and res["alias"] == "candidate"
    assert MlflowClient().get_model_version_by_alias(NAME, "candidate").run_id == run_id
    assert mlflow.active_run() is None


def test_answer_stops_at_newline(tmp_path):
    """Greedy output is "ok\\n" every step: the answer must be cut at the first newline."""
    from tasks.serve.pyfunc_model import DomainQAModel

    base_dir, adapter_dir = build_model(tmp_path, "ĠokĊ")  # byte-level for " ok\n"

    class Ctx:
        artifacts = {"base_model": str(base_dir), "adapter": str(adapter_dir)}

    model = DomainQAModel()
    model.load_context(Ctx())
    assert model.predict(None, pd.DataFrame({"question": ["a", "b"]})) == ["ok", "ok"]
    with pytest.raises(ValueError, match="'question' column"):
        model.predict(None, pd.DataFrame({"prompt": ["a"]}))


def test_missing_adapter_is_a_clear_error(tmp_path, tiny_model):
    base_dir, _ = tiny_model
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json"):
        register_model(
            paths=Paths(tmp_path),
            model_name=NAME,
            alias="challenger",
            base_model_dir=base_dir,
            adapter_dir=tmp_path / "nope",
            mlflow_run_id=None,
            tags={},
            metrics={},
        )


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "tasks.release.registry", "register", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--adapter" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tasks.release.registry", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("promote", "rollback", "show", "retire"))


# ---------------------------------------------------------------- release


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model):
    """Three versions of one model (the same tiny weights), alias challenger on v3."""
    base_dir, adapter_dir = tiny_model
    forget_tracking_uri()
    paths = Paths(tmp_path_factory.mktemp("registry"))
    for _ in range(3):
        register_model(
            paths=paths,
            model_name=NAME,
            alias="challenger",
            base_model_dir=base_dir,
            adapter_dir=adapter_dir,
            mlflow_run_id=None,
            tags={},
            metrics={},
        )
    return paths


def _aliases(paths: Paths, name: str = NAME) -> dict[str, int]:
    from tasks.release.registry import registry_client

    return {k: int(v) for k, v in registry_client(paths).get_registered_model(name).aliases.items()}


def _tags(paths: Paths, version: int, name: str = NAME) -> dict[str, str]:
    from tasks.release.registry import registry_client

    return registry_client(paths).get_model_version(name, str(version)).tags


def test_promote_rollback_chain(registry):
    paths = registry
    with pytest.raises(RegistryError, match="no 'champion' alias: nothing to roll back"):
        rollback(paths=paths, model_name=NAME)
    assert champion(paths, NAME) is None

    first = promote(
        paths=paths, model_name=NAME, version=1, approved_by="alice", approval="approved", comment="looks good\nship it"
    )
    assert first["changed"] and first["previous_champion"] is None
    assert (
        _tags(paths, 1)["previous_champion"] == "none" and _tags(paths, 1)["approval_comment"] == "looks good ship it"
    )
    promote(paths=paths, model_name=NAME, version=2, approved_by=None, approval="gates-only")
    third = promote(paths=paths, model_name=NAME, version=3, approved_by="bob", approval="approved", comment="x" * 2000)
    json.dumps(third)
    assert third["previous_champion"] == 2
    assert _aliases(paths) == {"champion": 3, "previous-champion": 2, "challenger": 3}
    t3 = _tags(paths, 3)
    assert t3["approved_by"] == "bob" and t3["approval"] == "approved" and t3["previous_champion"] == "2"
    assert len(t3["approval_comment"]) == 500 and t3["promoted_at"].endswith("+00:00")
    assert _tags(paths, 2)["approval"] == "gates-only" and _tags(paths, 2)["approved_by"] == "none"

    # Idempotent: promoting the champion again changes nothing.
    again = promote(paths=paths, model_name=NAME, version=3, approved_by="carol", approval="approved")
    assert not again["changed"] and again["previous_champion"] == 2 and _tags(paths, 3)["approved_by"] == "bob"

    back = rollback(paths=paths, model_name=NAME, rolled_back_by="oncall", reason="latency")
    assert (back["version"], back["rolled_back_from"], back["previous_champion"]) == (2, 3, 1)
    assert _aliases(paths)["champion"] == 2 and _aliases(paths)["previous-champion"] == 1
    assert _tags(paths, 3)["rolled_back_to"] == "2" and "rolled_back_at" in _tags(paths, 3)
    back = rollback(paths=paths, model_name=NAME)
    assert (back["version"], back["previous_champion"]) == (1, None)
    assert "previous-champion" not in _aliases(paths)
    with pytest.raises(RegistryError, match="v1 is the first champion"):
        rollback(paths=paths, model_name=NAME)

    # Explicit target: only a version that was champion before; not the champion itself.
    with pytest.raises(RegistryError, match="already the champion"):
        rollback(paths=paths, model_name=NAME, to_version=1)
    with pytest.raises(RegistryError, match="no version 9"):
        rollback(paths=paths, model_name=NAME, to_version=9)
    forward = rollback(paths=paths, model_name=NAME, to_version=3)
    assert forward["version"] == 3 and forward["previous_champion"] == 2

    # Re-promotion clears the rollback fields; a retired version is skipped by the chain.
    promote(paths=paths, model_name=NAME, version=2, approved_by="dave", approval="approved")
    assert _tags(paths, 2)["previous_champion"] == "3" and "rolled_back_at" not in _tags(paths, 2)
    retired = mark_for_retirement(
        paths=paths, model_name=NAME, version=3, reason="erasure request ER-1", requested_by="dpo"
    )
    assert retired["retire"] and not retired["is_champion"]
    assert _tags(paths, 3)["retire"] == "true" and _tags(paths, 3)["retire_reason"] == "erasure request ER-1"
    with pytest.raises(RegistryError, match="marked for retirement"):
        promote(paths=paths, model_name=NAME, version=3, approved_by="eve", approval="approved")
    with pytest.raises(RegistryError, match=r"skipped retired, rejected or deleted versions \[3\]"):
        rollback(paths=paths, model_name=NAME)  # 2 replaced 3 (retired), and 3's chain is not followed

    info = champion(paths, NAME)
    assert info["version"] == 2 and "champion" in info["aliases"] and info["tags"]["approved_by"] == "dave"
    events = [(e["event"], e["version"]) for e in audit_trail(paths, NAME)]
    assert events == [
        ("promote", 1),
        ("promote", 2),
        ("promote", 3),
        ("rollback", 2),
        ("rollback", 1),
        ("rollback", 3),
        ("promote", 2),
        ("retire", 3),
    ]


def test_promote_refuses_bad_input(registry):
    with pytest.raises(ValueError, match="approval must be one of"):
        promote(paths=registry, model_name=NAME, version=1, approved_by="a", approval="yes")
    with pytest.raises(ValueError, match="needs approved_by"):
        promote(paths=registry, model_name=NAME, version=1, approved_by=None, approval="approved")
    with pytest.raises(RegistryError, match="has no version 42"):
        promote(paths=registry, model_name=NAME, version=42, approved_by="a", approval="approved")
    with pytest.raises(RegistryError, match="has no version 1"):
        promote(paths=registry, model_name="no-such-model", version=1, approved_by="a", approval="approved")


def test_rejection_tags(tmp_path, tiny_model):
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    for _ in range(2):
        register_model(
            paths=paths,
            model_name=NAME,
            alias="challenger",
            base_model_dir=base_dir,
            adapter_dir=adapter_dir,
            mlflow_run_id=None,
            tags={},
            metrics={},
        )
    promote(paths=paths, model_name=NAME, version=1, approved_by=None, approval="gates-only")
    res = record_rejection(
        paths=paths,
        model_name=NAME,
        version=2,
        rejected_by="alice",
        comment="EM fell on claims questions\x00" + "y" * 900,
    )
    json.dumps(res)
    tags = _tags(paths, 2)
    assert tags["decision"] == "rejected" and tags["rejected_by"] == "alice" and tags["rejected_at"]
    assert (
        tags["rejection_comment"].startswith("EM fell on claims questions ") and len(tags["rejection_comment"]) == 500
    )
    assert _aliases(paths)["champion"] == 1  # a rejection never moves the champion
    with pytest.raises(RegistryError, match="was rejected by alice"):
        promote(paths=paths, model_name=NAME, version=2, approved_by="bob", approval="approved")
    with pytest.raises(RegistryError, match="roll back first"):
        record_rejection(paths=paths, model_name=NAME, version=1, rejected_by="bob", comment=None)
    again = record_rejection(
        paths=paths,
        model_name=NAME,
        version=2,
        rejected_by="alice",
        comment="EM fell on claims questions\x00" + "y" * 900,
    )
    assert again["rejected_at"] == res["rejected_at"]  # a retried task records nothing twice
    assert [e["event"] for e in audit_trail(paths, NAME)] == ["promote", "reject"]

    # A demoted champion that a reviewer rejects afterwards is no rollback target.
    register_model(
        paths=paths,
        model_name=NAME,
        alias="challenger",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=None,
        tags={},
        metrics={},
    )
    promote(paths=paths, model_name=NAME, version=3, approved_by="bob", approval="approved")
    record_rejection(paths=paths, model_name=NAME, version=1, rejected_by="carol", comment="bias found later")
    with pytest.raises(RegistryError, match=r"skipped retired, rejected or deleted versions \[1\]"):
        rollback(paths=paths, model_name=NAME)
    with pytest.raises(RegistryError, match="v1 was rejected by carol"):
        rollback(paths=paths, model_name=NAME, to_version=1)


def test_download_champion_and_load_by_alias(tmp_path, tiny_model):
    """What evaluation (champion comparison) and serving do with the champion."""
    from tasks.eval.lm import load_causal_lm

    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    assert download_champion(paths, NAME, tmp_path / "none") is None
    register_model(
        paths=paths,
        model_name=NAME,
        alias="challenger",
        base_model_dir=base_dir,
        adapter_dir=adapter_dir,
        mlflow_run_id=None,
        tags={},
        metrics={},
    )
    promote(paths=paths, model_name=NAME, version=1, approved_by="alice", approval="approved")

    got = download_champion(paths, NAME, tmp_path / "champ")
    assert got["version"] == 1
    assert (Path(got["base_model_dir"]) / "config.json").is_file()
    assert (Path(got["adapter_dir"]) / "adapter_config.json").is_file()
    assert Path(got["base_model_dir"]).is_relative_to(tmp_path / "champ")
    model, tokenizer = load_causal_lm(Path(got["base_model_dir"]), Path(got["adapter_dir"]))
    assert tokenizer.decode([0]) == " yes"

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert model.predict(pd.DataFrame({"question": ["What is covered?"]}))[0] == " ".join(["yes"] * 24)
    assert model.predict(pd.DataFrame({"question": ["hi"]}), params={"max_new_tokens": 3}) == ["yes yes yes"]
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["question"] and sig.params.to_dict()[0]["name"] == "max_new_tokens"
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "mlmodel"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert list(example.columns) == ["question"] and len(example) == 1
    with pytest.raises(Exception, match="max_new_tokens must be an integer from 1 to 256"):
        model.predict(pd.DataFrame({"question": ["hi"]}), params={"max_new_tokens": 10_000})


@pytest.mark.slow  # CLI subprocesses (promote, rollback, show), each a fresh interpreter importing mlflow
def test_cli_promote_show_rollback(tmp_path, tiny_model):
    """`make rollback` runs `python -m tasks.release.registry rollback`; errors exit 2 with a message, no traceback."""
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    for _ in range(2):
        register_model(
            paths=paths,
            model_name=NAME,
            alias="challenger",
            base_model_dir=base_dir,
            adapter_dir=adapter_dir,
            mlflow_run_id=None,
            tags={},
            metrics={},
        )
    cli = [sys.executable, "-m", "tasks.release.registry", "--home", str(tmp_path), "--model-name", NAME]
    script = (
        "import sys; from tasks.release.registry import main; "
        "sys.exit(sum(main(a) for a in [sys.argv[1:5] + ['promote', '--version', '1', '--gates-only'], "
        "sys.argv[1:5] + ['promote', '--version', '2', '--approved-by', 'alice'], "
        "['rollback', *sys.argv[1:5]], ['show', '--json', *sys.argv[1:5]]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "--home", str(tmp_path), "--model-name", NAME], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "champion of test-domain-lm is now v1 (rolled back from v2)" in out.stderr
    state = json.loads(out.stdout[out.stdout.rindex('{\n  "model_name"') :])
    assert state["champion"]["version"] == 1 and [v["version"] for v in state["versions"]] == [1, 2]
    assert [v["aliases"] for v in state["versions"]] == [["champion"], ["challenger"]]
    assert [e["event"] for e in state["audit"]] == ["promote", "promote", "rollback"]
    out = subprocess.run([*cli, "rollback"], capture_output=True, text=True)
    assert out.returncode == 2 and "error: test-domain-lm v1 is the first champion" in out.stderr
    assert "Traceback" not in out.stderr
