"""
### monthly_refinetune — retrain every month on the new month's data

Runs on the cron of `monthly_refinetune.schedule` (default 03:00 UTC on the 1st). Each run **owns one
month**, the year and month of its logical date: the run of 2026-03-01 ingests only
`landing/2026-03/` (drop a month's delivery there before its run). It validates and masks
those rows, then builds the month's dataset version = the previous month's version + the new
rows − every record of a subject named in a right-to-erasure request
(`landing/<month>/erasure/*.csv` with a `subject_id` column, or `.jsonl` / `.txt`). Models
trained on removed records are marked for retirement in the registry.

Training warm-starts from the champion's adapter (`monthly_refinetune.warm_start: champion`; never from
a model marked for retirement) or from the base model, then evaluates against the champion and
promotes only through the gates and, when required, a reviewer's approval.

Runs are sequential (`max_active_runs=1`): each month builds on the last. A rerun of a month
(clear the run, or `airflow backfill create ... --reprocess-behavior completed`) replaces its
outputs: the same dataset bytes keep their commit, the trained model is replayed, not trained
again, and no second ledger entry or model version appears.

Backfill months from the CLI (dry run first):

    airflow backfill create --dag-id monthly_refinetune --from-date 2026-01-01 --to-date 2026-03-31 --dry-run
    airflow backfill create --dag-id monthly_refinetune --from-date 2026-01-01 --to-date 2026-03-31
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

from tasks.airflow.assets import MASKED_DATASET, dataset_event_extra
from tasks.airflow.dag_parts import DEFAULT_ARGS, TRAIN_POOL, TRAIN_QUEUE, TRAINING_PARAMS, masking, release, run_stage
from tasks.config import load_config
from tasks.stages import monthly_refinetune as monthly
from tasks.stages import privacy_finetune as finetune

SCHEDULE = load_config().monthly


@dag(
    dag_id="monthly_refinetune",
    # No start_date: unpausing waits for the next 1st instead of running the month in progress at once;
    # earlier months are replayed on purpose, with `airflow backfill create`.
    schedule=CronTriggerTimetable(SCHEDULE.schedule, timezone=SCHEDULE.timezone, run_immediately=False),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["privatetune", "fine-tuning", "differential-privacy", "monthly"],
    default_args=DEFAULT_ARGS,
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
            description="YYYY-MM: the month this run owns; empty = the month of the logical date",
        ),
        **TRAINING_PARAMS,
    },
    render_template_as_native_obj=True,
)
def monthly_refinetune():
    # Months build on each other: wait while an earlier month still runs (a backfill may start several).
    @task.sensor(poke_interval=60, timeout=24 * 3600, mode="reschedule", retries=0)
    def previous_month_done(ti=None) -> bool:
        """Wait until the run of the previous month has ended."""
        previous = ti.get_previous_dagrun()
        state = (
            {"state": str(getattr(previous.state, "value", previous.state)), "logical_date": previous.logical_date}
            if previous is not None
            else None
        )
        return monthly.previous_month_ready(state)

    @task
    def prepare(params=None, run_id=None, logical_date=None, dag_run=None) -> dict:
        """Which month this run owns; resolve the config with the run's Params and build (or reuse) the base model."""
        params = dict(params or {})
        month = params.pop("month", None) or monthly.month_of(logical_date or dag_run.run_after)
        return run_stage(monthly.stage_prepare, run_id, month, params)

    @task
    def ingest(prepared: dict) -> dict:
        """Read only this month's landing partition; bad rows go to quarantine with file, line, field and reason."""
        return run_stage(finetune.stage_ingest, prepared["run_id"], prepared["month"])

    @task
    def validate(prepared: dict, ingested: dict) -> dict:
        """Great Expectations suite on the month's rows, and drift against the previous version's profile."""
        return run_stage(finetune.stage_validate, prepared["run_id"], ingested)

    @task
    def dataset(prepared: dict, masked: dict) -> dict:
        """Previous month's version + this month's rows − erased subjects; models trained on erased
        records are marked for retirement."""
        return run_stage(monthly.stage_dataset, prepared["run_id"], prepared["month"], masked)

    @task(outlets=[MASKED_DATASET])
    def version(prepared: dict, masked: dict, built: dict, outlet_events=None) -> dict:
        """DVC: one commit per month (a rerun with the same bytes keeps it), tagged run-monthly-<month>."""
        versioned = run_stage(monthly.stage_version, prepared["run_id"], prepared["month"], built)
        outlet_events[MASKED_DATASET].extra = {
            **dataset_event_extra(prepared["run_id"], versioned, masked),
            "month": prepared["month"],
            "records": built["records"],
        }
        return versioned

    @task(execution_timeout=timedelta(hours=6), queue=TRAIN_QUEUE, pool=TRAIN_POOL)
    def train(prepared: dict, versioned: dict) -> dict:
        """Warm start from the champion's adapter (or base), PEFT + DP-SGD under torchrun; a replayed
        month reuses its trained model."""
        return run_stage(monthly.stage_train, prepared["run_id"], prepared, versioned)

    prepared = prepare()
    previous_month_done() >> prepared
    ingested = ingest(prepared)
    validated = validate(prepared, ingested)
    masked = masking(prepared, ingested, validated)
    built = dataset(prepared, masked)
    versioned = version(prepared, masked, built)
    release(
        "monthly_refinetune",
        prepared,
        versioned,
        train(prepared, versioned),
        register_stage=monthly.stage_register,
        decide_stage=monthly.stage_decide,
    )


monthly_refinetune()
