"""End to end: `dag.test()` of privacy_finetune on generated data and the tiny base model.

Asserts outcomes, not just success: no raw PII in the masked (and versioned) split, LoRA
weights moved, ε within target, answer loss on the validation split falls well below base, the registered
version carries its lineage tags, and the report holds every required field.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from tasks.release.report import REQUIRED_FIELDS, lookup
from tests.airflow_api import Reviewer, api_server
from tests.helpers import cores_per_worker

pytestmark = pytest.mark.slow  # two dag.test() runs end to end with a live api-server

REPO = Path(__file__).resolve().parents[2]
E2E_RECORDS = 16000  # the demo's records: at 4,000 the DP gain on exact match is a third of it
SECOND_RUN_QUESTIONS = 64

# The committed config as it is (demo-size model and records, DP-AdamW at ε = 8); only the toxicity
# generations are shortened to save time. Run alone, training uses both cores, as `make demo` does
# (include/config/demo.yaml); under `make test` the other xdist worker has one of them.
E2E_CONFIG = {
    "train": {"cpu_threads": cores_per_worker()},
    "evaluate": {"toxicity_max_new_tokens": 16},
    "registry": {"model_name": "e2e-domain-lm", "require_approval": True},  # policy: the deployment's config
    # Production noise (CSPRNG) makes every run a new draw: a canary's rank moves by bits, so this gate would
    # make the promotion a coin flip. The figure is still computed and reported; the gate itself is tested in
    # tests/release/test_gates.py. The exact-match gates stay on: the gain is asserted below.
    "gates": {"max_canary_exposure": None},
}


def _config_file(home: Path, name: str, overrides: dict) -> Path:
    cfg = yaml.safe_load((REPO / "include" / "config" / "pipeline.yaml").read_text())
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    path = home / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(dag, home: Path, config: Path, conf: dict, console: Path, server, *, choice: str, comment: str) -> dict:
    """One dag.test() run whose approval request a reviewer answers through the api-server's REST API."""
    os.environ["PFT_CONFIG"] = str(config)
    reviewer = Reviewer(server, dag_id="privacy_finetune", choice=choice, comment=comment)
    reviewer.start()
    try:
        with capture_output(console):  # everything the run logs, to scan for PII below
            dag_run = dag.test(run_conf=conf)
    finally:
        os.environ.pop("PFT_CONFIG", None)
        reviewer.stop.set()
        reviewer.join(timeout=30)
    if reviewer.error:
        raise reviewer.error
    from tasks.config import Paths

    run_dir = Paths(home).run_dir(dag_run.run_id)
    report = json.loads((run_dir / "report.json").read_text())
    return {"dag_run": dag_run, "report": report, "run_dir": run_dir, "console": console, "reviewer": reviewer}


@pytest.fixture(scope="module")
def e2e(session_home, airflow_db):
    """Two runs on one data root: the first approved through the REST API (it becomes champion), the
    second (a short training, lenient quality gates) evaluated against that champion and rejected."""
    from airflow.dag_processing.dagbag import DagBag

    from tasks.config import load_config
    from tasks.demo import synth

    demo = load_config(REPO / "include" / "config" / "pipeline.yaml").synth
    # As `make data` writes it: members with many records each, and every Safe Harbor identifier kind in prose.
    synth.generate(session_home, n_records=E2E_RECORDS, identifiers=demo.identifiers, members=demo.members)
    _build_base_model(session_home)
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["privacy_finetune"]
    conf = {"require_approval": False}  # a triggerer trying to skip the reviewer the config requires
    with api_server(session_home) as server:
        first = _run(
            dag,
            session_home,
            _config_file(session_home, "e2e-pipeline.yaml", E2E_CONFIG),
            conf,
            session_home / "e2e-console.log",
            server,
            choice="Approve",
            comment="e2e: evidence reviewed, approved",
        )
        # Lenient quality gates: ~16 subject-level steps may land at base on 64 questions; the reviewer decides.
        quality_off = {"max_regression_vs_champion": None, "min_exact_match_gain": None, "not_worse_than_base": False}
        lenient = {**E2E_CONFIG, "gates": {**E2E_CONFIG["gates"], **quality_off}}
        second = _run(
            dag,
            session_home,
            _config_file(session_home, "e2e-pipeline-2.yaml", lenient),
            # The second run only has to meet the champion and a reviewer: a short training, and the
            # first SECOND_RUN_QUESTIONS questions for base, challenger and champion alike.
            {**conf, "epochs": 0.6, "qa_limit": SECOND_RUN_QUESTIONS},
            session_home / "e2e-console-2.log",
            server,
            choice="Reject",
            comment="e2e: too little training, rejected",
        )
        pages = {}
        with server.client("auditor") as viewer, server.client(None) as anonymous:
            base = f"/privatetune/reports/privacy_finetune/{first['dag_run'].run_id}"
            for name, path in (("report", base), ("helm", base + "/helm"), ("card", base + "/model-card")):
                resp = viewer.get(path)
                pages[name] = (resp.status_code, resp.text)
            pages["anonymous"] = (anonymous.get(base).status_code, "")
    return {**first, "home": session_home, "second": second, "pages": pages}


