"""
### privacy_finetune — fine-tune a domain LLM on sensitive data, privately

Ingests the landing files, validates them with Great Expectations, masks personal
data with Presidio (one mapped task per landing partition / shard, so Celery workers share
the work), versions the masked set with DVC (published as the Asset
`privatetune-masked-dataset`), fine-tunes the base model with
LoRA under differential privacy (Opacus DP-SGD, launched with `torchrun`), evaluates
base, fine-tuned and current champion side by side (lm-eval domain QA: exact match, F1,
relevance; robustness, fairness, calibration, efficiency; toxicity; PII leakage, canary
exposure, membership inference) into a HELM-style report, and registers the model in
MLflow as `challenger`. Promotion gates (config `gates:`) must pass; then, when
`require_approval` is on, a reviewer approves or rejects in **Required Actions**;
approval moves the `champion` alias.

Every run writes `$PFT_HOME/runs/<run_id>/report.json`, `report.md` and a model card;
the report is linked from the approval request and served under *PrivateTune reports*.
Trigger it with the form: empty fields keep the deployment's config (`include/config/pipeline.yaml`).
Approval, approvers, gates, the privacy budget, the model name and the allowed base models are that
config's policy: the form can make a run stricter (require approval, a lower ε), never looser.
Tasks pass only paths, counts, revisions and metrics between them, never record text.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from tasks.airflow.assets import MASKED_DATASET, dataset_event_extra
from tasks.airflow.dag_parts import DEFAULT_ARGS, TRAIN_POOL, TRAIN_QUEUE, TRAINING_PARAMS, masking, release, run_stage
from tasks.stages import privacy_finetune as finetune


@dag(
    dag_id="privacy_finetune",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["privatetune", "fine-tuning", "differential-privacy"],
    default_args=DEFAULT_ARGS,
    params=TRAINING_PARAMS,
    render_template_as_native_obj=True,
)
def privacy_finetune():
    @task
    def prepare(params=None, run_id=None) -> dict:
        """Resolve the config with the run's Params and build (or reuse) the base model."""
        return run_stage(finetune.stage_prepare, run_id, dict(params or {}), dag_id="privacy_finetune")

    @task
    def ingest(prepared: dict) -> dict:
        """Read landing JSONL/CSV; bad rows go to quarantine with file, line, field and reason."""
        return run_stage(finetune.stage_ingest, prepared["run_id"])

    @task
    def validate(prepared: dict, ingested: dict) -> dict:
        """Great Expectations suite; a failing 'fail' expectation stops the run before masking."""
        return run_stage(finetune.stage_validate, prepared["run_id"], ingested)

    @task(outlets=[MASKED_DATASET])
    def version(prepared: dict, masked: dict, outlet_events=None) -> dict:
        """DVC: commit and push the masked set (identical input keeps its revision); publish the
        version as the Asset privatetune-masked-dataset with revision and counts in the event's extra."""
        versioned = run_stage(finetune.stage_version, prepared["run_id"], masked)
        outlet_events[MASKED_DATASET].extra = dataset_event_extra(prepared["run_id"], versioned, masked)
        return versioned

    @task(execution_timeout=timedelta(hours=6), queue=TRAIN_QUEUE, pool=TRAIN_POOL)
    def train(prepared: dict, versioned: dict) -> dict:
        """torchrun -m tasks.train.recipe: PEFT + Opacus DP-SGD on the versioned masked set; a retry resumes
        from the last checkpoint, and the privacy ledger is charged once per run."""
        return run_stage(finetune.stage_train, prepared["run_id"], prepared, versioned)

    prepared = prepare()
    ingested = ingest(prepared)
    validated = validate(prepared, ingested)
    masked = masking(prepared, ingested, validated)
    versioned = version(prepared, masked)
    release("privacy_finetune", prepared, versioned, train(prepared, versioned))


privacy_finetune()
