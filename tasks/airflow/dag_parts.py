"""What both DAGs share: task defaults, the stage wrapper, the mapped masking, and the release half
of the run (evaluate → register → gates → approval or gates only → decide → report).

Imported by the DAG files at parse time: it must stay light (no torch, MLflow, Presidio here;
the stage functions import those when a task runs).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.airflow.approval import DECISION_XCOM_KEY, RecordedApprovalOperator
from tasks.airflow.notify import on_failure as notify_failure
from tasks.config import load_config
from tasks.stages import privacy_finetune

NULLABLE_NUMBER = ["null", "number"]
# GPU workers consume the `gpu` queue; the `gpu` pool caps concurrent trainings at the GPUs there are.
TRAIN_QUEUE = "gpu"
TRAIN_POOL = "gpu"

DEFAULT_ARGS = {
    "owner": "privatetune",
    "retries": 1,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": notify_failure,  # config notify: webhook or email; never masks the failure
}

# The trigger form shared by both DAGs (empty = the config's value). Policy lives in the deployment's
# config: these tune a run, and the stricter-only ones (dp, target_epsilon, require_approval) can
# tighten it, never loosen it (tasks.config.resolve_params); the report lists what was not applied.
TRAINING_PARAMS = {
    "train_method": Param(
        None,
        type=["null", "string"],
        enum=[None, "lora", "adapter", "prefix", "freeze", "full"],
        description="lora | adapter (IA3, non-private only) | prefix | freeze (top N blocks) | "
        "full (baseline); empty = config",
    ),
    "trainable_layers": Param(None, type=["null", "integer"], minimum=1, description="freeze: train the top N blocks"),
    "freeze_with_lora": Param(None, type=["null", "boolean"], description="freeze: LoRA on the top blocks only"),
    "grad_sample_mode": Param(
        None,
        type=["null", "string"],
        enum=[None, "auto", "hooks", "ghost", "functorch"],
        description="DP clipping: per-sample hooks, ghost clipping, functorch; auto = measured best",
    ),
    "dp": Param(
        None,
        type=["null", "boolean"],
        description="stricter only: true forces DP-SGD; false cannot turn off DP that the config requires",
    ),
    "target_epsilon": Param(
        None,
        type=NULLABLE_NUMBER,
        exclusiveMinimum=0,
        description="stricter only: a lower ε than the config's train.target_epsilon",
    ),
    "epochs": Param(None, type=NULLABLE_NUMBER, exclusiveMinimum=0, description="training epochs"),
    "learning_rate": Param(None, type=NULLABLE_NUMBER, exclusiveMinimum=0),
    "lora_r": Param(None, type=["null", "integer"], minimum=1, description="LoRA rank"),
    "base_model_path": Param(
        None,
        type=["null", "string"],
        description="one of the config's base_model.allowed directories; empty = the configured base",
    ),
    "base_model_size": Param(None, type=["null", "string"], enum=[None, "demo", "tiny"]),
    "qa_limit": Param(None, type=["null", "integer"], minimum=1, description="evaluate only N questions"),
    "require_approval": Param(
        None,
        type=["null", "boolean"],
        description="stricter only: true requires a reviewer even where the config does not; "
        "false cannot skip the approval the config requires",
    ),
}


def permanent_errors() -> tuple[type[BaseException], ...]:
    """Failures a retry cannot fix (bad or missing input, a missing secret, policy, a gate): fail the task
    at once. Imported when a task fails, not at DAG parse time."""
    from pydantic import ValidationError

    from tasks.config import InvalidRunId, PolicyViolation
    from tasks.data.erasure import ErasureRequestError
    from tasks.data.ingest import EmptyLandingError, InvalidPartitionError, QuarantineThresholdExceeded
    from tasks.data.months import PreviousMonthMissing
    from tasks.data.validate import ValidationFailed
    from tasks.pii import MissingKeyError, ResidualPiiError
    from tasks.release.gates import PromotionGated
    from tasks.train.ledger import LedgerConflict, PrivacyBudgetExceeded

    return (
        EmptyLandingError,
        InvalidPartitionError,
        QuarantineThresholdExceeded,
        ValidationFailed,
        MissingKeyError,
        ResidualPiiError,
        ValidationError,
        PrivacyBudgetExceeded,
        LedgerConflict,
        PromotionGated,
        ErasureRequestError,
        PreviousMonthMissing,
        PolicyViolation,
        InvalidRunId,
    )


def run_stage(stage, *args, **kwargs):
    """Run a stage; input, secret and gate failures fail at once instead of burning retries."""
    try:
        return stage(*args, **kwargs)
    except permanent_errors() as err:
        raise AirflowFailException(str(err)) from err


def approvers() -> list[dict] | None:
    """Who may answer the approval request (config registry.approvers; empty = anyone allowed to act on the DAG)."""
    return [{"id": name, "name": name} for name in load_config().registry.approvers] or None


def masking(prepared, ingested, validated):
    """mask_plan → mask_shard × N (dynamic task mapping; Celery workers share them) → mask (merge)."""

    @task
    def mask_plan(prepared: dict, ingested: dict, validated: dict) -> list[dict]:
        """Split the staged rows into shards: one per landing partition, at most mask.shard_rows rows each."""
        return run_stage(privacy_finetune.stage_mask_plan, prepared["run_id"], ingested)

    @task(map_index_template="{{ shard_label }}")
    def mask_shard(prepared: dict, shard: dict) -> dict:
        """Presidio on one shard (a mapped task instance): typed, consistent pseudonyms keyed by the
        pseudonymisation secret."""
        get_current_context()["shard_label"] = shard["label"]
        return run_stage(privacy_finetune.stage_mask_shard, prepared["run_id"], shard)

    @task
    def mask(prepared: dict, shards: list[dict], shard_results) -> dict:
        """Merge the masked shards in order into one dataset; the residual threshold applies to the totals."""
        # A lazy sequence of the mapped results; indexing reads exactly the shards that exist.
        results = [shard_results[i] for i in range(len(shard_results))]
        return run_stage(privacy_finetune.stage_mask_merge, prepared["run_id"], shards, results)

    shards = mask_plan(prepared, ingested, validated)
    return mask(prepared, shards, mask_shard.partial(prepared=prepared).expand(shard=shards))


def _approval_request() -> RecordedApprovalOperator:
    """The `approve` task: asks a reviewer whether the registered version becomes champion.

    Airflow's ApprovalOperator; it also keeps the answer (XCom key "decision") when the reviewer rejects.
    Created in the current DAG (call it inside the DAG's context, as `release` does)."""
    return RecordedApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='register')['model_name'] }} "
        "v{{ ti.xcom_pull(task_ids='register')['version'] }} to champion?",
        body="{{ ti.xcom_pull(task_ids='gates')['approval_body'] }}",
        params={
            "comment": Param(
                "",
                type="string",
                title="Comment",
                description="why you approve or reject (recorded on the model version and its card)",
            )
        },
        assigned_users=approvers(),
        response_timeout=timedelta(days=14),
        execution_timeout=None,  # the reviewer's time is bounded by response_timeout, not the task default
    )