def _build_base_model(home: Path) -> None:
    """What `make demo` does before its run (`make base-model`), on this process's cores: the prepare stage
    then finds the demo base model built. Inside the stage it builds on one thread, as Airflow workers share
    their cores (measured: 361 s in the stage, ~155 s on two threads)."""
    from tasks.config import load_config
    from tasks.demo.base_model import build_base_model

    size = load_config(REPO / "include" / "config" / "pipeline.yaml").base_model.size
    build_base_model(
        corpus_path=home / "synth" / "general_corpus.txt",
        models_root=home / "models",
        size=size,
        threads=cores_per_worker(),
    )


@contextlib.contextmanager
def capture_output(path: Path):
    """Everything the run logs, into one file: Python logging, sys.stdout/stderr (which pytest
    replaces), and file descriptors 1/2 (subprocesses such as torchrun)."""
    import logging

    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w", buffering=1) as sink:
        handler = logging.StreamHandler(sink)
        handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(handler)
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            root.removeHandler(handler)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def test_dag_run_succeeds_and_report_is_complete(e2e):
    assert str(e2e["dag_run"].state) in ("success", "DagRunState.SUCCESS"), e2e["report"]["stages"]
    missing = [f for f in REQUIRED_FIELDS if _has(e2e["report"], f) is False]
    assert missing == [] and e2e["report"]["complete"] is True
    assert (e2e["run_dir"] / "report.md").read_text().startswith("# PrivateTune run report")
    assert (e2e["run_dir"] / "config.resolved.json").exists()


def test_every_row_is_accounted_for(e2e):
    ingest = e2e["report"]["ingest"]
    assert ingest["rows_in"] == ingest["rows_valid"] + ingest["rows_quarantined"] + ingest["duplicates_removed"]
    assert ingest["rows_quarantined"] > 0  # the generator plants malformed rows
    quarantined = (e2e["home"] / "quarantine" / e2e["run_dir"].name).rglob("quarantine.jsonl")
    assert sum(len(f.read_text().splitlines()) for f in quarantined) == ingest["rows_quarantined"]


def test_masked_and_versioned_split_hold_no_raw_pii(e2e):
    from tasks.eval.pii_scan import Matcher, load_values

    key = json.loads((e2e["home"] / "synth" / "pii_key.json").read_text())
    assert len(key) > 100
    # The whole-home scan's matcher: ~20,000 values over two 4 MB files in a second, where a substring
    # search per value took over a minute.
    # Every value, ZIP codes and dates of service included: in record text a surviving one is a masking miss.
    matcher = Matcher(load_values(e2e["home"] / "synth" / "pii_key.json", keep_chance_prone=True))
    for split in (e2e["run_dir"] / "masked" / "train.jsonl", e2e["run_dir"] / "dataset" / "data" / "train.jsonl"):
        leaked = sorted({kind for kind, _ in matcher.find(split.read_text())})
        assert leaked == [], f"{split}: raw PII values of types {leaked} survived masking"
    assert sum(e2e["report"]["mask"]["entities"].values()) >= len(key) * 0.9
    # The committed profile is Safe Harbor's, and the key holds its kinds: places, dates, ages, vehicle ids, ...
    assert json.loads((e2e["run_dir"] / "config.resolved.json").read_text())["mask"]["profile"] == "safe_harbor"
    kinds = {entry["type"] for entry in key}
    assert {"ADDRESS", "CITY", "ZIP_CODE", "AGE", "URL", "VEHICLE_ID", "DEVICE_ID", "MEMBER_ID"} <= kinds, kinds


