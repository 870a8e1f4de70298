"""Privacy budget ledger: recording, composition, refusal, append-only, idempotence, CLI, concurrency.

Runs written by `_run` carry no mechanism unless a test passes one (`**MECH`): their ε compose by basic
composition, which keeps the bookkeeping tests' figures exact. The tight composition of real mechanisms is
tested below them (`test_tight_*`) and in test_composition.py."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DatabaseError

from tasks.config import PipelineConfig, PrivacyConfig
from tasks.train import ledger as L

REPO = Path(__file__).resolve().parents[2]
DIGEST = L.lineage_digest(["rec-0001", "rec-0002", "rec-0003"])
MECH = dict(accountant="prv", noise_multiplier=0.9, sample_rate=0.032, steps=79, max_grad_norm=1.0)


@pytest.fixture
def url(tmp_path):
    yield f"sqlite:///{tmp_path / 'ledger.db'}"
    L.dispose_engines()


def _run(url, run_id, eps=2.0, delta=1e-5, dataset="ds-a", budget=None, **kw):
    args = dict(
        run_id=run_id,
        dataset=dataset,
        dataset_revisions=["rev-" + run_id],
        record_count=3,
        lineage_digest=DIGEST,
        epsilon=eps,
        delta=delta,
        budget=budget,
        url=url,
    )
    args.update(kw)
    return L.record_run(**args)


def test_record_and_read_back(url):
    entry = _run(url, "manual__2026-01-01T00:00:00+00:00", eps=3.5, delta=2.5e-5, notes="monthly run", **MECH)
    [back] = L.entries(url=url)
    assert back == entry
    assert (back.seq, back.run_id, back.source_dataset) == (1, "manual__2026-01-01T00:00:00+00:00", "ds-a")
    assert back.dataset_revisions == ("rev-manual__2026-01-01T00:00:00+00:00",)
    assert (back.record_count, back.lineage_digest, back.private) == (3, DIGEST, True)
    assert (
        back.mechanism,
        back.accountant,
        back.noise_multiplier,
        back.sample_rate,
        back.steps,
        back.max_grad_norm,
    ) == ("DP-SGD (Opacus)", "prv", 0.9, 0.032, 79, 1.0)
    assert (back.epsilon, back.delta, back.notes, back.unit) == (3.5, 2.5e-5, "monthly run", "record")
    assert back.recorded_mechanism == (0.9, 0.032, 79)
    assert back.created_at.tzinfo is not None and abs(time.time() - back.created_at.timestamp()) < 60
    assert json.loads(json.dumps(back.as_dict(), allow_nan=False))["epsilon"] == 3.5


def test_cumulative_totals_and_other_datasets_not_counted(url):
    for i in range(10):
        _run(url, f"run-{i}", eps=8.0, delta=2.5e-5)
    _run(url, "other", eps=5.0, delta=1e-6, dataset="ds-b")
    s = L.spent("ds-a", url=url)
    assert (s.epsilon, s.basic_epsilon, s.runs, s.accountant) == (80.0, 80.0, 10, None)
    assert math.isclose(s.delta, 2.5e-4) and len(s.without_mechanism) == 10  # no mechanism: basic composition
    assert L.spent("ds-b", url=url) == L.Spent(
        epsilon=5.0, delta=1e-6, runs=1, basic_epsilon=5.0, without_mechanism=("other",)
    )
    assert L.spent("nothing", url=url) == L.Spent(0.0, 0.0, 0)
    # exactly at the limit is allowed (float sums of δ must not trip it); ds-b's spend is not in ds-a's
    assert L.check_budget("ds-b", 75.0, 1e-5, budget=L.Budget(80.0, 2.5e-4), url=url).spent_epsilon == 5.0
    with pytest.raises(L.PrivacyBudgetExceeded):
        L.check_budget("ds-a", 0.5, 0.0, budget=L.Budget(80.0, 2.5e-4), url=url)
    status = L.check_budget("ds-a", 1.0, 0.0, budget=L.Budget(81.0, 2.5e-4), url=url)
    assert (status.spent_epsilon, status.runs, status.requested_epsilon) == (80.0, 10, 1.0)


def test_refusal_states_spent_requested_limit_and_is_not_recorded(url):
    budget = L.Budget(epsilon=10.0, delta=1e-4)
    _run(url, "r1", eps=4.0, delta=2e-5, budget=budget)
    _run(url, "r2", eps=4.5, delta=2e-5, budget=budget)
    with pytest.raises(L.PrivacyBudgetExceeded) as err:
        _run(url, "r3", eps=3.0, delta=1e-5, budget=budget)
    msg = str(err.value)
    for part in (
        "'ds-a'",
        "spent ε=8.5",
        "2 run(s)",
        "requested ε=3",
        "limit ε=10",
        "spent δ=4e-05",
        "requested δ=1e-05",
        "limit δ=0.0001",
    ):
        assert part in msg, (part, msg)
    assert err.value.status.spent_epsilon == 8.5 and err.value.status.limit_epsilon == 10.0
    assert [e.run_id for e in L.entries(url=url)] == ["r1", "r2"]
    # δ alone can exceed too
    with pytest.raises(L.PrivacyBudgetExceeded, match=r"requested δ=0.0001"):
        L.check_budget("ds-a", 0.1, 1e-4, budget=budget, url=url)
    assert _run(url, "r3", eps=1.5, delta=1e-5, budget=budget).seq == 3


def test_same_run_twice_is_one_entry_and_not_counted_twice(url):
    budget = L.Budget(epsilon=10.0, delta=1e-4)
    first = _run(url, "resumed", eps=6.0, budget=budget)
    again = _run(url, "resumed", eps=6.0, budget=budget)  # retry: 6 + 6 > 10 would refuse if counted twice
    assert again == first and len(L.entries(url=url)) == 1
    assert L.spent("ds-a", url=url).epsilon == 6.0
    status = L.check_budget("ds-a", 6.0, 1e-5, budget=budget, run_id="resumed", url=url)
    assert status.already_recorded and status.spent_epsilon == 0.0
    with pytest.raises(L.PrivacyBudgetExceeded):
        L.check_budget("ds-a", 6.0, 1e-5, budget=budget, run_id="a-new-run", url=url)
    # the same id on other data or with other parameters is a new mechanism, not a retry
    with pytest.raises(L.LedgerConflict, match=r"dataset_revisions.*new run id"):
        _run(url, "resumed", eps=6.0, dataset_revisions=["another-rev"])
    with pytest.raises(L.LedgerConflict, match="epsilon"):
        _run(url, "resumed", eps=7.0)
    assert len(L.entries(url=url)) == 1


def test_update_and_delete_are_refused_by_the_database(url, tmp_path):
    _run(url, "r1", eps=2.0)
    raw = sqlite3.connect(tmp_path / "ledger.db")
    for sql in ("UPDATE privacy_ledger SET epsilon = 0", "DELETE FROM privacy_ledger"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute(sql)
        raw.rollback()
    raw.close()
    with create_engine(url).begin() as conn, pytest.raises(DatabaseError, match="append-only"):
        conn.execute(text("UPDATE privacy_ledger SET delta = 0 WHERE run_id = 'r1'"))
    [entry] = L.entries(url=url)
    assert (entry.epsilon, entry.delta) == (2.0, 1e-5)
    assert not any(hasattr(L, name) for name in ("update_run", "delete_run", "remove_run"))


def test_non_private_runs(url):
    budget = L.Budget(epsilon=20.0, delta=1e-4)
    _run(url, "dp-1", eps=3.0, budget=budget)
    with pytest.raises(
        L.PrivacyBudgetExceeded,
        match=r"non-private run on dataset 'ds-a'.*requested ε=inf.*"
        r"limit ε=20.*allow_non_private",
    ):
        _run(url, "plain", private=False, epsilon=None, delta=None, budget=budget)
    assert len(L.entries(url=url)) == 1

    allow = L.Budget(epsilon=20.0, delta=1e-4, allow_non_private=True)
    entry = _run(url, "plain", private=False, epsilon=None, delta=None, budget=allow)
    assert (entry.epsilon, entry.delta, entry.private) == (math.inf, 0.0, False)
    assert (entry.mechanism, entry.noise_multiplier) == ("none (non-private)", None)
    s = L.spent("ds-a", url=url)
    assert math.isinf(s.epsilon) and s.non_private_runs == ("plain",)
    # the dataset's guarantee is void: a later DP run is refused, and the message says why
    with pytest.raises(L.PrivacyBudgetExceeded, match=r"non-private run\(s\) plain voided.*spent ε=inf"):
        L.check_budget("ds-a", 1.0, 1e-6, budget=budget, url=url)
    assert L.check_budget("ds-a", 1.0, 1e-6, budget=allow, url=url).non_private_runs == ("plain",)
    summ = L.summary("ds-a", budget, url=url)
    assert summ["spent_epsilon"] == "inf" and summ["non_private_runs"] == ["plain"]
    json.dumps(summ, allow_nan=False)
    # with no budget configured the ledger only records
    assert L.check_budget("ds-c", 0.0, 0.0, budget=L.Budget(None, None), private=False, url=url).runs == 0


def test_invalid_entries_are_rejected(url):
    with pytest.raises(L.LedgerError, match="lineage_digest"):
        _run(url, "x", lineage_digest="rec-0001,rec-0002")
    with pytest.raises(L.LedgerError, match="epsilon"):
        _run(url, "x", eps=0.0)
    with pytest.raises(L.LedgerError, match="epsilon"):
        _run(url, "x", eps=math.inf)
    with pytest.raises(L.LedgerError, match="notes"):
        _run(url, "x", notes="line one\nline two")
    with pytest.raises(L.LedgerError, match="SQLite or PostgreSQL"):
        L.entries(url="mysql://u@h/db")
    assert L.entries(url=url) == []


def test_env_url_is_honoured(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "ledger.sqlite"
    monkeypatch.setenv("PFT_LEDGER_URL", f"sqlite:///{target}")
    try:
        assert L.ledger_url() == f"sqlite:///{target}"
        _run(None, "via-env")
        assert target.is_file()
        assert [e.run_id for e in L.entries()] == ["via-env"]
        assert [r[0] for r in sqlite3.connect(target).execute("SELECT run_id FROM privacy_ledger")] == ["via-env"]
        monkeypatch.delenv("PFT_LEDGER_URL")
        assert L.ledger_url().endswith("/ledger.db")
        assert L.ledger_url().startswith("sqlite:///" + os.environ["PFT_HOME"])
    finally:
        L.dispose_engines()


def test_lineage_and_no_record_text_or_ids_in_the_ledger(url, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [
        {"record_id": f"CLM-77{i:04d}", "record_type": "claim_note", "text": f"Secret diagnosis zebra-{i}"}
        for i in range(5)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    lin = L.lineage_of(data)
    assert lin.record_count == 5
    assert lin.digest == L.lineage_digest(r["record_id"] for r in rows)  # order-independent
    assert lin.digest != L.lineage_digest(r["record_id"] for r in rows[:4])
    L.record_run(
        run_id="r1",
        dataset="ds-a",
        dataset_revisions="abc",
        record_count=lin.record_count,
        lineage_digest=lin.digest,
        epsilon=1.0,
        delta=1e-6,
        url=url,
    )
    L.dispose_engines()
    blob = (tmp_path / "ledger.db").read_bytes()
    assert b"zebra" not in blob and b"CLM-77" not in blob and lin.digest.encode() in blob
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"record_id": "a", "text": "t"}\n{"text": "no id here"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'record_id'") as err:
        L.lineage_of(bad)
    assert "no id here" not in str(err.value)


def test_budget_from_config():
    cfg = PipelineConfig.model_validate(
        {
            "privacy": {
                "epsilon_budget": 30,
                "delta_budget": 1e-4,
                "budgets": {"small": {"epsilon_budget": 2, "delta_budget": None}},
            }
        }
    )
    assert L.budget_for(cfg.privacy, "harborview-records") == L.Budget(30.0, 1e-4, False)
    assert L.budget_for(cfg.privacy, "small") == L.Budget(2.0, None, False)
    assert cfg.privacy.source_dataset == "harborview-records"
    with pytest.raises(ValueError, match="epsilon_budget"):
        PrivacyConfig.model_validate({"epsilon_budget": -1})
    with pytest.raises(ValueError, match="source_dataset"):
        PrivacyConfig.model_validate({"source_dataset": "has space"})


def _cli(args, url, config, capsys):
    """In-process `python -m tasks.train.ledger` (subprocesses cost seconds each on a busy machine)."""
    rc = L.main(["--url", url, "--config", str(config), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_show_and_check(url, tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump({"privacy": {"source_dataset": "ds-a", "epsilon_budget": 10.0, "delta_budget": 1e-4}})
    )
    _run(url, "r1", eps=4.0)
    _run(url, "r2", eps=4.0)
    _run(url, "b1", eps=1.0, dataset="ds-b")

    rc, out, _ = _cli(["show"], url, config, capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["seq", "created", "(UTC)", "run_id"]
    assert sum(1 for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])) == 3
    totals = next(line for line in lines if line.startswith("ds-a "))
    # runs, unit, tight ε, accountant (none: these runs have no mechanism), at δ, basic sum, budgets, w/o mechanism
    assert totals.split() == ["ds-a", "2", "record", "8", "BASIC", "2e-05", "8", "10", "0.0001", "2", "-"]
    assert "erasure refunds no budget" in out

    rc, out, _ = _cli(["show", "--json", "--dataset", "ds-a"], url, config, capsys)
    doc = json.loads(out)
    assert rc == 0 and [e["run_id"] for e in doc["entries"]] == ["r1", "r2"]
    assert doc["erasure"].startswith("erasure refunds no budget")
    assert doc["totals"] == [L.summary("ds-a", L.Budget(10.0, 1e-4), url=url)]

    rc, out, _ = _cli(["check", "--epsilon", "2", "--delta", "1e-5"], url, config, capsys)
    assert rc == 0 and "within budget on dataset 'ds-a'" in out
    # ε 2.5 on top of 8 is over 10; with its mechanism (ε ≈ 0.73 at δ 1e-5 by PRV) the composed total fits
    rc, _, err = _cli(["check", "--epsilon", "2.5", "--delta", "1e-5"], url, config, capsys)
    assert rc == 1 and "composed with this run: ε=10.5 (basic" in err.lower()
    mechanism = ["--noise-multiplier", "1.2", "--sample-rate", "0.02", "--steps", "50"]
    rc, out, err = _cli(["check", "--epsilon", "2.5", "--delta", "1e-5", *mechanism], url, config, capsys)
    assert rc == 0, err
    assert "composed with it ε=8.72" in out and "(PRV) at δ=3e-05" in out
    rc, _, err = _cli(["check", "--epsilon", "4", "--delta", "1e-5", "--run-id", "r2"], url, config, capsys)
    assert rc == 0, err  # a resumed run is not counted twice
    rc, _, err = _cli(["check", "--non-private"], url, config, capsys)
    assert rc == 1 and "allow_non_private" in err
    with pytest.raises(SystemExit) as exit_:
        _cli(["check"], url, config, capsys)  # --epsilon missing
    assert exit_.value.code == 2

    # the real entry point and its exit status
    env = dict(os.environ, PFT_LEDGER_URL=url, PFT_CONFIG=str(config))
    over = subprocess.run(
        [sys.executable, "-m", "tasks.train.ledger", "check", "--dataset", "ds-a", "--epsilon", "3", "--delta", "1e-5"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert over.returncode == 1, over.stderr
    for part in ("dataset 'ds-a'", "spent ε=8", "requested ε=3", "limit ε=10"):
        assert part in over.stderr, (part, over.stderr)


_WORKER = textwrap.dedent("""
    import sys, time
    from tasks.train import ledger as L
    url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    L.entries(url=url)  # schema ready before the race
    while time.time() < start:
        time.sleep(0.005)
    budget = L.Budget(epsilon=10.0, delta=None)
    ok = 0
    shared = L.record_run(run_id="shared", dataset="ds-a", dataset_revisions="r", record_count=3,
                          lineage_digest=sys.argv[4], epsilon=1.0, delta=1e-6, budget=budget, url=url)
    for i in range(8):
        try:
            L.record_run(run_id=f"{name}-{i}", dataset="ds-a", dataset_revisions="r", record_count=3,
                         lineage_digest=sys.argv[4], epsilon=1.0, delta=1e-6, budget=budget, url=url)
            ok += 1
        except L.PrivacyBudgetExceeded:
            pass
    print(ok, shared.seq)
