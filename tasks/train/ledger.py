"""Privacy budget ledger: every training run's privacy spend, per source dataset, append-only.

Where it lives
--------------
A SQLAlchemy database: `$PFT_LEDGER_URL` when set (Postgres in compose, e.g.
`postgresql+psycopg2://…/ledger`), else the SQLite file
`$PFT_HOME/ledger.db`. Only SQLite and PostgreSQL are accepted: the
ledger relies on their triggers (append-only) and locks (serialised check-and-record).

API (every function takes `url=None` → `ledger_url()`)
----------------------------------------------------
    lineage_of(path) -> Lineage(record_count, digest)     # from a dataset JSONL (reads record_id only)
    lineage_digest(ids) -> "sha256:<hex>"
    budget_for(privacy_cfg, dataset) -> Budget(epsilon, delta, allow_non_private)
    check_budget(dataset, epsilon, delta, *, budget, run_id=None, private=True) -> BudgetStatus
        read-only pre-flight; raises PrivacyBudgetExceeded (spent, requested, limit in the message)
    record_run(*, run_id, dataset, dataset_revisions, record_count, lineage_digest, epsilon, delta,
               private=True, accountant=None, noise_multiplier=None, sample_rate=None, steps=None,
               max_grad_norm=None, notes=None, budget=None) -> LedgerEntry
        appends one entry; with `budget`, the check and the insert happen in ONE locked
        transaction, so two concurrent runs cannot both pass a check that only one fits.
        Idempotent per run_id (see "Retries" below).
    spent(dataset, *, exclude_run_id=None) -> Spent(epsilon, delta, runs)
    entries(dataset=None, *, run_id=None) -> list[LedgerEntry]
    summary(dataset, budget) -> dict       # JSON-safe cumulative figures for report.json / MLflow

Intended use in the training stage, before the first noisy step:

    lin = lineage_of(data_path)
    entry = record_run(run_id=run_id, dataset=cfg.privacy.source_dataset, dataset_revisions=[rev],
                       record_count=lin.record_count, lineage_digest=lin.digest,
                       epsilon=target_eps, delta=delta, private=dp, accountant="prv",
                       noise_multiplier=sigma, sample_rate=q, steps=T, max_grad_norm=C,
                       budget=budget_for(cfg.privacy, cfg.privacy.source_dataset))

What an entry is, and when it is written
----------------------------------------
One row per training run, written BEFORE training starts, holding the run's target
(ε, δ). Rows are never updated, so the ledger records the reservation, not a final
figure: this is sound because the noise multiplier is computed so that the accountant
reaches the target at the last step and training stops before exceeding it, hence the
actual ε ≤ the recorded ε. A run that fails midway stays counted at its full target
(conservative; its checkpoints may already hold noisy updates). The actual ε is in the
run's train_result.json and MLflow run.

Composition rule (why summing is sound)
---------------------------------------
Spent(dataset) = (Σ ε_i, Σ δ_i) over every entry of that source dataset. Basic sequential
composition: running mechanisms that are (ε_i, δ_i)-DP on the same data is
(Σ ε_i, Σ δ_i)-DP (Dwork & Roth 2014, Thm 3.16), and this holds when each run is chosen
adaptively after seeing earlier results (Dwork, Rothblum & Vadhan 2010). A new run is
allowed only if spent + requested ≤ the dataset's budget, for ε and for δ.
Overlap: monthly dataset versions accumulate (each revision contains earlier months'
records), so every run on a source dataset is counted against every record of it. For a
record that only appears in later versions this over-counts, which is conservative.
Different source datasets are assumed to hold different people; if they do not, give
them one `privacy.source_dataset` id. The unit of privacy is one record (DP-SGD clips
per example); a person with k records is protected at kε by group privacy.
Advanced composition or RDP/PRV composition of the whole history would be tighter, but
needs every mechanism's parameters, which is why each entry keeps accountant, noise
multiplier, sample rate, steps and clipping norm: a tighter accountant can be plugged
into `spent()` later without losing history.

Non-private runs (`train.dp: false`)
------------------------------------
Recorded with ε = ∞ and δ = 0: a non-private model voids the DP guarantee for every
record of that dataset. When a budget is configured, `check_budget` refuses a
non-private run unless `privacy.allow_non_private: true`, and, once a dataset holds a
non-private entry, refuses every later run on it (spent ε = ∞, the message names the
run that voided it) unless `allow_non_private` is set: setting it means the operator
accepts that this dataset has no DP guarantee left. With no budget configured
(`epsilon_budget: null` and `delta_budget: null`) the ledger only records.

Retries and resumed runs
------------------------
The pipeline's run ids are `<dag_id>/<run key>` (`ledger_key`), so runs of two DAGs never share an
entry. `record_run` for a run_id already in the ledger is a no-op returning the existing entry,
provided the privacy-relevant fields (dataset, revisions, lineage, private, ε, δ, mechanism
parameters, and the config digest: every train setting and the base model's digest) match; if
they differ it raises `LedgerConflict`: that is a new mechanism on (possibly other) data and
needs a new run id. `check_budget(run_id=…)`
leaves that run's own entry out of "spent", so a resumed run is not counted twice.

Lineage without identifiers
---------------------------
Record ids can be personal data (claim or member numbers), and the ledger is kept
forever, so it never holds them. It stores the dataset revision (the DVC registry's git
revision: the exact bytes, so exactly which records), the record count, and a SHA-256
digest of the sorted record ids. Anyone with that revision can recompute and verify the
digest; the digest of a whole set reveals nothing about one id without all the others.
The ledger holds no record text, and notes are for operators (a short single line).

Append-only
-----------
There is no update or delete API, and the database refuses UPDATE and DELETE itself:
SQLite triggers RAISE(ABORT); Postgres row and TRUNCATE triggers raise. (Someone with
write access to the file or DDL rights can still drop the table; in compose, revoke
UPDATE/DELETE/TRUNCATE from the pipeline's role as well.)

CLI
---
    python -m tasks.train.ledger show [--dataset X] [--json]        # entries, then totals vs budget
    python -m tasks.train.ledger check --dataset X --epsilon 3 --delta 1e-5 [--run-id R] [--non-private]
        exit 0 within budget, 1 with the refusal message when over.
Budgets come from `privacy:` in the pipeline config (`PFT_CONFIG` or `--config`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

URL_ENV = "PFT_LEDGER_URL"
DP_MECHANISM = "DP-SGD (Opacus)"
NON_PRIVATE_MECHANISM = "none (non-private)"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_REL_TOL = 1e-9  # float sums of δ (e.g. 10 × 2.5e-5) must not fail a budget they meet exactly

metadata = MetaData()
ledger_table = Table(
    "privacy_ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(250), nullable=False, unique=True),
    Column("source_dataset", String(200), nullable=False, index=True),
    Column("dataset_revisions", Text, nullable=False),  # JSON list of revisions
    Column("record_count", Integer, nullable=False),
    Column("lineage_digest", String(71), nullable=False),
    Column("private", Boolean, nullable=False),
    Column("mechanism", String(64), nullable=False),
    Column("accountant", String(32)),
    Column("noise_multiplier", Float),
    Column("sample_rate", Float),
    Column("steps", Integer),
    Column("max_grad_norm", Float),
    Column("epsilon", Float, nullable=False),  # +inf for a non-private run
    Column("delta", Float, nullable=False),
    Column("created_at", DateTime, nullable=False),  # UTC
    Column("notes", String(500)),
    # sha256 of what else decides the mechanism's output: the train config and the base model's digest.
    # A retried run must match it too; NULL only on entries written before it was recorded.
    Column("config_digest", String(71)),
)

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS privacy_ledger_no_{op.lower()} BEFORE {op} ON privacy_ledger "
    f"BEGIN SELECT RAISE(ABORT, 'privacy_ledger is append-only: {op} refused'); END"
    for op in ("UPDATE", "DELETE")
]
_POSTGRES_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION privacy_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION USING MESSAGE = 'privacy_ledger is append-only: ' || TG_OP || ' refused'; END $$""",
    """CREATE OR REPLACE TRIGGER privacy_ledger_no_change BEFORE UPDATE OR DELETE ON privacy_ledger
       FOR EACH ROW EXECUTE FUNCTION privacy_ledger_append_only()""",
    """CREATE OR REPLACE TRIGGER privacy_ledger_no_truncate BEFORE TRUNCATE ON privacy_ledger
       FOR EACH STATEMENT EXECUTE FUNCTION privacy_ledger_append_only()""",
]
_PG_INIT_LOCK = 727_100_401  # advisory lock id: one process creates the schema at a time