def test_masking_ran_as_one_mapped_task_per_shard(e2e):
    report = e2e["report"]
    shard_tis = [ti for ti in e2e["dag_run"].get_task_instances() if ti.task_id == "mask_shard"]
    plan = json.loads((e2e["home"] / "staging" / e2e["run_dir"].name / "mask_shards" / "plan.json").read_text())
    # 16,000 generated records in one month partition, at most mask.shard_rows = 2000 a shard.
    assert len(plan) == report["mask"]["shards"] >= 2
    assert sorted(ti.map_index for ti in shard_tis) == list(range(len(plan)))
    assert all("success" in str(ti.state).lower() for ti in shard_tis)
    assert sorted(ti.rendered_map_index for ti in shard_tis) == sorted(s["label"] for s in plan)
    assert report["mask"]["partitions"] == {"2026-01": report["ingest"]["rows_valid"]}
    assert report["mask"]["rows"] == sum(s["rows"] for s in plan) == report["ingest"]["rows_valid"]
    assert max(s["rows"] for s in plan) <= report["mask"]["shard_rows"]


def _asset_events(run_id: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from tasks.airflow.assets import MASKED_DATASET

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(
                AssetModel.name == MASKED_DATASET.name,
                AssetModel.uri == MASKED_DATASET.uri,
                AssetEvent.source_run_id == run_id,
            )
        )
        return [(ev.source_dag_id, ev.source_task_id, dict(ev.extra or {})) for ev in session.scalars(query)]


def test_dataset_version_is_published_as_an_asset_event(e2e):
    report = e2e["report"]
    events = _asset_events(e2e["dag_run"].run_id)
    assert len(events) == 1, events
    dag_id, task_id, extra = events[0]
    assert (dag_id, task_id) == ("privacy_finetune", "version")
    assert extra["dataset_rev"] == report["version"]["dataset_rev"]
    assert extra["dvc_md5"] == report["version"]["dvc_md5"]
    assert extra["tag"] == report["version"]["tag"] and extra["pipeline_run_id"] == report["run_id"]
    assert extra["rows"] == report["mask"]["rows"] == report["ingest"]["rows_valid"]
    assert extra["entities_total"] == report["mask"]["entities_total"] and extra["shards"] == report["mask"]["shards"]


def test_lora_weights_moved_from_their_initial_values(e2e):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tasks.config import PipelineConfig
    from tasks.train.methods import apply_peft

    report = e2e["report"]
    assert report["train"]["trainable_tensors_changed"] == 1.0
    resolved = PipelineConfig.model_validate_json((e2e["run_dir"] / "config.resolved.json").read_text())
    # Rebuild the adapter exactly as training initialised it (same seed), then compare.
    torch.manual_seed(resolved.train.seed)
    model = AutoModelForCausalLM.from_pretrained(report["prepare"]["base_model_dir"])
    initial = {
        k: v.detach()
        for k, v in apply_peft(model, {"train": resolved.train.model_dump()}).state_dict().items()
        if "lora_" in k
    }
    trained = load_file(Path(report["train"]["adapter_dir"]) / "adapter_model.safetensors")
    assert trained
    for name, value in trained.items():
        match = [v for k, v in initial.items() if k.replace(".default", "") == name]
        assert match, name
        assert not torch.equal(match[0], value), f"{name} did not change"