""")


def test_two_processes_recording_at_once(url, tmp_path):
    L.entries(url=url)
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, name, str(start), DIGEST],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p", "q")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    oks = [int(o[0].split()[0]) for o in outs]
    shared_seqs = {o[0].split()[1] for o in outs}
    rows = L.entries(url=url)
    assert len(shared_seqs) == 1 and sum(1 for e in rows if e.run_id == "shared") == 1
    assert sum(oks) == 9 and len(rows) == 10  # 1 shared + 9 more fill ε = 10 exactly, never more
    assert L.spent("ds-a", url=url).epsilon == 10.0


def test_a_ledger_from_an_earlier_version_gains_the_newer_columns(tmp_path):
    """ALTER TABLE ADD COLUMN on the old table: old rows read config_digest NULL and unit 'record' (they were
    record-level), no mechanism to compose; append-only still holds."""
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE privacy_ledger (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id VARCHAR(250) NOT NULL "
        "UNIQUE, source_dataset VARCHAR(200) NOT NULL, dataset_revisions TEXT NOT NULL, record_count INTEGER "
        "NOT NULL, lineage_digest VARCHAR(71) NOT NULL, private BOOLEAN NOT NULL, mechanism VARCHAR(64) NOT "
        "NULL, accountant VARCHAR(32), noise_multiplier FLOAT, sample_rate FLOAT, steps INTEGER, "
        "max_grad_norm FLOAT, epsilon FLOAT NOT NULL, delta FLOAT NOT NULL, created_at DATETIME NOT NULL, "
        "notes VARCHAR(500))"
    )
    con.execute(
        "INSERT INTO privacy_ledger (run_id, source_dataset, dataset_revisions, record_count, lineage_digest, "
        "private, mechanism, epsilon, delta, created_at) VALUES ('old', 'ds', '[\"r\"]', 1, ?, 1, 'DP-SGD', "
        "1.0, 1e-5, '2026-01-01 00:00:00')",
        ("sha256:" + "0" * 64,),
    )
    con.commit()
    con.close()
    url = f"sqlite:///{db}"
    try:
        (old,) = L.entries(url=url)
        assert old.config_digest is None and old.unit == "record" and old.recorded_mechanism is None
        new = L.record_run(
            run_id="new",
            dataset="ds",
            dataset_revisions="r",
            record_count=1,
            lineage_digest="sha256:" + "0" * 64,
            epsilon=1.0,
            delta=1e-5,
            config_digest=L.config_digest({"lr": 1}),
            url=url,
        )
        assert new.config_digest.startswith("sha256:") and len(L.entries(url=url)) == 2
    finally:
        L.dispose_engines()
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT run_id, unit FROM privacy_ledger ORDER BY seq").fetchall() == [
        ("old", "record"),
        ("new", "record"),
    ]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):  # the migration kept the triggers working
        raw.execute("UPDATE privacy_ledger SET unit = 'subject'")
    raw.close()


# --------------------------------------------------------------------------- tight composition


def _opacus(accountant: str, history: list, delta: float) -> float:
    """Opacus's own accountant fed a history: what the ledger's figure must equal."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = {"prv": PRVAccountant, "rdp": RDPAccountant}[accountant]()
    acc.history = list(history)
    return acc.get_epsilon(delta)


