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
Trigger it with the form: empty fields keep the values of `include/config/pipeline.yaml`.
Tasks pass only paths, counts, revisions and metrics between them, never record text.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tasks import pipeline
from tasks.approval import DECISION_XCOM_KEY, RecordedApprovalOperator
from tasks.assets import MASKED_DATASET, dataset_event_extra
from tasks.config import load_config
from tasks.notify import on_failure as notify_failure

NULLABLE_NUMBER = ["null", "number"]
TRAIN_QUEUE = "gpu"
TRAIN_POOL = "gpu"
# Who may answer the approval request (config registry.approvers; empty = anyone allowed to act on the DAG).
APPROVERS = [{"id": name, "name": name} for name in load_config().registry.approvers] or None


def run_stage(stage, *args, **kwargs):
    """Run a stage; input, secret and gate failures fail at once instead of burning retries."""
    try:
        return stage(*args, **kwargs)
    except pipeline.permanent_errors() as err:
        raise AirflowFailException(str(err)) from err


@dag(
    dag_id="privacy_finetune",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["privatetune", "fine-tuning", "differential-privacy"],
    default_args={
        "owner": "privatetune",
        "retries": 1,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=2),
        "on_failure_callback": notify_failure,  # config notify: webhook or email; never masks the failure
    },
    params={
        "train_method": Param(None, type=["null", "string"], enum=[None, "lora", "adapter", "prefix", "freeze", "full"],
                              description="lora | adapter (IA3, non-private only) | prefix | freeze (top N blocks) | "
                                          "full (baseline); empty = config"),
        "trainable_layers": Param(None, type=["null", "integer"], minimum=1, description="freeze: train the top N blocks"),
        "freeze_with_lora": Param(None, type=["null", "boolean"], description="freeze: LoRA on the top blocks only"),
        "grad_sample_mode": Param(None, type=["null", "string"], enum=[None, "auto", "hooks", "ghost", "functorch"],
                                  description="DP clipping: per-sample hooks, ghost clipping, functorch; auto = measured best"),
        "dp": Param(True, type="boolean", description="train under differential privacy (DP-SGD); false = an explicit "
                                                      "non-private run, marked as such in the report, MLflow and registry"),
        "target_epsilon": Param(None, type=NULLABLE_NUMBER, exclusiveMinimum=0, description="privacy budget ε"),
        "epochs": Param(None, type=NULLABLE_NUMBER, exclusiveMinimum=0, description="training epochs"),
        "learning_rate": Param(None, type=NULLABLE_NUMBER, exclusiveMinimum=0),
        "lora_r": Param(None, type=["null", "integer"], minimum=1, description="LoRA rank"),
        "base_model_path": Param(None, type=["null", "string"], description="local HF causal-LM dir; empty = demo model"),
        "base_model_size": Param(None, type=["null", "string"], enum=[None, "demo", "tiny"]),
        "qa_limit": Param(None, type=["null", "integer"], minimum=1, description="evaluate only N questions"),
        "model_name": Param(None, type=["null", "string"], description="registered model name"),
        "require_approval": Param(None, type=["null", "boolean"],
                                  description="a reviewer approves in Required Actions before promotion; "
                                              "empty = config (registry.require_approval, default true)"),
    },
    render_template_as_native_obj=True,
)
def privacy_finetune():
    @task
    def prepare(params=None, run_id=None) -> dict:
        """Resolve the config with the run's Params and build (or reuse) the base model."""
        return run_stage(pipeline.stage_prepare, run_id, dict(params or {}))

    @task
    def ingest(prepared: dict) -> dict:
        """Read landing JSONL/CSV; bad rows go to quarantine with file, line, field and reason."""
        return run_stage(pipeline.stage_ingest, prepared["run_id"])

    @task
    def validate(prepared: dict, ingested: dict) -> dict:
        """Great Expectations suite; a failing 'fail' expectation stops the run before masking."""
        return run_stage(pipeline.stage_validate, prepared["run_id"], ingested)

    @task
    def mask_plan(prepared: dict, ingested: dict, validated: dict) -> list[dict]:
        """Split the staged rows into shards: one per landing partition, at most mask.shard_rows rows each."""
        return run_stage(pipeline.stage_mask_plan, prepared["run_id"], ingested)

    @task(map_index_template="{{ shard_label }}")
    def mask_shard(prepared: dict, shard: dict) -> dict:
        """Presidio on one shard (a mapped task instance; Celery workers share them): typed,
        consistent pseudonyms keyed by the pseudonymisation secret."""
        get_current_context()["shard_label"] = shard["label"]
        return run_stage(pipeline.stage_mask_shard, prepared["run_id"], shard)

    @task
    def mask(prepared: dict, shards: list[dict], shard_results) -> dict:
        """Merge the masked shards in order into one dataset; the residual threshold applies to the totals."""
        # A lazy sequence of the mapped results; indexing reads exactly the shards that exist.
        results = [shard_results[i] for i in range(len(shard_results))]
        return run_stage(pipeline.stage_mask_merge, prepared["run_id"], shards, results)

    @task(outlets=[MASKED_DATASET])
    def version(prepared: dict, masked: dict, outlet_events=None) -> dict:
        """DVC: commit and push the masked set (identical input keeps its revision); publish the
        version as the Asset privatetune-masked-dataset with revision and counts in the event's extra."""
        versioned = run_stage(pipeline.stage_version, prepared["run_id"], masked)
        outlet_events[MASKED_DATASET].extra = dataset_event_extra(prepared["run_id"], versioned, masked)
        return versioned

    # GPU workers consume the `gpu` queue; the `gpu` pool caps concurrent trainings at the GPUs there are.
    @task(execution_timeout=timedelta(hours=6), queue=TRAIN_QUEUE, pool=TRAIN_POOL)
    def train(prepared: dict, versioned: dict) -> dict:
        """torchrun -m tasks.train: PEFT + Opacus DP-SGD on the versioned masked set; a retry resumes
        from the last checkpoint, and the privacy ledger is charged once per run."""
        return run_stage(pipeline.stage_train, prepared["run_id"], prepared, versioned)

    @task
    def evaluate(prepared: dict, trained: dict) -> dict:
        """Base, fine-tuned and champion side by side (lm-eval QA, HELM-style scenarios), toxicity,
        PII leakage, canary exposure, membership inference; the HELM-style report."""
        return run_stage(pipeline.stage_evaluate, prepared["run_id"], prepared, trained)

    @task
    def register(prepared: dict, versioned: dict, trained: dict, evaluated: dict) -> dict:
        """MLflow registry: a new version with alias 'challenger', tagged with lineage and evidence, with its model card."""
        return run_stage(pipeline.stage_register, prepared["run_id"], prepared, versioned, trained, evaluated)

    @task
    def gates(prepared: dict, evaluated: dict, registered: dict, trained: dict) -> dict:
        """Promotion gates from config: a failing gate fails this task and the run ends 'gated'."""
        from airflow.sdk import conf

        return run_stage(pipeline.stage_gates, prepared["run_id"], evaluated, registered, trained,
                         dag_id="privacy_finetune", base_url=conf.get("api", "base_url", fallback=""))

    @task.branch
    def approval_route(gated: dict) -> str:
        """A reviewer decides when the run requires approval; otherwise the gates alone promote."""
        return "approve" if gated["require_approval"] else "gates_only"

    # Airflow's ApprovalOperator; it also keeps the answer (XCom key "decision") when the reviewer rejects.
    approve = RecordedApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='register')['model_name'] }} "
                "v{{ ti.xcom_pull(task_ids='register')['version'] }} to champion?",
        body="{{ ti.xcom_pull(task_ids='gates')['approval_body'] }}",
        params={"comment": Param("", type="string", title="Comment",
                                 description="why you approve or reject (recorded on the model version and its card)")},
        assigned_users=APPROVERS,
        response_timeout=timedelta(days=14),
    )

    gates_only = EmptyOperator(task_id="gates_only", doc_md="No approval required: the gates alone promote.")

    # Runs after an approval, or after gates_only; a rejection skips it (the report task records it).
    @task(trigger_rule="none_failed_min_one_success")
    def decide(prepared: dict, registered: dict, ti=None) -> dict:
        """Move the 'champion' alias to this version (the previous champion stays for rollback)."""
        approval = ti.xcom_pull(task_ids="approve", key=DECISION_XCOM_KEY)
        return run_stage(pipeline.stage_decide, prepared["run_id"], registered, approval)

    @task(trigger_rule="all_done", retries=0)
    def report(prepared: dict, ti=None) -> dict:
        """Record a rejection if there was one, then write report.json / report.md; fails when a stage
        failed or the run was gated, so the run shows as failed."""
        approval = ti.xcom_pull(task_ids="approve", key=DECISION_XCOM_KEY)
        registered = ti.xcom_pull(task_ids="register")
        if approval and registered and ti.xcom_pull(task_ids="decide") is None:
            run_stage(pipeline.stage_decide, prepared["run_id"], registered, approval)
        return run_stage(pipeline.stage_report, prepared["run_id"])

    prepared = prepare()
    ingested = ingest(prepared)
    validated = validate(prepared, ingested)
    shards = mask_plan(prepared, ingested, validated)
    masked = mask(prepared, shards, mask_shard.partial(prepared=prepared).expand(shard=shards))
    versioned = version(prepared, masked)
    trained = train(prepared, versioned)
    evaluated = evaluate(prepared, trained)
    registered = register(prepared, versioned, trained, evaluated)
    gated = gates(prepared, evaluated, registered, trained)
    decided = decide(prepared, registered)
    approval_route(gated) >> [approve, gates_only] >> decided
    decided >> report(prepared)

privacy_finetune()