def test_epsilon_within_target(e2e):
    train = e2e["report"]["train"]
    assert train["dp"] is True
    assert 0 < train["epsilon"] <= train["target_epsilon"]
    assert 0 < train["delta"] < 1 / e2e["report"]["ingest"]["rows_valid"]
    # The unit is the data subject: members hold many records, each sampled subject is one clipped example.
    assert train["privacy_unit"] == "subject"
    subjects = train["subjects"]
    assert subjects["subjects"] > 1000 and subjects["records_without_subject"] > 0
    assert max(int(n) for n in subjects["records_per_subject"]) >= 20  # heavy-tailed: some have dozens
    assert "per subject" in (e2e["run_dir"] / "report.md").read_text()
    # The ledger was charged the ε the run's own accountant reports (not one at another sample rate).
    assert train["privacy_ledger"]["run_epsilon"] == pytest.approx(train["epsilon"], abs=1e-4)


def test_finetuned_learns_the_held_out_answers(e2e):
    """What DP training reliably does on the demo: the gold answers of the validation split's questions
    (phrasings never in a record) become far more likely. The paired bootstrap interval of (fine-tuned −
    base) answer loss lies wholly below zero, and the mean drop is at least a quarter of base's loss.
    Exact match is asserted in test_finetuned_beats_base_on_validation_exact_match."""
    evaluate = e2e["report"]["evaluate"]
    loss = evaluate["answer_loss"]
    delta = loss["finetuned_minus_base"]
    assert delta["n"] == evaluate["finetuned"]["n"] == evaluate["qa_splits"]["validation"]["n"] >= 300
    assert evaluate["qa_splits"]["test"]["n"] >= 300  # scored and reported, never gated
    assert delta["ci_high"] < 0, delta
    assert loss["finetuned"]["mean"] <= 0.75 * loss["base"]["mean"], loss
    evaluation = e2e["report"]["evaluate"]
    assert 0.0 <= evaluation["finetuned"]["f1"] <= 1.0 and 0.0 <= evaluation["base"]["f1"] <= 1.0
    assert 0.0 <= evaluation["toxicity_rate"] <= 1.0


def test_finetuned_beats_base_on_validation_exact_match(e2e):
    """The DP model learns the domain: on the validation split (the gates' split; phrasings never in a record)
    the paired 95 % interval of fine-tuned − base exact match lies above 0, over all questions and over the
    common facts (each in ≥ 1 % of the records: what DP is meant to learn). Measured when this was written:
    common +0.27 and all +0.14 over base at ε 7.96 (one run of the recipe search, tasks on validation)."""
    validation = e2e["report"]["evaluate"]["qa_splits"]["validation"]
    gain = validation["gain"]
    assert validation["n"] >= 300 and not validation["below_base"]
    assert gain["exact_match"]["ci_low"] > 0, gain["exact_match"]
    assert gain["buckets"]["common"]["exact_match"]["ci_low"] > 0, gain["buckets"]["common"]
    assert e2e["report"]["gates"]["status"] == "passed", e2e["report"]["gates"]


def test_registered_version_carries_lineage_tags(e2e):
    from mlflow import MlflowClient

    from tasks.config import Paths

    report = e2e["report"]
    client = MlflowClient(
        tracking_uri=Paths(e2e["home"]).mlflow_tracking_uri, registry_uri=Paths(e2e["home"]).mlflow_tracking_uri
    )
    version = client.get_model_version(report["register"]["model_name"], str(report["register"]["version"]))
    assert version.tags["dataset_rev"] == report["version"]["dataset_rev"]
    assert float(version.tags["epsilon"]) == pytest.approx(report["train"]["epsilon"])
    assert float(version.tags["exact_match"]) == pytest.approx(report["evaluate"]["finetuned"]["exact_match"])
    run = client.get_run(report["train"]["mlflow_run_id"])
    assert "epsilon" in run.data.metrics and run.data.params["dp"] == "True"
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2