def _mech(sigma: float, q: float, steps: int, delta: float) -> dict:
    """A run's mechanism and the ε the recipe's accountant gives it (as `tasks.train.dp.dp_mechanism` returns)."""
    from tasks.train.dp import epsilon_after

    eps = epsilon_after(steps, noise=sigma, sample_rate=q, delta=delta, accountant="prv")
    return {"noise": sigma, "sample_rate": q, "steps": steps, "delta": delta, "epsilon": eps, "accountant": "prv"}


def _monthly(month: int) -> dict:
    """The pipeline's own mechanism for month `month` of a retrain at ε = 2 on a source growing 1,000 records a
    month from 16,000 (batch 256, 1.3 epochs: q = 256/N, about 80-140 steps, δ = 1e-5)."""
    from tasks.train.dp import dp_mechanism

    t = {"target_epsilon": 2.0, "target_delta": 1e-5, "batch_size": 256, "epochs": 1.3}
    return dp_mechanism(t, 16_000 + 1_000 * month)


def _dp_run(url, run_id, mech, budget=None, dataset="ds-a"):
    """Record a run as the pipeline does: its mechanism and its accountant's ε."""
    return L.record_run(
        run_id=run_id,
        dataset=dataset,
        dataset_revisions=["rev-" + run_id],
        record_count=3,
        lineage_digest=DIGEST,
        epsilon=mech["epsilon"],
        delta=mech["delta"],
        accountant=mech["accountant"],
        noise_multiplier=mech["noise"],
        sample_rate=mech["sample_rate"],
        steps=mech["steps"],
        max_grad_norm=1.0,
        budget=budget,
        url=url,
    )


