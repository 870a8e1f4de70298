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
    check_budget(dataset, epsilon, delta, *, budget, run_id=None, private=True,
                 noise_multiplier=None, sample_rate=None, steps=None, unit="record") -> BudgetStatus
        read-only pre-flight; raises PrivacyBudgetExceeded (spent, requested, composed total, limit)
    record_run(*, run_id, dataset, dataset_revisions, record_count, lineage_digest, epsilon, delta,
               private=True, accountant=None, noise_multiplier=None, sample_rate=None, steps=None,
               max_grad_norm=None, unit="record", notes=None, budget=None) -> LedgerEntry
        appends one entry; with `budget`, the check and the insert happen in ONE locked
        transaction, so two concurrent runs cannot both pass a check that only one fits.
        Idempotent per run_id (see "Retries" below).
    spent(dataset, *, exclude_run_id=None) -> Spent(epsilon, delta, runs, ..., basic_epsilon, accountant)
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
(ε, δ) and its mechanism: noise multiplier σ, sample rate q, steps T (the cap: training
stops there or earlier), clipping norm, the accountant that set σ, and the privacy unit
(`unit`: "record", one row of the masked set; or "subject" under privacy.unit: subject,
all of one data subject's records). Rows are never updated, so the ledger records the reservation, not a final
figure: this is sound because the noise multiplier is computed so that the accountant
reaches the target at the last step and training stops before exceeding it, hence the
actual ε ≤ the recorded ε. A run that fails midway stays counted at its full target
(conservative; its checkpoints may already hold noisy updates). The actual ε is in the
run's train_result.json and MLflow run.

Composition rule: tight, with the basic sum beside it
------------------------------------------------------
Every run on a source dataset is a Poisson-subsampled Gaussian mechanism (σ, q, T) on
the same records, so the dataset's spend is one accountant fed the whole history:

    spent ε = Opacus PRVAccountant(history = every run's (σ, q, T)).get_epsilon(δ_mech)
              + Σ ε_i of the runs without a recorded mechanism
    at  δ   = Σ δ_i over every run (δ_mech: the sum over the runs with a mechanism)

(`tasks.train.composition`). The RDP accountant answers when PRV fails, and the figure
says which one was used; when neither can, the whole dataset falls back to basic
composition. PRV gives its upper bound, and the figure is the accountant's own at that
δ, never lowered (not even when the RDP fallback over few runs lands above the sum).
Why δ = Σ δ_i: it is the δ that basic composition spends, so the δ budget keeps its
meaning (δ still adds up and is checked as before) and the tight ε and the basic sum are
two bounds at one δ. Basic composition, (Σ ε_i, Σ δ_i) (Dwork & Roth 2014, Thm 3.16),
stays in every output as `basic_epsilon`, an upper bound.
Both hold when each run is chosen adaptively after seeing earlier results (Dwork, Rothblum
& Vadhan 2010; accountants compose adaptively by construction).
Runs without a recorded mechanism (entries written before the mechanism was required,
or by a caller that gave only ε, δ) cannot be handed to an accountant: their recorded
(ε_i, δ_i) are added on top of the accountant's figure. That is basic composition of
the composed block with each of them: sound, and conservative (the figure says how many).
Refusal uses the tight figure: a new run is allowed only if the accountant's ε of the
history plus this run's mechanism, at the δ sum including this run, is within the
dataset's ε budget, and the δ sum within its δ budget.
Overlap: monthly dataset versions accumulate (each revision contains earlier months'
records), so every run on a source dataset is counted against every record of it. For a
record that only appears in later versions this over-counts, which is conservative.
Different source datasets are assumed to hold different people; if they do not, give
them one `privacy.source_dataset` id. The unit of privacy is what DP-SGD clips per example:
one record (a person with k records is protected at kε by group privacy), or one subject. A dataset's
figure is in "subject" units only when every run on it is; otherwise in "record" units
(a subject-level guarantee implies the record-level one, not the other way round).

Erasure refunds no budget
-------------------------
Erasing a subject's records removes them from later dataset versions; it does not
undo what earlier runs learned from them, so every entry stays counted. The models
trained on them are retired, not unlearned. `show` and `summary()` say so.

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
        per dataset: tight ε (accountant, δ), basic sum, budget, runs; erasure refunds none
    python -m tasks.train.ledger check --dataset X --epsilon 3 --delta 1e-5 [--run-id R] [--non-private]
                                       [--noise-multiplier S --sample-rate Q --steps T]
        exit 0 within budget, 1 with the refusal message when over. Without the mechanism,
        the requested ε is added on top of the composed figure (basic, conservative).
    `python -m tasks.ledger` is the same CLI under the name issue 15 gives it.
Budgets come from `privacy:` in the pipeline config (`PFT_CONFIG` or `--config`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
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

from tasks.train.composition import CompositionError, Mechanism, compose

log = logging.getLogger(__name__)

URL_ENV = "PFT_LEDGER_URL"
DP_MECHANISM = "DP-SGD (Opacus)"
NON_PRIVATE_MECHANISM = "none (non-private)"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_REL_TOL = 1e-9  # float sums of δ (e.g. 10 × 2.5e-5) must not fail a budget they meet exactly
UNITS = ("record", "subject")  # what one neighbouring dataset differs by: one row, or one data subject's rows
COMPOSITION = (
    "tight: the accountant (PRV, RDP fallback) over every run's (noise multiplier, sample rate, steps) on the "
    "source dataset, at δ = the sum of the runs' δ; runs without a recorded mechanism add their recorded ε on top; "
    "basic_epsilon (the sum of ε) is an upper bound"
)
ERASURE_NOTE = (
    "erasure refunds no budget: earlier runs already learned from erased records, so every entry stays counted"
)

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
    # The privacy unit of the run's guarantee; entries written before it was recorded were record-level.
    Column("unit", String(16), server_default="record"),
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
    """A dataset's spend: `epsilon` is the tight figure (what budgets are checked against), at δ = `delta`."""

    epsilon: float  # accountant over the recorded mechanisms + ε of runs without one; inf after a non-private run
    delta: float  # Σ δ of the runs: the δ at which `epsilon` and `basic_epsilon` hold
    runs: int
    non_private_runs: tuple[str, ...] = ()
    basic_epsilon: float = 0.0  # Σ ε: basic composition, an upper bound
    accountant: str | None = None  # "prv" or "rdp" when a mechanism was composed, else None (basic only)
    without_mechanism: tuple[str, ...] = ()  # runs added at their recorded ε
    unit: str = "record"

    @property
    def how(self) -> str:
        """How `epsilon` was composed, in a few words (for messages and the CLI)."""
        if self.non_private_runs:
            return "non-private run(s): no guarantee"
        if self.accountant is None:
            return "basic: no recorded mechanism" if self.runs else "no runs"
        extra = f" + recorded ε of {len(self.without_mechanism)} run(s) without one" if self.without_mechanism else ""
        return (
            f"{self.accountant.upper()} accountant over {self.runs - len(self.without_mechanism)} mechanism(s){extra}"
        )


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
    spent_basic_epsilon: float = 0.0  # Σ ε of the spent runs (upper bound beside `spent_epsilon`)
    total_epsilon: float = 0.0  # tight ε of the spent runs and this one composed together: what the limit checks
    total_delta: float = 0.0  # Σ δ including this run: the δ of `total_epsilon`
    accountant: str | None = None  # the accountant of `total_epsilon` (None: basic)

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
    unit: str = field(default="record")

    @property
    def recorded_mechanism(self) -> Mechanism | None:
        """(σ, q, T) when all three are recorded (an accountant can compose it), else None."""
        if self.private and None not in (self.noise_multiplier, self.sample_rate, self.steps):
            return (self.noise_multiplier, self.sample_rate, self.steps)
        return None

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
    """A ledger created by an earlier version gains the newer nullable columns: existing rows read NULL, or
    the column's constant default (`unit`: 'record'). Append-only still holds: ADD COLUMN is DDL, it fires no
    UPDATE trigger on SQLite or Postgres, and no row is rewritten by an UPDATE statement."""
    from sqlalchemy import inspect

    present = {c["name"] for c in inspect(conn).get_columns("privacy_ledger")}
    for column in ledger_table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            default = f" DEFAULT '{column.server_default.arg}'" if column.server_default is not None else ""
            conn.exec_driver_sql(f"ALTER TABLE privacy_ledger ADD COLUMN {column.name} {kind}{default}")


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
        unit=m["unit"] or "record",  # NULL only if a database dropped the default: entries before units were records
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


@dataclass(frozen=True)
class _Charge:
    """What one run costs its dataset: (ε, δ) and, when recorded, the mechanism an accountant composes."""

    run_id: str
    private: bool
    epsilon: float
    delta: float
    mechanism: Mechanism | None
    unit: str = "record"


def _charge(e: LedgerEntry) -> _Charge:
    return _Charge(e.run_id, e.private, e.epsilon, e.delta, e.recorded_mechanism, e.unit)


def _compose_spend(charges: Sequence[_Charge]) -> Spent:
    """The tight spend of these runs (module docstring, "Composition rule"), with the basic sum beside it."""
    non_private = tuple(c.run_id for c in charges if not c.private)
    composable = [] if non_private else [c for c in charges if c.mechanism is not None and c.delta > 0]
    accountant, composed = None, 0.0
    if composable:
        try:
            result = compose([c.mechanism for c in composable], math.fsum(c.delta for c in composable))
            accountant, composed = result.accountant, result.epsilon
        except CompositionError as exc:  # no accountant answered: basic composition for the whole dataset
            log.warning("privacy ledger: %s; using basic composition", exc)
            composable = []
    composed_ids = {id(c) for c in composable}
    on_top = [c for c in charges if id(c) not in composed_ids]  # sound: basic composition with the composed block
    return Spent(
        epsilon=math.inf if non_private else composed + math.fsum(c.epsilon for c in on_top),
        delta=math.fsum(c.delta for c in charges),
        runs=len(charges),
        non_private_runs=non_private,
        basic_epsilon=math.fsum(c.epsilon for c in charges),
        accountant=accountant,
        without_mechanism=tuple(c.run_id for c in on_top if c.private),
        # subject-level implies record-level, not the reverse: the weaker unit when runs differ
        unit="subject" if charges and all(c.unit == "subject" for c in charges) else "record",
    )


def _spent(conn: Connection, dataset: str, exclude_run_id: str | None) -> Spent:
    return _compose_spend([_charge(e) for e in _entries(conn, dataset) if e.run_id != exclude_run_id])


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


def _check(conn: Connection, dataset: str, request: _Charge, budget: Budget, run_id: str | None) -> BudgetStatus:
    """Compose the dataset's history with `request` and refuse when over budget. `run_id`'s own entry is left
    out of the history, so a retried run is not counted twice."""
    already = bool(run_id) and bool(_entries(conn, run_id=run_id))
    history = [_charge(e) for e in _entries(conn, dataset) if e.run_id != run_id]
    s = _compose_spend(history)
    total = _compose_spend([*history, request])
    status = BudgetStatus(
        dataset=dataset,
        spent_epsilon=s.epsilon,
        spent_delta=s.delta,
        runs=s.runs,
        requested_epsilon=request.epsilon,
        requested_delta=request.delta,
        limit_epsilon=budget.epsilon,
        limit_delta=budget.delta,
        already_recorded=already,
        non_private_runs=s.non_private_runs,
        spent_basic_epsilon=s.basic_epsilon,
        total_epsilon=total.epsilon,
        total_delta=total.delta,
        accountant=total.accountant,
    )
    if budget.enforced:
        _refuse_if_over(status, s, total, budget, request.private)
    return status


def _refuse_if_over(status: BudgetStatus, s: Spent, total: Spent, budget: Budget, private: bool) -> None:
    figures = (
        f"spent ε={_fmt(s.epsilon)} ({s.how}; basic sum {_fmt(s.basic_epsilon)}) over {s.runs} run(s), "
        f"requested ε={_fmt(status.requested_epsilon)}, limit ε={_fmt(budget.epsilon)}; spent δ={_fmt(s.delta)}, "
        f"requested δ={_fmt(status.requested_delta)}, limit δ={_fmt(budget.delta)}"
    )
    where = f"dataset '{status.dataset}'"
    if not private:
        if budget.allow_non_private:
            return  # the operator accepted that this dataset loses its DP guarantee
        raise PrivacyBudgetExceeded(
            f"privacy budget refused a non-private run on {where}: {figures}. A non-private run spends unbounded "
            f"ε and voids the DP guarantee for every record of the dataset; set privacy.allow_non_private: true "
            f"to accept that, or train with train.dp: true",
            status=status,
        )
    if s.non_private_runs:
        if budget.allow_non_private:
            return  # the operator accepted that this dataset has no DP guarantee left
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted on {where}: non-private run(s) {', '.join(s.non_private_runs)} voided its DP "
            f"guarantee; {figures}. Use another source dataset, or set privacy.allow_non_private: true",
            status=status,
        )
    if _exceeds(total.epsilon, budget.epsilon) or _exceeds(total.delta, budget.delta):
        raise PrivacyBudgetExceeded(
            f"privacy budget exceeded on {where}: {figures}. Composed with this run: ε={_fmt(total.epsilon)} "
            f"({total.how}) at δ={_fmt(total.delta)}, basic sum ε={_fmt(total.basic_epsilon)}; the composed ε and "
            f"the δ sum must not exceed the limits. Lower train.target_epsilon/target_delta, or raise the "
            f"dataset's budget in privacy:",
            status=status,
        )


def check_budget(
    dataset: str,
    epsilon: float,
    delta: float,
    *,
    budget: Budget,
    run_id: str | None = None,
    private: bool = True,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    unit: str = "record",
    url: str | None = None,
) -> BudgetStatus:
    """Would a run of (ε, δ) on `dataset` fit its budget? Raises PrivacyBudgetExceeded if not.

    With the run's mechanism (σ, q, T) it is composed with the history by the accountant; without it, its ε
    is added on top (conservative). `run_id` already in the ledger (a resumed or retried run) is left out of
    "spent". Read-only: use `record_run(..., budget=...)` to check and reserve atomically.
    """
    fields = _mechanism_fields(
        private,
        epsilon,
        delta,
        accountant=None,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        max_grad_norm=None,
        unit=unit,
    )
    request = _request(run_id or "(requested run)", private, fields)
    with _engine(url).connect() as conn:
        return _check(conn, dataset, request, budget, run_id)


def _request(run_id: str, private: bool, fields: dict[str, Any]) -> _Charge:
    """The charge of a run about to be recorded, from its validated mechanism columns."""
    mechanism = tuple(fields[k] for k in ("noise_multiplier", "sample_rate", "steps"))
    complete = private and None not in mechanism
    return _Charge(run_id, private, fields["epsilon"], fields["delta"], mechanism if complete else None, fields["unit"])


def summary(dataset: str, budget: Budget | None = None, *, url: str | None = None) -> dict[str, Any]:
    """Cumulative figures for report.json and MLflow (JSON-safe; ε = ∞ as "inf").

    `spent_epsilon` is the tight figure (at δ = `spent_delta`, by `composition_accountant`), `basic_epsilon`
    the sum beside it; `remaining_epsilon` is the budget less the tight figure."""
    s = spent(dataset, url=url)
    eps_limit = budget.epsilon if budget else None
    delta_limit = budget.delta if budget else None
    return {
        "source_dataset": dataset,
        "runs": s.runs,
        "unit": s.unit,
        "spent_epsilon": _json_num(s.epsilon),
        "spent_delta": s.delta,
        "composition_accountant": s.accountant,
        "composed": s.how,
        "basic_epsilon": _json_num(s.basic_epsilon),
        "epsilon_budget": eps_limit,
        "delta_budget": delta_limit,
        "remaining_epsilon": None if eps_limit is None else _json_num(max(0.0, eps_limit - s.epsilon)),
        "remaining_delta": None if delta_limit is None else max(0.0, delta_limit - s.delta),
        "runs_without_mechanism": list(s.without_mechanism),
        "non_private_runs": list(s.non_private_runs),
        "composition": COMPOSITION,
        "erasure": ERASURE_NOTE,
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
    "unit",
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
    unit: str = "record",
) -> LedgerEntry:
    """Append one run's entry (its target ε, δ and mechanism); with `budget`, refuse it first if the history
    composed with it does not fit.

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
        unit=unit,
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
    unit: str = "record",
) -> dict[str, Any]:
    """The entry's mechanism columns: validated DP-SGD parameters, or ε = inf, δ = 0 for a non-private run."""
    if unit not in UNITS:
        raise LedgerError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool)):
        raise LedgerError(f"steps must be an integer or None, got {steps!r}")
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
        unit=unit,
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
                    request = _request(run_id, values["private"], values)
                    _check(conn, values["source_dataset"], request, budget, run_id)
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
    show = sub.add_parser(
        "show", help="print the ledger, then per dataset: tight ε (accountant, δ), basic sum, budget, runs"
    )
    show.add_argument("--dataset", help="only this source dataset")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    chk = sub.add_parser("check", help="exit 1 when a run of this ε, δ would exceed the dataset's budget")
    chk.add_argument("--dataset", help="source dataset id (default: privacy.source_dataset)")
    chk.add_argument("--epsilon", type=float, help="requested ε (required unless --non-private)")
    chk.add_argument("--delta", type=float, default=0.0, help="requested δ")
    chk.add_argument("--run-id", help="the run's id, if it may already be in the ledger (resume)")
    chk.add_argument("--non-private", action="store_true", help="check a non-private run (ε = inf)")
    chk.add_argument("--noise-multiplier", type=float, help="the run's σ (with --sample-rate and --steps: composed)")
    chk.add_argument("--sample-rate", type=float, help="the run's Poisson sample rate q")
    chk.add_argument("--steps", type=int, help="the run's (capped) number of steps T")
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
            noise_multiplier=args.noise_multiplier,
            sample_rate=args.sample_rate,
            steps=args.steps,
            url=url,
        )
    except PrivacyBudgetExceeded as err:
        print(str(err), file=sys.stderr)
        return 1
    except LedgerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"within budget on dataset '{dataset}': spent ε={_fmt(status.spent_epsilon)} "
        f"(basic sum {_fmt(status.spent_basic_epsilon)}) over {status.runs} run(s), "
        f"requested ε={_fmt(status.requested_epsilon)}, composed with it ε={_fmt(status.total_epsilon)} "
        f"({(status.accountant or 'basic').upper()}) at δ={_fmt(status.total_delta)}, "
        f"limit ε={_fmt(status.limit_epsilon)}; spent δ={_fmt(status.spent_delta)}, "
        f"requested δ={_fmt(status.requested_delta)}, limit δ={_fmt(status.limit_delta)}"
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
                    "erasure": ERASURE_NOTE,
                },
                indent=2,
                allow_nan=False,
            )
        )
        return 0
    print(_entries_table(rows))
    print()
    print(_totals_table(totals))
    print()
    print(f"Composition: {COMPOSITION}.")
    print(f"Note: {ERASURE_NOTE}.")
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
    "unit",
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
                e.unit,
            ]
            for e in rows
        ],
        _ENTRY_HEADER,
    )


_TOTALS_HEADER = [
    "dataset",
    "runs",
    "unit",
    "tight epsilon",
    "accountant",
    "at delta",
    "basic sum",
    "epsilon budget",
    "delta budget",
    "runs w/o mechanism",
    "non-private runs",
]


def _totals_table(totals: list[dict[str, Any]]) -> str:
    # tight ε first: it is what the budget is checked against; the basic sum beside it is an upper bound
    return _table(
        [
            [
                t["source_dataset"],
                str(t["runs"]),
                t["unit"],
                _fmt(float(t["spent_epsilon"])),
                (t["composition_accountant"] or ("basic" if t["runs"] else "-")).upper(),
                _fmt(t["spent_delta"]),
                _fmt(float(t["basic_epsilon"])),
                _opt(t["epsilon_budget"]),
                _opt(t["delta_budget"]),
                str(len(t["runs_without_mechanism"])),
                ",".join(t["non_private_runs"]) or "-",
            ]
            for t in totals
        ],
        _TOTALS_HEADER,
    )


if __name__ == "__main__":
    sys.exit(main())