def test_pipeline_plumbing_holds_no_raw_pii(e2e):
    """Task logs, XCom, the report, stage results and MLflow params never carry record text."""
    from mlflow import MlflowClient

    from tasks.config import Paths
    from tasks.eval.pii_scan import Matcher, load_values

    # Whole tokens, and not the chance-prone values (5-digit numbers, event dates: ports, ids, timestamps).
    matcher = Matcher(load_values(e2e["home"] / "synth" / "pii_key.json"))
    console = e2e["console"].read_text(errors="replace")
    assert "train done in" in console and "step " in console  # the capture really holds the run's logs
    with sqlite3.connect(e2e["home"] / "airflow" / "airflow.db") as db:
        xcom = [str(v) for (v,) in db.execute("select value from xcom")]
        asset_extras = [str(v) for (v,) in db.execute("select extra from asset_event")]
    assert xcom and asset_extras
    client = MlflowClient(tracking_uri=Paths(e2e["home"]).mlflow_tracking_uri)
    params = client.get_run(e2e["report"]["train"]["mlflow_run_id"]).data.params
    sources = {
        "console/task logs": console,
        "xcom": "\n".join(xcom),
        "asset events": "\n".join(asset_extras),
        "report": (e2e["run_dir"] / "report.json").read_text() + (e2e["run_dir"] / "report.md").read_text(),
        "stage results": "".join(p.read_text() for p in (e2e["run_dir"] / "stages").glob("*.json")),
        "torchrun log": (e2e["run_dir"] / "train" / "torchrun.log").read_text(),
        "mlflow params": json.dumps(params),
        "evaluation reports": "".join(
            p.read_text(errors="replace")
            for p in (e2e["run_dir"] / "eval").rglob("*")
            if p.is_file() and p.suffix in (".json", ".html", ".md") and p.name != "results.json"
        ),  # lm-eval's per-sample QA answers only
        "model card": (e2e["run_dir"] / "model_card.md").read_text(),
        "approval request": json.dumps(e2e["reviewer"].request),
    }
    hits = {name: sorted({kind for kind, _ in matcher.find(text)}) for name, text in sources.items()}
    assert all(not found for found in hits.values()), hits


def _has(report: dict, field: str) -> bool:
    try:
        lookup(report, field)
        return True
    except KeyError:
        return False


def _registry(home: Path):
    from mlflow import MlflowClient

    from tasks.config import Paths

    uri = Paths(home).mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_trigger_cannot_skip_the_approval_the_config_requires(e2e):
    """The first run was triggered with {"require_approval": false}: it still waited for a reviewer, who
    approved through the REST API; the report says which Param was not applied and why."""
    refused = e2e["report"]["prepare"]["params_refused"]
    assert refused == [
        {
            "param": "require_approval",
            "asked": False,
            "kept": True,
            "reason": "registry.require_approval is policy: a trigger may make it stricter, not looser",
        }
    ]
    resolved = json.loads((e2e["run_dir"] / "config.resolved.json").read_text())
    assert resolved["registry"]["require_approval"] is True
    assert e2e["reviewer"].request is not None and e2e["report"]["decision"]["approval"] == "approved"


def test_approval_went_through_the_rest_api_and_promoted_the_model(e2e):
    report, reviewer = e2e["report"], e2e["reviewer"]
    assert reviewer.request is not None and reviewer.response["chosen_options"] == ["Approve"]
    body = reviewer.request["body"]
    assert "exact match" in body and "/privatetune/reports/privacy_finetune/" in body and "| gate |" in body
    assert reviewer.viewer_status == 403  # the auditor (viewer role) may read, not decide
    assert report["gates"]["status"] == "passed" and report["outcome"] == "promoted"
    decision = report["decision"]
    assert decision["approval"] == "approved" and decision["by"] == "reviewer"
    assert decision["comment"] == "e2e: evidence reviewed, approved"
    client = _registry(e2e["home"])
    name, version = report["register"]["model_name"], str(report["register"]["version"])
    tags = client.get_model_version(name, version).tags
    assert tags["approved_by"] == "reviewer" and tags["gates"] == "passed"
    card = client.get_model_version(name, version).description
    assert "reviewer" in card and report["version"]["dataset_rev"][:12] in card