def _history(mechs: list[dict]) -> list[tuple]:
    return [(m["noise"], m["sample_rate"], m["steps"]) for m in mechs]


@pytest.fixture
def fresh_composition():
    from tasks.train import composition

    composition.clear_cache()
    yield
    composition.clear_cache()  # no figure composed under a patched accountant outlives the test


def test_tight_composition_of_heterogeneous_runs_is_opacus_prv_fed_the_same_history(url):
    runs = [_mech(0.8, 0.016, 82, 1e-5), _mech(1.1, 0.01, 150, 2e-5), _mech(0.6, 0.03, 40, 5e-6)]
    for i, m in enumerate(runs):
        _dp_run(url, f"m{i}", m)
    s = L.spent("ds-a", url=url)
    delta = math.fsum(m["delta"] for m in runs)
    assert s.accountant == "prv" and s.delta == pytest.approx(delta, rel=1e-12)
    assert s.epsilon == _opacus("prv", _history(runs), delta)  # to the last bit: same history, same order
    assert s.basic_epsilon == pytest.approx(math.fsum(m["epsilon"] for m in runs), rel=1e-12)
    assert s.epsilon < s.basic_epsilon
    # more than any one of the runs at the same δ (a run alone at its smaller δ can show more: δ buys ε)
    assert all(_opacus("prv", _history([m]), delta) < s.epsilon for m in runs)
    assert (s.without_mechanism, s.unit, s.how) == ((), "record", "PRV accountant over 3 mechanism(s)")
    summ = L.summary("ds-a", L.Budget(10.0, 1e-3), url=url)
    assert (summ["spent_epsilon"], summ["basic_epsilon"], summ["composition_accountant"]) == (
        s.epsilon,
        s.basic_epsilon,
        "prv",
    )
    assert summ["remaining_epsilon"] == pytest.approx(10.0 - s.epsilon)
    json.dumps(summ, allow_nan=False)


