"""monthly_refinetune under a real scheduler and dag-processor: three months backfilled from the CLI.

`airflow standalone` (LocalExecutor, SQLite) on a temporary PFT_HOME with three months of
generated landing data, the tiny base model and a small evaluation. The March partition holds a
right-to-erasure request naming two members whose records arrived in January. Then February is
backfilled again with --reprocess-behavior completed: the month is replayed, nothing is duplicated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from airflow_live import AirflowLive

pytestmark = pytest.mark.slow  # a live `airflow standalone` backfilling three months

REPO = Path(__file__).resolve().parents[2]
DAG = "monthly_refinetune"
MONTHS = ["2026-01", "2026-02", "2026-03"]
RECORDS = 270  # 90 a month


def small_config(home: Path, base_model: Path) -> Path:
    cfg = yaml.safe_load((REPO / "include" / "config" / "pipeline.yaml").read_text())
    cfg["base_model"]["path"] = str(base_model)  # the tiny model, built once per session
    cfg["mask"]["workers"] = 1
    cfg["train"].update(epochs=0.5, batch_size=32, physical_batch_size=32)
    # A handful of records: too few for the MIA and canary gates to mean anything, and δ = 1/(10·N)
    # is above the real δ budget. The gates and budgets themselves are tested elsewhere.
    cfg["evaluate"].update(
        qa_limit=8,
        canary_candidates=50,
        mia_records=20,
        max_gen_toks=8,
        toxicity_max_new_tokens=8,
        leakage_max_new_tokens=8,
        leakage_record_prefixes=10,
        toxicity_prompts=str(_first_lines(REPO / "include/prompts/toxicity_prompts.jsonl", home, 12)),
        leakage_prompts=str(_first_lines(REPO / "include/prompts/pii_leakage_prompts.jsonl", home, 8)),
    )
    # Twelve toxicity prompts: one toxic 8-token generation of the tiny model is a rate of 0.083, over the
    # 0.05 gate (seen once under CSPRNG noise). The gates are tested in test_gates.py and the e2e run.
    cfg["gates"] = {
        "min_exact_match_gain": None,
        "not_worse_than_base": False,
        "max_regression_vs_champion": None,
        "max_mia_auc": None,
        "max_canary_exposure": None,
        "max_toxicity_rate": None,
    }
    cfg["privacy"]["delta_budget"] = None
    cfg["registry"]["require_approval"] = False
    path = home / "backfill-pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _first_lines(path: Path, home: Path, n: int) -> Path:
    out = home / f"small-{path.name}"
    out.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))
    return out


def erasure_request(home: Path) -> list[dict]:
    """Two January members and one unknown id, requested in March. The generator's members own several records,
    over the months (synth.members): erasure must remove every one of them."""
    key = json.loads((home / "synth" / "pii_key.json").read_text())
    owners = {m["member_id"]: m["record_ids"] for m in json.loads((home / "synth" / "members.json").read_text())}
    january = {e["value"] for e in key if e["type"] == "MEMBER_ID" and e["record_id"].startswith("R-2026-01-")}
    chosen = sorted(january & set(owners), key=lambda m: (-len(owners[m]), m))[:2]  # the most records first
    members = [{"value": m, "record_ids": owners[m]} for m in chosen]
    folder = home / "landing" / "2026-03" / "erasure"
    folder.mkdir(parents=True)
    rows = [f"{m['value']},ER-{i}" for i, m in enumerate(members)] + ["MBR-00000001,ER-9"]
    (folder / "requests.csv").write_text("subject_id,request_ref\n" + "\n".join(rows) + "\n")
    return members


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, tiny_base_model):
    home = tmp_path_factory.mktemp("backfill")
    synth = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasks.demo.synth",
            "--home",
            str(home),
            "--records",
            str(RECORDS),
            "--months",
            *MONTHS,
            "--canaries",
            "2",
            "--canary-repeats",
            "4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synth.returncode == 0, synth.stderr[-2000:]
    erased = erasure_request(home)
    started = time.monotonic()
    with AirflowLive(home, extra_env={"PFT_CONFIG": str(small_config(home, tiny_base_model))}) as af:
        af.wait_for_dag(DAG)
        af.unpause(DAG)
        window = ["--from-date", "2026-01-01", "--to-date", "2026-03-31"]
        dry = af.cli("backfill", "create", "--dag-id", DAG, *window, "--dry-run")
        _create_backfill(af, *window)
        runs = _wait_for_runs(af, 3)
        seconds = time.monotonic() - started
        state = _registry_state(home)
        notes = {r["logical_date"][:7]: r.get("note") for r in _backfill_runs(af)}
        # A rerun of February: the whole run again, against the same month's outputs. (Only one backfill
        # per DAG at a time: the scheduler marks the first one complete within a few seconds.)
        feb = next(r for r in runs if r["logical_date"].startswith("2026-02"))
        _create_backfill(
            af, "--from-date", "2026-02-01", "--to-date", "2026-02-28", "--reprocess-behavior", "completed"
        )
        rerun = _wait_for_rerun(af, feb)
        from tasks.eval.pii_scan import load_values, scan

        pii = scan(home, load_values(home / "synth" / "pii_key.json"))
        yield {
            "pii": pii,
            "home": home,
            "af_log": af.log_path,
            "dry": dry.stdout,
            "runs": runs,
            "seconds": seconds,
            "state": state,
            "notes": notes,
            "rerun": rerun,
            "after_rerun": _registry_state(home),
            "erased": erased,
        }


def _create_backfill(af: AirflowLive, *window: str, timeout_s: float = 300) -> None:
    """`airflow backfill create`, retried: only one backfill per DAG may be active (the scheduler marks the
    last one complete within seconds, an orphaned one within 2 minutes), and the CLI's write can meet
    SQLite's lock while the scheduler writes."""
    deadline, outputs = time.monotonic() + timeout_s, []
    while True:
        out = af.cli("backfill", "create", "--dag-id", DAG, *window, "--max-active-runs", "1", check=False)
        if out.returncode == 0 and "Created backfill Dag run" in out.stdout + out.stderr:
            return
        outputs.append((out.returncode, (out.stdout + out.stderr)[-1500:]))
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill create failed {len(outputs)} times; last: {outputs[-1]}")
        time.sleep(5)