def test_second_run_was_compared_with_the_champion_and_rejected(e2e):
    first, second = e2e["report"], e2e["second"]["report"]
    assert str(e2e["second"]["dag_run"].state).endswith("success"), second["stages"]
    assert second["evaluate"]["champion_version"] == first["register"]["version"]
    # The champion loaded from the registry is the first run's model: on the same questions it gives the
    # same answers, question by question, as that model gave when the first run scored it.
    champion = _exact_match_per_question(e2e["second"]["run_dir"], "champion")
    assert len(champion) == SECOND_RUN_QUESTIONS
    assert champion == _exact_match_per_question(e2e["run_dir"], "finetuned")[:SECOND_RUN_QUESTIONS]
    assert second["outcome"] == "rejected" and second["decision"]["by"] == "reviewer"
    assert second["decision"]["comment"] == "e2e: too little training, rejected"
    client = _registry(e2e["home"])
    name = first["register"]["model_name"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(first["register"]["version"])
    assert str(client.get_model_version_by_alias(name, "challenger").version) == str(second["register"]["version"])
    assert client.get_model_version(name, str(second["register"]["version"])).tags["decision"] == "rejected"


def _exact_match_per_question(run_dir: Path, model: str) -> list[float]:
    per_question = json.loads((run_dir / "eval" / f"quality_{model}" / "per_question.json").read_text())
    return per_question["accuracy"]["exact_match"]["columns"]["score"]


def test_champion_loads_from_the_registry_and_answers(e2e):
    import mlflow
    import pandas as pd

    from tasks.config import Paths

    mlflow.set_tracking_uri(Paths(e2e["home"]).mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{e2e['report']['register']['model_name']}@champion")
    answers = model.predict(pd.DataFrame({"question": ["How much is the deductible on the Bronze Basic plan?"]}))
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_helm_style_report_and_privacy_figures(e2e):
    evaluation = e2e["report"]["evaluate"]
    helm = json.loads(Path(evaluation["helm_json"]).read_text())
    for scenario in ("accuracy", "robustness", "fairness", "calibration", "efficiency", "toxicity", "privacy"):
        assert scenario in helm["scenarios"], scenario
    assert helm["scenarios"]["accuracy"]["exact_match"]["finetuned"] == pytest.approx(
        evaluation["finetuned"]["exact_match"]
    )
    assert helm["scenarios"]["privacy"]["pii_leaks"]["finetuned"] == evaluation["pii_leaks"]
    assert Path(evaluation["helm_html"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert helm["notes"]["dataset_rev"] == e2e["report"]["version"]["dataset_rev"]
    # Every QA scenario figure carries its interval; the flags are in the page's JSON and the stage's result.
    for scenario in ("accuracy", "robustness", "fairness", "calibration"):
        for metric in helm["scenarios"][scenario]:
            if metric != "n":
                assert set(helm["intervals"][scenario][metric]) >= {"base", "finetuned"}, (scenario, metric)
    assert evaluation["worse_than_base"] == helm["worse_than_base"]
    assert evaluation["pii_leaks"] == 0
    assert 0.0 <= evaluation["mia_auc"] <= 1.0
    # Membership inference at the privacy unit: held-out subjects vs trained ones, a subject's records together.
    assert evaluation["mia_unit"] == "subject"
    assert evaluation["canary_exposure_max"] is not None and evaluation["canary_exposure_max"] >= 0.0
    assert 0.0 <= evaluation["finetuned"]["relevance"] <= 1.0


def test_report_pages_are_served_inside_airflow_behind_login(e2e):
    pages = e2e["pages"]
    assert pages["report"][0] == 200 and "PrivateTune run report" in pages["report"][1]
    assert pages["helm"][0] == 200 and pages["card"][0] == 200
    assert pages["anonymous"][0] in (401, 403)


def test_nothing_the_runs_leave_outside_the_raw_zone_holds_a_raw_pii_value(e2e):
    """Datasets, DVC cache and remote, MLflow DB and artifacts, Airflow DB and logs, run folders, reports,
    evaluation files, model cards: every file but the raw zone's, scanned for every value of the key."""
    from tasks.eval.pii_scan import load_values, scan

    result = scan(e2e["home"], load_values(e2e["home"] / "synth" / "pii_key.json"))
    assert result["files_scanned"] > 100 and result["hits"] == {}, result["hits"]