def test_tight_composition_falls_back_to_rdp_then_to_basic(url, monkeypatch, fresh_composition):
    from opacus.accountants import PRVAccountant, RDPAccountant

    runs = [_mech(0.95, 0.02, 70, 1e-5), _mech(0.7, 0.012, 110, 1e-5)]
    for i, m in enumerate(runs):
        _dp_run(url, f"f{i}", m)
    rdp = _opacus("rdp", _history(runs), 2e-5)

    def prv_fails(self, delta, **kw):
        raise ValueError("PRV domain too large")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", prv_fails)
    s = L.spent("ds-a", url=url)
    assert s.accountant == "rdp" and s.epsilon == pytest.approx(rdp, rel=1e-9)
    assert s.how.startswith("RDP accountant") and s.epsilon < s.basic_epsilon

    from tasks.train import composition

    composition.clear_cache()
    monkeypatch.setattr(RDPAccountant, "get_epsilon", lambda self, delta, **kw: math.nan)
    s = L.spent("ds-a", url=url)  # neither answers: basic composition for the whole dataset, and it says so
    assert (s.accountant, s.without_mechanism, s.how) == (None, ("f0", "f1"), "basic: no recorded mechanism")
    assert s.epsilon == s.basic_epsilon == pytest.approx(runs[0]["epsilon"] + runs[1]["epsilon"])