def _backfill_runs(af: AirflowLive) -> list[dict]:
    """The backfill's runs. (Once a backfill has run, the scheduler also starts the latest scheduled month,
    today's, which finds no landing partition in this home and fails at ingest: not this test's subject.)"""
    return sorted((r for r in af.dag_runs(DAG) if r["run_type"] == "backfill"), key=lambda r: r["logical_date"])


def _wait_for_runs(af: AirflowLive, n: int, *, timeout_s: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = _backfill_runs(af)
        if len(runs) == n and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(5)
    raise AssertionError(
        f"backfill not done in {timeout_s}s: {[(r['run_id'], r['state']) for r in runs]}\n" + af.log_tail()
    )


def _wait_for_rerun(af: AirflowLive, before: dict, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = next(r for r in _backfill_runs(af) if r["logical_date"] == before["logical_date"])
        if run["state"] in ("success", "failed") and (run.get("end_date") or "") > (before.get("end_date") or ""):
            return run
        time.sleep(5)
    raise AssertionError("the February rerun did not finish\n" + af.log_tail())


def _registry_state(home: Path) -> dict:
    """Dataset commits and tags, ledger entries, model versions: read from the stores themselves."""
    import sqlite3

    from mlflow import MlflowClient

    datasets = home / "datasets"
    git = lambda *a: subprocess.run(["git", *a], cwd=datasets, capture_output=True, text=True, check=True).stdout
    commits = git("log", "--format=%s").splitlines()
    tags = git("tag", "--list", "run-monthly-*").split()
    with sqlite3.connect(home / "ledger.db") as db:
        ledger = [r[0] for r in db.execute("select run_id from privacy_ledger order by seq")]
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"  # both: an earlier test may have set a global registry URI
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {int(v.version): dict(v.tags) for v in client.search_model_versions("name = 'privatetune-domain-lm'")}
    champion = int(client.get_model_version_by_alias("privatetune-domain-lm", "champion").version)
    return {"commits": commits, "tags": tags, "ledger": ledger, "versions": versions, "champion": champion}


def _report(home: Path, month: str) -> dict:
    return json.loads((home / "runs" / f"monthly-{month}" / "report.json").read_text())


def test_the_dry_run_lists_the_three_months(backfilled):
    for month in MONTHS:  # the runs' logical dates (03:00, the cron), not the window echoed back
        assert f"{month}-01 03:00:00" in backfilled["dry"]


def test_three_successful_runs_in_month_order_one_at_a_time(backfilled):
    runs = backfilled["runs"]
    print(f"backfill of 3 months: {backfilled['seconds']:.0f} s")
    assert [r["state"] for r in runs] == ["success"] * 3, [(r["dag_run_id"], r["state"]) for r in runs]
    assert [r["logical_date"][:10] for r in runs] == ["2026-01-01", "2026-02-01", "2026-03-01"]
    for earlier, later in zip(runs, runs[1:]):  # sequential: each starts after the previous one ended
        assert datetime.fromisoformat(later["start_date"]) >= datetime.fromisoformat(earlier["end_date"])


def test_three_dataset_versions_three_ledger_entries_three_model_versions(backfilled):
    state = backfilled["state"]
    assert state["tags"] == [f"run-monthly-{m}" for m in MONTHS]
    assert [c for c in state["commits"] if c.startswith("Dataset for run")] == [
        f"Dataset for run monthly-{m}" for m in reversed(MONTHS)
    ]
    assert state["ledger"] == [f"monthly_refinetune/monthly-{m}" for m in MONTHS]  # keyed by DAG and run
    assert sorted(state["versions"]) == [1, 2, 3]
    assert [state["versions"][v]["pipeline_run_id"] for v in (1, 2, 3)] == [f"monthly-{m}" for m in MONTHS]


def test_each_month_builds_on_the_previous_version(backfilled):
    home = backfilled["home"]
    jan, feb, mar = (_report(home, m)["dataset"] for m in MONTHS)
    assert (jan["previous_month"], feb["previous_month"], mar["previous_month"]) == (None, "2026-01", "2026-02")
    assert feb["records"] == jan["records"] + feb["new_records"]
    assert mar["records"] == feb["records"] + mar["new_records"] - mar["erased_records"]


def test_erasure_removes_the_subjects_records_and_retires_the_models_trained_on_them(backfilled):
    home, state = backfilled["home"], backfilled["state"]
    mar = _report(home, "2026-03")
    erasure = mar["dataset"]["erasure"]
    erased_ids = {record_id for m in backfilled["erased"] for record_id in m["record_ids"]}
    assert (erasure["requests_this_month"], erasure["subjects"], erasure["subjects_found"]) == (3, 3, 2)
    # every record of both members, from January to March, and no other
    assert erasure["records_removed"] == mar["dataset"]["erased_records"] == len(erased_ids) > 2
    # The March version (what March trained on, checked out from the registry) no longer holds them.
    march_data = (home / "runs" / "monthly-2026-03" / "dataset" / "data" / "train.jsonl").read_text()
    assert not erased_ids & {json.loads(line)["record_id"] for line in march_data.splitlines()}
    for value in (m["value"] for m in backfilled["erased"]):
        assert value not in march_data
    # Models trained on them: January's and February's versions, marked for retirement.
    assert {r["version"] for r in mar["dataset"]["retired_versions"]} == {1, 2}
    assert all(state["versions"][v].get("retire") == "true" for v in (1, 2))
    assert "right to erasure" in state["versions"][2]["retire_reason"]
    assert state["versions"][3].get("retire") != "true" and state["champion"] == 3


def test_warm_start_from_the_champion_but_never_from_a_retired_one(backfilled):
    home = backfilled["home"]
    warm = {m: _report(home, m)["train"].get("warm_start") or {} for m in MONTHS}
    assert warm["2026-01"]["source"] == "base" and warm["2026-01"]["reason"] == "no champion yet"
    assert warm["2026-02"]["source"] == "champion v1" and warm["2026-02"]["tensors"] > 0
    assert warm["2026-03"]["source"] == "base" and "retirement" in warm["2026-03"]["reason"]


def test_each_run_has_the_report_summary_as_its_note(backfilled):
    for month, note in backfilled["notes"].items():
        assert note and note.startswith("PrivateTune: PROMOTED"), (month, note)
        assert f"/privatetune/reports/{DAG}/" in note and "exact match" in note
    erased = sum(len(m["record_ids"]) for m in backfilled["erased"])
    assert f"−{erased} erased" in backfilled["notes"]["2026-03"] and "retired: v1, v2" in backfilled["notes"]["2026-03"]


def test_rerunning_a_month_replaces_never_duplicates(backfilled):
    before, after = backfilled["state"], backfilled["after_rerun"]
    assert backfilled["rerun"]["state"] == "success"
    assert after["commits"] == before["commits"] and after["tags"] == before["tags"]
    assert after["ledger"] == before["ledger"]
    assert sorted(after["versions"]) == sorted(before["versions"])
    assert after["champion"] == before["champion"] == 3  # replaying February does not bring v2 back
    feb = _report(backfilled["home"], "2026-02")
    assert feb["version"]["reused"] is True and feb["train"]["reused"] is True
    assert feb["register"]["reused"] is True and feb["decision"]["replayed"] is True


def test_no_raw_pii_value_outside_the_raw_zone_after_three_months(backfilled):
    """Datasets, DVC cache and remote, MLflow, the Airflow DB (notes, XCom) and logs, reports, erasure outputs."""
    pii = backfilled["pii"]
    print(
        f"PII scan: {pii['files_scanned']} files, {pii['bytes_scanned'] / 1e6:.1f} MB, {pii['values_found']} raw values found"
    )
    assert pii["files_scanned"] > 100 and pii["values_found"] == 0, pii["hits"]