class LedgerError(RuntimeError):
    """The ledger cannot be used as asked (bad URL, unsupported database, invalid entry)."""


class LedgerConflict(LedgerError):
    """A run id is already in the ledger with different privacy-relevant fields."""


class PrivacyBudgetExceeded(RuntimeError):
    """A run would exceed its source dataset's privacy budget. The message states spent, requested and limit."""

    def __init__(self, message: str, *, status: BudgetStatus):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Lineage:
    record_count: int
    digest: str


@dataclass(frozen=True)
class Budget:
    """Limits for one source dataset; None = not enforced."""

    epsilon: float | None
    delta: float | None
    allow_non_private: bool = False

    @property
    def enforced(self) -> bool:
        return self.epsilon is not None or self.delta is not None


@dataclass(frozen=True)
class Spent:
    epsilon: float
    delta: float
    runs: int
    non_private_runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class BudgetStatus:
    dataset: str
    spent_epsilon: float
    spent_delta: float
    runs: int
    requested_epsilon: float
    requested_delta: float
    limit_epsilon: float | None
    limit_delta: float | None
    already_recorded: bool = False
    non_private_runs: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            k: _json_num(v) if isinstance(v, float) else (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    run_id: str
    source_dataset: str
    dataset_revisions: tuple[str, ...]
    record_count: int
    lineage_digest: str
    private: bool
    mechanism: str
    accountant: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_grad_norm: float | None
    epsilon: float
    delta: float
    created_at: datetime
    notes: str | None = field(default=None)
    config_digest: str | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: ε = ∞ becomes the string "inf", times are ISO 8601 UTC."""
        out = asdict(self)
        out["dataset_revisions"] = list(self.dataset_revisions)
        out["created_at"] = self.created_at.isoformat()
        for key in ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm"):
            out[key] = _json_num(out[key])
        return out


def _json_num(x: float | None) -> float | str | None:
    return "inf" if isinstance(x, float) and math.isinf(x) else x


# --------------------------------------------------------------------------- lineage


def lineage_digest(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted ids, one per line: order-independent, verifiable, no id in clear."""
    h = hashlib.sha256()
    for rid in sorted(ids):
        h.update(rid.encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def config_digest(settings: dict) -> str:
    """'sha256:<hex>' of a JSON-able dict of the settings that decide what a run trains (config, base model)."""
    return "sha256:" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def ledger_key(dag_id: str, run_key: str) -> str:
    """The ledger's run id: DAG and run, so two DAGs' runs of one name are two entries, never one."""
    return f"{dag_id}/{run_key}"


def lineage_of(path: str | os.PathLike) -> Lineage:
    """Count and digest of a dataset JSONL's record ids (the text field is never kept)."""
    from tasks.common.jsonl import read_objects

    ids = [
        row["record_id"]
        for row in read_objects(Path(path), fields=("record_id",), hint="; the ledger needs each record's record_id")
    ]
    return Lineage(record_count=len(ids), digest=lineage_digest(ids))


# --------------------------------------------------------------------------- engine


def default_url() -> str:
    from tasks.config import Paths

    return f"sqlite:///{Paths().home / 'ledger.db'}"


def ledger_url() -> str:
    return os.environ.get(URL_ENV) or default_url()


_ENGINES: dict[str, Engine] = {}


def _engine(url: str | None = None) -> Engine:
    url = url or ledger_url()
    engine = _ENGINES.get(url)
    if engine is not None:
        return engine
    try:
        parsed = make_url(url)
    except Exception:
        raise LedgerError(f"privacy ledger URL is not a valid SQLAlchemy URL (check ${URL_ENV})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # busy timeout: a concurrent writer waits for the lock instead of failing at once
        engine = create_engine(parsed, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _no_driver_begin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Take the write lock at BEGIN, so check-then-insert is serialised across processes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif backend == "postgresql":
        engine = create_engine(parsed, pool_pre_ping=True)
    else:
        raise LedgerError(f"privacy ledger needs SQLite or PostgreSQL, got '{backend}' (check ${URL_ENV})")
    _init_schema(engine)
    _ENGINES[url] = engine
    return engine


def _init_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_INIT_LOCK})
            metadata.create_all(conn)
            for ddl in _POSTGRES_TRIGGERS:
                conn.exec_driver_sql(ddl)
        else:
            metadata.create_all(conn)
            for ddl in _SQLITE_TRIGGERS:
                conn.exec_driver_sql(ddl)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """A ledger created by an earlier version gains the newer nullable columns (append-only still holds:
    ADD COLUMN changes no row)."""
    from sqlalchemy import inspect

    present = {c["name"] for c in inspect(conn).get_columns("privacy_ledger")}
    for column in ledger_table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE privacy_ledger ADD COLUMN {column.name} {kind}")


def _lock_for_write(conn: Connection) -> None:
    """Serialise writers for the whole check-and-insert (SQLite already holds BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE privacy_ledger IN SHARE ROW EXCLUSIVE MODE")


def dispose_engines() -> None:
    """Close pooled connections (tests, or before forking)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


# --------------------------------------------------------------------------- reading


def _to_entry(row) -> LedgerEntry:
    m = row._mapping
    created = m["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return LedgerEntry(
        seq=m["seq"],
        run_id=m["run_id"],
        source_dataset=m["source_dataset"],
        dataset_revisions=tuple(json.loads(m["dataset_revisions"])),
        record_count=m["record_count"],
        lineage_digest=m["lineage_digest"],
        private=bool(m["private"]),
        mechanism=m["mechanism"],
        accountant=m["accountant"],
        noise_multiplier=m["noise_multiplier"],
        sample_rate=m["sample_rate"],
        steps=m["steps"],
        max_grad_norm=m["max_grad_norm"],
        epsilon=float(m["epsilon"]),
        delta=float(m["delta"]),
        created_at=created,
        notes=m["notes"],
        config_digest=m["config_digest"],
    )


def _entries(conn: Connection, dataset: str | None = None, run_id: str | None = None) -> list[LedgerEntry]:
    query = select(ledger_table).order_by(ledger_table.c.seq)
    if dataset is not None:
        query = query.where(ledger_table.c.source_dataset == dataset)
    if run_id is not None:
        query = query.where(ledger_table.c.run_id == run_id)
    return [_to_entry(r) for r in conn.execute(query)]


def entries(dataset: str | None = None, *, run_id: str | None = None, url: str | None = None) -> list[LedgerEntry]:
    """Entries in the order they were recorded, optionally of one dataset or one run."""
    with _engine(url).connect() as conn:
        return _entries(conn, dataset, run_id)


def _spent(conn: Connection, dataset: str, exclude_run_id: str | None) -> Spent:
    # Basic composition: ε and δ add up over every run on the dataset (see module docstring).
    rows = [e for e in _entries(conn, dataset) if e.run_id != exclude_run_id]
    return Spent(
        epsilon=math.fsum(e.epsilon for e in rows),
        delta=math.fsum(e.delta for e in rows),
        runs=len(rows),
        non_private_runs=tuple(e.run_id for e in rows if not e.private),
    )


def spent(dataset: str, *, exclude_run_id: str | None = None, url: str | None = None) -> Spent:
    """Composed (ε, δ) and run count for one source dataset; ε is inf once a non-private run is recorded."""
    with _engine(url).connect() as conn:
        return _spent(conn, dataset, exclude_run_id)


# --------------------------------------------------------------------------- budget


def budget_for(privacy_cfg, dataset: str) -> Budget:
    """The budget of `dataset` from a `PrivacyConfig`: its entry in `budgets`, else the defaults."""
    override = (privacy_cfg.budgets or {}).get(dataset)
    source = override if override is not None else privacy_cfg
    return Budget(
        epsilon=source.epsilon_budget, delta=source.delta_budget, allow_non_private=privacy_cfg.allow_non_private
    )


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return "inf" if math.isinf(x) else f"{x:.6g}"


def _exceeds(total: float, limit: float | None) -> bool:
    return limit is not None and total > limit * (1 + _REL_TOL)


def _check(
    conn: Connection, dataset: str, epsilon: float, delta: float, budget: Budget, run_id: str | None, private: bool
) -> BudgetStatus:
    already = bool(run_id) and bool(_entries(conn, run_id=run_id))
    s = _spent(conn, dataset, exclude_run_id=run_id)
    requested_eps = epsilon if private else math.inf
    requested_delta = delta if private else 0.0
    status = BudgetStatus(
        dataset=dataset,
        spent_epsilon=s.epsilon,
        spent_delta=s.delta,
        runs=s.runs,
        requested_epsilon=requested_eps,
        requested_delta=requested_delta,
        limit_epsilon=budget.epsilon,
        limit_delta=budget.delta,
        already_recorded=already,
        non_private_runs=s.non_private_runs,
    )
    if not budget.enforced:
        return status
    figures = (
        f"spent ε={_fmt(s.epsilon)} over {s.runs} run(s), requested ε={_fmt(requested_eps)}, "
        f"limit ε={_fmt(budget.epsilon)}; spent δ={_fmt(s.delta)}, requested δ={_fmt(requested_delta)}, "
        f"limit δ={_fmt(budget.delta)}"
    )
    where = f"dataset '{dataset}'"
    if not private:
        if budget.allow_non_private:
            return status  # the operator accepted that this dataset loses its DP guarantee
        raise PrivacyBudgetExceeded(
            f"privacy budget refused a non-private run on {where}: {figures}. A non-private run spends unbounded "
            f"ε and voids the DP guarantee for every record of the dataset; set privacy.allow_non_private: true "
            f"to accept that, or train with train.dp: true",
            status=status,
        )
    if s.non_private_runs:
        if budget.allow_non_private:
            return status  # the operator accepted that this dataset has no DP guarantee left
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted on {where}: non-private run(s) {', '.join(s.non_private_runs)} voided its DP "
            f"guarantee; {figures}. Use another source dataset, or set privacy.allow_non_private: true",
            status=status,
        )
    if _exceeds(s.epsilon + requested_eps, budget.epsilon) or _exceeds(s.delta + requested_delta, budget.delta):
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded on {where}: {figures} (basic composition: spent + requested must not exceed "
            f"the limit). Lower train.target_epsilon/target_delta, or raise the dataset's budget in privacy:",
            status=status,
        )
    return status


def check_budget(
    dataset: str,
    epsilon: float,
    delta: float,
    *,
    budget: Budget,
    run_id: str | None = None,
    private: bool = True,
    url: str | None = None,
) -> BudgetStatus:
    """Would a run of (ε, δ) on `dataset` fit its budget? Raises PrivacyBudgetExceeded if not.

    `run_id` already in the ledger (a resumed or retried run) is left out of "spent".
    Read-only: use `record_run(..., budget=...)` to check and reserve atomically.
    """
    _validate_privacy(private, epsilon, delta)
    with _engine(url).connect() as conn:
        return _check(conn, dataset, float(epsilon), float(delta), budget, run_id, private)


def summary(dataset: str, budget: Budget | None = None, *, url: str | None = None) -> dict[str, Any]:
    """Cumulative figures for report.json and MLflow (JSON-safe; ε = ∞ as "inf")."""
    s = spent(dataset, url=url)
    eps_limit = budget.epsilon if budget else None
    delta_limit = budget.delta if budget else None
    return {
        "source_dataset": dataset,
        "runs": s.runs,
        "spent_epsilon": _json_num(s.epsilon),
        "spent_delta": s.delta,
        "epsilon_budget": eps_limit,
        "delta_budget": delta_limit,
        "remaining_epsilon": None if eps_limit is None else _json_num(max(0.0, eps_limit - s.epsilon)),
        "remaining_delta": None if delta_limit is None else max(0.0, delta_limit - s.delta),
        "non_private_runs": list(s.non_private_runs),
        "composition": "basic (sum of ε and of δ over all runs on the source dataset)",
    }


# --------------------------------------------------------------------------- recording


def _validate_privacy(private: bool, epsilon: float, delta: float) -> None:
    if private:
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise LedgerError(f"epsilon must be a finite number > 0 for a private run, got {epsilon!r}")
        if not (isinstance(delta, (int, float)) and 0 <= delta < 1):
            raise LedgerError(f"delta must be in [0, 1) for a private run, got {delta!r}")


def _validate_positive(name: str, value: float | int | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LedgerError(f"{name} must be a finite number > 0 or None, got {value!r}")


_COMPARED = (
    "source_dataset",
    "dataset_revisions",
    "record_count",
    "lineage_digest",
    "private",
    "mechanism",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "epsilon",
    "delta",
    "config_digest",
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=_REL_TOL)
    return a == b


def record_run(
    *,
    run_id: str,
    dataset: str,
    dataset_revisions: str | Sequence[str],
    record_count: int,
    lineage_digest: str,
    epsilon: float | None,
    delta: float | None,
    private: bool = True,
    accountant: str | None = None,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    max_grad_norm: float | None = None,
    notes: str | None = None,
    budget: Budget | None = None,
    url: str | None = None,
    config_digest: str | None = None,
) -> LedgerEntry:
    """Append one run's entry (its target ε, δ); with `budget`, refuse it first if it does not fit.

    Non-private runs (`private=False`) are stored as ε = inf, δ = 0 whatever is passed.
    The same run_id again returns the existing entry (LedgerConflict if its fields differ).
    """
    revisions = _validate_identity(run_id, dataset, dataset_revisions, record_count, lineage_digest)
    _validate_annotations(config_digest, notes)
    mechanism_fields = _mechanism_fields(
        private,
        epsilon,
        delta,
        accountant=accountant,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        max_grad_norm=max_grad_norm,
    )
    values = dict(
        run_id=run_id,
        source_dataset=dataset,
        dataset_revisions=json.dumps(revisions),
        record_count=record_count,
        lineage_digest=lineage_digest,
        private=bool(private),
        **mechanism_fields,
        notes=notes,
        config_digest=config_digest,
    )
    return _insert_once(_engine(url), values, budget)


def _validate_identity(
    run_id: str,
    dataset: str,
    dataset_revisions: str | Sequence[str],
    record_count: int,
    lineage_digest: str,
) -> list[str]:
    """Check what names the run and its data; returns the revisions as a list."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise LedgerError("run_id must be a non-empty string")
    if not isinstance(dataset, str) or not dataset.strip():
        raise LedgerError("dataset (source dataset id) must be a non-empty string")
    revisions = [dataset_revisions] if isinstance(dataset_revisions, str) else list(dataset_revisions)
    if not revisions or not all(isinstance(r, str) and r.strip() for r in revisions):
        raise LedgerError("dataset_revisions must be one or more non-empty revision strings")
    if not isinstance(record_count, int) or record_count < 0:
        raise LedgerError(f"record_count must be an integer >= 0, got {record_count!r}")
    if not isinstance(lineage_digest, str) or not _DIGEST_RE.match(lineage_digest):
        raise LedgerError("lineage_digest must be 'sha256:' + 64 hex digits (use lineage_of or lineage_digest)")
    return revisions


def _validate_annotations(config_digest: str | None, notes: str | None) -> None:
    if config_digest is not None and not _DIGEST_RE.match(config_digest):
        raise LedgerError("config_digest must be 'sha256:' + 64 hex digits (use config_digest())")
    if notes is not None and (len(notes) > 500 or "\n" in notes):
        raise LedgerError("notes must be a single line of at most 500 characters")


def _mechanism_fields(
    private: bool,
    epsilon: float | None,
    delta: float | None,
    *,
    accountant: str | None,
    noise_multiplier: float | None,
    sample_rate: float | None,
    steps: int | None,
    max_grad_norm: float | None,
) -> dict[str, Any]:
    """The entry's mechanism columns: validated DP-SGD parameters, or ε = inf, δ = 0 for a non-private run."""
    if private:
        _validate_privacy(True, epsilon, delta)
        epsilon, delta = float(epsilon), float(delta)
        for name, value in (
            ("noise_multiplier", noise_multiplier),
            ("sample_rate", sample_rate),
            ("steps", steps),
            ("max_grad_norm", max_grad_norm),
        ):
            _validate_positive(name, value)
        if sample_rate is not None and sample_rate > 1:
            raise LedgerError(f"sample_rate must be <= 1, got {sample_rate!r}")
        mechanism = DP_MECHANISM
    else:
        epsilon, delta = math.inf, 0.0
        accountant = noise_multiplier = sample_rate = max_grad_norm = None
        mechanism = NON_PRIVATE_MECHANISM
    return dict(
        mechanism=mechanism,
        accountant=accountant,
        noise_multiplier=None if noise_multiplier is None else float(noise_multiplier),
        sample_rate=None if sample_rate is None else float(sample_rate),
        steps=steps,
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        epsilon=epsilon,
        delta=delta,
    )


def _insert_once(engine: Engine, values: dict[str, Any], budget: Budget | None) -> LedgerEntry:
    """Check (with `budget`) and insert in one locked transaction; an existing run_id returns its entry."""
    run_id = values["run_id"]
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                _lock_for_write(conn)
                existing = _entries(conn, run_id=run_id)
                if existing:
                    return _same_run(existing[0], values)
                if budget is not None:
                    _check(
                        conn,
                        values["source_dataset"],
                        values["epsilon"],
                        values["delta"],
                        budget,
                        run_id,
                        values["private"],
                    )
                values["created_at"] = datetime.now(UTC).replace(tzinfo=None)
                conn.execute(insert(ledger_table).values(**values))
                return _entries(conn, run_id=run_id)[0]
        except IntegrityError:
            # A concurrent writer recorded the same run_id between our read and insert: re-read it.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _same_run(existing: LedgerEntry, values: dict[str, Any]) -> LedgerEntry:
    old = {k: getattr(existing, k) for k in _COMPARED}
    old["dataset_revisions"] = json.dumps(list(existing.dataset_revisions))
    differing = [k for k in _COMPARED if not _same(old[k], values[k])]
    if differing:
        raise LedgerConflict(
            f"run '{existing.run_id}' is already in the privacy ledger (entry {existing.seq}) with different "
            f"{', '.join(differing)}; a run on other data or with other privacy parameters is a new mechanism: "
            f"start it under a new run id"
        )
    return existing


# --------------------------------------------------------------------------- CLI


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _opt(x: float | int | None) -> str:
    return "-" if x is None else _fmt(float(x)) if isinstance(x, float) else str(x)


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.config import load_config

    parser = _parser()
    args = parser.parse_args(argv)
    privacy = load_config(args.config).privacy
    url = args.url or None
    if args.cmd == "check":
        return _cli_check(parser, args, privacy, url)
    return _cli_show(args, privacy, url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.train.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help=f"SQLAlchemy URL of the ledger (default: ${URL_ENV}, else under PFT_HOME)")
    parser.add_argument("--config", type=Path, help="pipeline config for budgets (default: PFT_CONFIG or the repo's)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print the ledger and per-dataset totals vs budget")
    show.add_argument("--dataset", help="only this source dataset")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    chk = sub.add_parser("check", help="exit 1 when a run of this ε, δ would exceed the dataset's budget")
    chk.add_argument("--dataset", help="source dataset id (default: privacy.source_dataset)")
    chk.add_argument("--epsilon", type=float, help="requested ε (required unless --non-private)")
    chk.add_argument("--delta", type=float, default=0.0, help="requested δ")
    chk.add_argument("--run-id", help="the run's id, if it may already be in the ledger (resume)")
    chk.add_argument("--non-private", action="store_true", help="check a non-private run (ε = inf)")
    return parser


def _cli_check(parser: argparse.ArgumentParser, args: argparse.Namespace, privacy: Any, url: str | None) -> int:
    """`check`: 0 within budget, 1 over it (the refusal on stderr), 2 when the ledger cannot answer."""
    dataset = args.dataset or privacy.source_dataset
    if args.epsilon is None and not args.non_private:
        parser.error("check needs --epsilon (or --non-private)")
    try:
        status = check_budget(
            dataset,
            args.epsilon if args.epsilon is not None else 0.0,
            args.delta,
            budget=budget_for(privacy, dataset),
            run_id=args.run_id,
            private=not args.non_private,
            url=url,
        )
    except PrivacyBudgetExceeded as err:
        print(str(err), file=sys.stderr)
        return 1
    except LedgerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"within budget on dataset '{dataset}': spent ε={_fmt(status.spent_epsilon)} over {status.runs} run(s), "
        f"requested ε={_fmt(status.requested_epsilon)}, limit ε={_fmt(status.limit_epsilon)}; "
        f"spent δ={_fmt(status.spent_delta)}, requested δ={_fmt(status.requested_delta)}, "
        f"limit δ={_fmt(status.limit_delta)}"
    )
    return 0


def _cli_show(args: argparse.Namespace, privacy: Any, url: str | None) -> int:
    """`show`: the entries, then each dataset's totals against its budget (as tables, or one JSON document)."""
    rows = entries(args.dataset, url=url)
    datasets = sorted({e.source_dataset for e in rows} | ({args.dataset} if args.dataset else set()))
    totals = [summary(d, budget_for(privacy, d), url=url) for d in datasets]
    if args.json:
        print(
            json.dumps(
                {
                    "url": make_url(url or ledger_url()).render_as_string(hide_password=True),
                    "entries": [e.as_dict() for e in rows],
                    "totals": totals,
                },
                indent=2,
                allow_nan=False,
            )
        )
        return 0
    print(_entries_table(rows))
    print()
    print(_totals_table(totals))
    return 0


_ENTRY_HEADER = [
    "seq",
    "created (UTC)",
    "run_id",
    "dataset",
    "revision(s)",
    "records",
    "lineage",
    "mechanism",
    "accountant",
    "sigma",
    "q",
    "steps",
    "C",
    "epsilon",
    "delta",
]


def _entries_table(rows: list[LedgerEntry]) -> str:
    # revisions and lineage are shortened: enough to tell entries apart, `--json` has them whole
    return _table(
        [
            [
                str(e.seq),
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.run_id,
                e.source_dataset,
                ",".join(r[:12] for r in e.dataset_revisions),
                str(e.record_count),
                e.lineage_digest[7:19],
                e.mechanism,
                e.accountant or "-",
                _opt(e.noise_multiplier),
                _opt(e.sample_rate),
                _opt(e.steps),
                _opt(e.max_grad_norm),
                _fmt(e.epsilon),
                _fmt(e.delta),
            ]
            for e in rows
        ],
        _ENTRY_HEADER,
    )


def _totals_table(totals: list[dict[str, Any]]) -> str:
    return _table(
        [
            [
                t["source_dataset"],
                str(t["runs"]),
                _fmt(float(t["spent_epsilon"])),
                _opt(t["epsilon_budget"]),
                _fmt(t["spent_delta"]),
                _opt(t["delta_budget"]),
                ",".join(t["non_private_runs"]) or "-",
            ]
            for t in totals
        ],
        ["dataset", "runs", "spent epsilon", "epsilon budget", "spent delta", "delta budget", "non-private runs"],
    )


if __name__ == "__main__":
    sys.exit(main())