def test_runs_without_a_mechanism_are_added_on_top_of_the_accountant(url):
    runs = [_mech(0.8, 0.016, 82, 1e-5), _mech(1.0, 0.02, 60, 1e-5)]
    for i, m in enumerate(runs):
        _dp_run(url, f"t{i}", m)
    _run(url, "legacy", eps=1.5, delta=2e-5)  # an entry from before mechanisms were recorded
    _run(url, "partial", eps=0.5, delta=1e-6, noise_multiplier=1.0)  # half a mechanism is none
    s = L.spent("ds-a", url=url)
    assert s.epsilon == pytest.approx(_opacus("prv", _history(runs), 2e-5) + 1.5 + 0.5, rel=1e-9)
    assert s.delta == pytest.approx(2e-5 + 2e-5 + 1e-6) and s.without_mechanism == ("legacy", "partial")
    assert s.how == "PRV accountant over 2 mechanism(s) + recorded ε of 2 run(s) without one"


def test_tight_total_of_twelve_monthly_retrains_at_epsilon_2(url):
    """Issue 15's target: twelve monthly retrains at ε = 2 each compose to far less than the basic sum of 24.
    December is admitted under a budget of 6, which basic composition exhausts at the fourth month."""
    budget = L.Budget(epsilon=6.0, delta=1e-3)
    months = [_monthly(m) for m in range(12)]
    assert all(m["accountant"] == "prv" and 1.99 <= m["epsilon"] <= 2.0 for m in months)
    assert math.fsum(m["epsilon"] for m in months[:4]) > budget.epsilon
    for i, m in enumerate(months):  # the check composes the whole history: once is enough here (PRV takes seconds)
        _dp_run(url, f"monthly_refinetune/monthly-2026-{i + 1:02d}", m, budget=budget if i == 11 else None)
    s = L.spent("ds-a", url=url)
    assert (s.runs, s.accountant) == (12, "prv") and s.delta == pytest.approx(12e-5)
    assert s.epsilon == pytest.approx(_opacus("prv", _history(months), 12e-5), rel=1e-9)
    assert 23.9 < s.basic_epsilon <= 24.0
    assert 2.0 < s.epsilon < s.basic_epsilon / 4  # measured: 3.83 (PRV at δ 1.2e-4) against 23.95
    print(
        f"\n12 monthly retrains at ε=2: tight ε={s.epsilon:.3f} (PRV, δ={s.delta:.2g}), basic sum {s.basic_epsilon:.3f}"
    )