def release(dag_id: str, prepared, versioned, trained, *, register_stage=None, decide_stage=None):
    """evaluate → register → gates → approve | gates_only → decide → report, inside the current DAG.

    `register_stage` / `decide_stage` replace the pipeline's (the monthly DAG registers one version per
    month and replays a decision already taken for it)."""
    decide_stage = decide_stage or privacy_finetune.stage_decide

    @task
    def evaluate(prepared: dict, trained: dict) -> dict:
        """Base, fine-tuned and champion side by side (lm-eval QA, HELM-style scenarios), toxicity,
        PII leakage, canary exposure, membership inference; the HELM-style report."""
        return run_stage(privacy_finetune.stage_evaluate, prepared["run_id"], prepared, trained)

    @task
    def register(prepared: dict, versioned: dict, trained: dict, evaluated: dict) -> dict:
        """MLflow registry: a new version with alias 'challenger', tagged with lineage and evidence, with its model card."""
        return run_stage(
            register_stage or privacy_finetune.stage_register,
            prepared["run_id"],
            prepared,
            versioned,
            trained,
            evaluated,
        )

    @task
    def gates(prepared: dict, evaluated: dict, registered: dict, trained: dict) -> dict:
        """Promotion gates from config: a failing gate fails this task and the run ends 'gated'."""
        from airflow.sdk import conf

        return run_stage(
            privacy_finetune.stage_gates,
            prepared["run_id"],
            evaluated,
            registered,
            trained,
            dag_id=dag_id,
            base_url=conf.get("api", "base_url", fallback=""),
        )

    @task.branch
    def approval_route(gated: dict, registered: dict) -> str:
        """A reviewer decides when the run requires approval; otherwise the gates alone promote. A version
        decided before (a replayed month) is not asked about again."""
        return "approve" if gated["require_approval"] and not registered.get("decision") else "gates_only"

    approve = _approval_request()
    gates_only = EmptyOperator(task_id="gates_only", doc_md="No approval required: the gates alone promote.")

    # Runs after an approval, or after gates_only; a rejection skips it (the report task records it).
    @task(trigger_rule="none_failed_min_one_success")
    def decide(prepared: dict, registered: dict, ti=None) -> dict:
        """Move the 'champion' alias to this version (the previous champion stays for rollback)."""
        approval = ti.xcom_pull(task_ids="approve", key=DECISION_XCOM_KEY)
        return run_stage(decide_stage, prepared["run_id"], registered, approval)

    @task(trigger_rule="all_done", retries=0)
    def report(prepared: dict, ti=None) -> dict:
        """Record a rejection if there was one, then write report.json / report.md; fails when a stage
        failed or the run was gated, so the run shows as failed."""
        approval = ti.xcom_pull(task_ids="approve", key=DECISION_XCOM_KEY)
        registered = ti.xcom_pull(task_ids="register")
        if approval and registered and ti.xcom_pull(task_ids="decide") is None:
            run_stage(decide_stage, prepared["run_id"], registered, approval)
        return run_stage(privacy_finetune.stage_report, prepared["run_id"])

    evaluated = evaluate(prepared, trained)
    registered = register(prepared, versioned, trained, evaluated)
    gated = gates(prepared, evaluated, registered, trained)
    decided = decide(prepared, registered)
    approval_route(gated, registered) >> [approve, gates_only] >> decided
    decided >> report(prepared)
