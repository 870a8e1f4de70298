"""MLflow registration: pyfunc logged with base model + adapter, version tags, alias, serving predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import offline

offline.apply()

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from tasks.config import Paths  # noqa: E402
from tasks.register import pip_requirements, register_model  # noqa: E402

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
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    # id 0 decodes to " yes": greedy output is " yes" repeated until the 24-token cap.
    return build_model(tmp_path_factory.mktemp("model"), "Ġyes")


def test_register_tags_alias_and_serves(tmp_path, tiny_model):
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    res = register_model(paths=paths, model_name=NAME, alias="challenger", base_model_dir=base_dir,
                         adapter_dir=adapter_dir, mlflow_run_id=None, tags=TAGS,
                         metrics={"qa_exact_match": 0.5, "toxicity_rate": 0.0})
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

    # Serving side: resolve by alias, as tasks.serve does.
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
    again = register_model(paths=paths, model_name=NAME, alias="challenger", base_model_dir=base_dir,
                           adapter_dir=adapter_dir, mlflow_run_id=None, tags={"dataset_rev": "1" * 40}, metrics={})
    assert again["version"] == 2
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 2
    assert client.get_model_version(NAME, "1").tags["dataset_rev"] == "0" * 40


def test_register_inside_existing_run(tmp_path, tiny_model):
    base_dir, adapter_dir = tiny_model
    paths = Paths(tmp_path)
    from tasks.tracking import mlflow_experiment

    exp = mlflow_experiment(paths)
    with mlflow.start_run(experiment_id=exp) as run:
        run_id = run.info.run_id
    res = register_model(paths=paths, model_name=NAME, alias="candidate", base_model_dir=base_dir,
                         adapter_dir=adapter_dir, mlflow_run_id=run_id, tags={}, metrics={"m": 1.0})
    assert res["run_id"] == run_id and res["alias"] == "candidate"
    assert MlflowClient().get_model_version_by_alias(NAME, "candidate").run_id == run_id
    assert mlflow.active_run() is None


def test_answer_stops_at_newline(tmp_path):
    """Greedy output is "ok\\n" every step: the answer must be cut at the first newline."""
    from tasks.pyfunc_model import DomainQAModel

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
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        register_model(paths=Paths(tmp_path), model_name=NAME, alias="challenger", base_model_dir=base_dir,
                       adapter_dir=tmp_path / "nope", mlflow_run_id=None, tags={}, metrics={})


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "tasks.register", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--adapter" in out.stdout