def test_the_ledger_refuses_on_the_tight_total(url):
    """The request is composed with the history: refused when that total is over the limit, admitted when it
    is not, even where spent + requested ε (and the basic sum) would be far over."""
    from tasks.train.composition import compose

    months = [_monthly(m) for m in range(13)]
    for i, m in enumerate(months[:12]):
        _dp_run(url, f"month-{i + 1:02d}", m)
    spent = L.spent("ds-a", url=url)
    total = compose(_history(months), 13e-5).epsilon
    assert spent.epsilon < total < spent.epsilon + months[12]["epsilon"]

    over = L.Budget(epsilon=(spent.epsilon + total) / 2, delta=1e-3)  # the history fits, the 13th month does not
    with pytest.raises(L.PrivacyBudgetExceeded) as err:
        _dp_run(url, "month-13", months[12], budget=over)
    status = err.value.status
    assert status.spent_epsilon == pytest.approx(spent.epsilon) and status.spent_epsilon < over.epsilon
    assert status.total_epsilon == pytest.approx(total, rel=1e-9) and status.accountant == "prv"
    assert f"Composed with this run: ε={total:.6g} (PRV accountant over 13 mechanism(s))" in str(err.value)
    assert len(L.entries(url=url)) == 12  # refused: not recorded

    fits = L.Budget(epsilon=total + 0.01, delta=1e-3)  # basic: 25.9 spent + requested, far over 'fits'
    assert spent.basic_epsilon + months[12]["epsilon"] > spent.epsilon + months[12]["epsilon"] > fits.epsilon
    entry = _dp_run(url, "month-13", months[12], budget=fits)
    assert entry.seq == 13 and L.spent("ds-a", url=url).epsilon == pytest.approx(total, rel=1e-9)


def test_a_retried_run_is_not_counted_twice_in_the_tight_total(url):
    budget = L.Budget(epsilon=5.0, delta=1e-3)
    jan, feb = _monthly(0), _monthly(1)
    _dp_run(url, "monthly-2026-01", jan, budget=budget)
    first = _dp_run(url, "monthly-2026-02", feb, budget=budget)
    again = _dp_run(url, "monthly-2026-02", feb, budget=budget)  # an Airflow retry of February
    assert again == first and len(L.entries(url=url)) == 2
    both = _opacus("prv", _history([jan, feb]), 2e-5)
    assert L.spent("ds-a", url=url).epsilon == pytest.approx(both, rel=1e-9)
    status = L.check_budget(
        "ds-a",
        feb["epsilon"],
        feb["delta"],
        budget=budget,
        run_id="monthly-2026-02",
        noise_multiplier=feb["noise"],
        sample_rate=feb["sample_rate"],
        steps=feb["steps"],
        url=url,
    )
    assert status.already_recorded and status.runs == 1 and status.spent_epsilon == pytest.approx(jan["epsilon"])
    assert status.total_epsilon == pytest.approx(both, rel=1e-9)  # February once, not twice


def test_python_m_tasks_ledger_is_the_same_cli():
    import tasks.ledger

    assert tasks.ledger.main is L.main
