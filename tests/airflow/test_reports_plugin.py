"""The reports plugin (/privatetune inside the Airflow api-server): a run's report is found by DAG
and run, never outside runs/, never through a symlink, and an error names no absolute path.

Airflow's auth dependency takes the dag_id from the URL, so per-DAG permissions only protect a
report if the plugin serves it under its own DAG and no other. The dependency is overridden here;
tests/dags/test_pipeline_e2e.py goes through a live api-server with real users.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tasks.config import Paths

REPO = Path(__file__).resolve().parents[2]
FT, MONTHLY = "privacy_finetune", "monthly_refinetune"
FT_RUN = "manual__2026-01-05T10:00:00+00:00"
OTHER_FT_RUN = "manual__2026-01-06T10:00:00+00:00"
MONTH_KEY = "monthly-2026-01"
MONTH_AIRFLOW_RUN = "scheduled__2026-01-01T03:00:00+00:00"
LEGACY_RUN = "manual__2025-12-01T10:00:00+00:00"  # written before prepare recorded its DAG
SECRET = "TOP-SECRET-OUTSIDE-RUNS"


def _load_plugin():
    spec = importlib.util.spec_from_file_location(
        "privatetune_reports_under_test", REPO / "plugins" / "privatetune_reports.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as Airflow's plugin loader does
    spec.loader.exec_module(module)
    return module


plugin = _load_plugin()


def _write_run(run_dir: Path, run_id: str, dag_id: str | None, *, outcome: str = "promoted") -> Path:
    prepare = {"run_id": run_id, **({"dag_id": dag_id} if dag_id else {})}
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    (run_dir / "stages" / "prepare.json").write_text(json.dumps(prepare))
    (run_dir / "report.json").write_text(json.dumps({"run_id": run_id, "outcome": outcome, "prepare": prepare}))
    (run_dir / "report.md").write_text(f"# PrivateTune run report — {run_id}\nreport of {run_id}\n")
    (run_dir / "eval" / "helm").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "helm" / "helm.html").write_text(f"<p>helm of {run_id}</p>")
    (run_dir / "model_card.md").write_text(f"card of {run_id}")
    return run_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "pft"
    monkeypatch.setenv("PFT_HOME", str(home))
    paths = Paths()
    paths.runs.mkdir(parents=True)
    _write_run(paths.run_dir(FT_RUN), FT_RUN, FT)
    _write_run(paths.run_dir(OTHER_FT_RUN), OTHER_FT_RUN, FT, outcome="gated")
    _write_run(paths.run_dir(MONTH_KEY), MONTH_KEY, MONTHLY)
    # tasks/stages/monthly_refinetune.py links the Airflow run id to the month's folder (a relative sibling link).
    paths.run_dir(MONTH_AIRFLOW_RUN).symlink_to(paths.run_dir(MONTH_KEY).name, target_is_directory=True)
    _write_run(paths.run_dir(LEGACY_RUN), LEGACY_RUN, None)
    (home / "secret.txt").write_text(SECRET)
    return home


@pytest.fixture
def client(home):
    plugin.app.dependency_overrides[plugin.can_read_runs.dependency] = lambda: None
    try:
        with TestClient(plugin.app) as c:
            yield c
    finally:
        plugin.app.dependency_overrides.clear()


def _url(dag_id: str, run_id: str, page: str = "") -> str:
    return f"/reports/{quote(dag_id, safe='')}/{quote(run_id, safe='')}" + (f"/{page}" if page else "")


def _assert_404_names_no_path(resp, home: Path) -> None:
    assert resp.status_code == 404, (resp.status_code, resp.text[:300])
    assert str(home) not in resp.text and str(home.resolve()) not in resp.text
    assert "/runs" not in resp.text and SECRET not in resp.text
    detail = resp.json().get("detail", "")
    assert not any(word.startswith("/") for word in str(detail).replace("'", " ").split()), detail


def test_a_run_is_served_under_its_own_dag(client):
    resp = client.get(_url(FT, FT_RUN))
    assert resp.status_code == 200 and f"report of {FT_RUN}" in resp.text
    assert client.get(_url(FT, FT_RUN, "helm")).text == f"<p>helm of {FT_RUN}</p>"
    assert f"card of {FT_RUN}" in client.get(_url(FT, FT_RUN, "model-card")).text
    assert f"report of {MONTH_KEY}" in client.get(_url(MONTHLY, MONTH_KEY)).text


def test_a_run_of_another_dag_is_not_found(client, home):
    for dag_id, run_id in ((MONTHLY, FT_RUN), (FT, MONTH_KEY), (FT, MONTH_AIRFLOW_RUN), ("some_other_dag", FT_RUN)):
        for page in ("", "helm", "model-card"):
            _assert_404_names_no_path(client.get(_url(dag_id, run_id, page)), home)


def test_the_list_shows_only_the_dags_runs(client):
    ft = client.get(f"/reports/{FT}")
    assert ft.status_code == 200
    assert FT_RUN in ft.text and OTHER_FT_RUN in ft.text and "gated" in ft.text
    assert MONTH_KEY not in ft.text and LEGACY_RUN not in ft.text
    monthly = client.get(f"/reports/{MONTHLY}")
    assert MONTH_KEY in monthly.text and FT_RUN not in monthly.text and OTHER_FT_RUN not in monthly.text
    assert monthly.text.count(f">{MONTH_KEY}<") == 1  # the Airflow-run-id link is not listed twice
    assert "No run reports yet" in client.get("/reports/some_other_dag").text


def test_a_list_link_opens_the_run(client):
    import re

    page = client.get(f"/reports/{FT}").text
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs, page
    for href in hrefs:  # relative to /reports/<dag> (no trailing slash): <dag>/<run>
        resp = client.get(f"/reports/{href}")
        assert resp.status_code == 200 and "report of manual__" in resp.text, href


def test_a_run_without_a_recorded_dag_is_not_served(client, home):
    for dag_id in (FT, MONTHLY):
        _assert_404_names_no_path(client.get(_url(dag_id, LEGACY_RUN)), home)


def test_a_folder_recorded_for_another_run_id_is_not_served(client, home):
    # The folder of FT_RUN answers only to FT_RUN: a run id that maps to the same folder name is refused.
    paths = Paths()
    alias = paths.run_dir(FT_RUN).name
    if alias != FT_RUN:
        _assert_404_names_no_path(client.get(_url(FT, alias)), home)
    report = json.loads((paths.run_dir(OTHER_FT_RUN) / "stages" / "prepare.json").read_text())
    (paths.run_dir(OTHER_FT_RUN) / "stages" / "prepare.json").write_text(json.dumps({**report, "run_id": FT_RUN}))
    _assert_404_names_no_path(client.get(_url(FT, OTHER_FT_RUN)), home)


def test_prepare_and_report_must_agree_on_the_dag(client, home):
    run_dir = Paths().run_dir(FT_RUN)
    report = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").write_text(json.dumps({**report, "dag_id": MONTHLY}))
    _assert_404_names_no_path(client.get(_url(FT, FT_RUN)), home)
    _assert_404_names_no_path(client.get(_url(MONTHLY, FT_RUN)), home)


def test_the_dag_may_come_from_the_report_when_prepare_is_gone(client, home):
    run_dir = Paths().run_dir(FT_RUN)
    (run_dir / "stages" / "prepare.json").unlink()
    report = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").write_text(json.dumps({**report, "prepare": {}, "dag_id": FT}))
    assert client.get(_url(FT, FT_RUN)).status_code == 200
    _assert_404_names_no_path(client.get(_url(MONTHLY, FT_RUN)), home)


def test_a_monthly_run_is_found_under_its_airflow_run_id(client):
    # The run note links the Airflow run id; tasks/stages/monthly_refinetune.py makes it a sibling link to the month's folder.
    resp = client.get(_url(MONTHLY, MONTH_AIRFLOW_RUN))
    assert resp.status_code == 200 and f"report of {MONTH_KEY}" in resp.text
    assert client.get(_url(MONTHLY, MONTH_AIRFLOW_RUN, "helm")).status_code == 200


def test_a_run_folder_that_links_outside_runs_is_refused(client, home):
    paths = Paths()
    outside = _write_run(home / "elsewhere" / "evil", "evil", FT)
    (outside / "report.md").write_text(SECRET)
    for run_id, target in (
        ("evil_abs", outside),
        ("evil_rel", Path("..") / "elsewhere" / "evil"),
        ("evil_into_runs", paths.runs / paths.run_dir(FT_RUN).name),
    ):
        paths.run_dir(run_id).symlink_to(target, target_is_directory=True)
        for page in ("", "helm", "model-card"):
            _assert_404_names_no_path(client.get(_url(FT, run_id, page)), home)
    listing = client.get(f"/reports/{FT}").text
    assert SECRET not in listing and "evil" not in listing


def test_a_sibling_link_to_a_link_is_refused(client, home):
    paths = Paths()
    paths.run_dir("hop1").symlink_to(paths.run_dir(MONTH_AIRFLOW_RUN).name, target_is_directory=True)
    _assert_404_names_no_path(client.get(_url(MONTHLY, "hop1")), home)


# What each page answers when one file or folder of the run is a symlink (to a secret outside runs/):
# a record that binds the run to its DAG refuses the whole run; a page's own file refuses that page.
SYMLINKED = {
    "stages": {"": 404, "helm": 404, "model-card": 404},
    "stages/prepare.json": {"": 404, "helm": 404, "model-card": 404},
    "report.json": {"": 404, "helm": 404, "model-card": 404},
    "report.md": {"": 200, "helm": 200, "model-card": 200},
    "model_card.md": {"": 200, "helm": 200, "model-card": 404},
    "eval": {"": 200, "helm": 404, "model-card": 200},
    "eval/helm": {"": 200, "helm": 404, "model-card": 200},
    "eval/helm/helm.html": {"": 200, "helm": 404, "model-card": 200},
}


@pytest.mark.parametrize("name", sorted(SYMLINKED))
def test_a_symlink_inside_a_run_is_not_followed(client, home, name):
    run_dir = Paths().run_dir(FT_RUN)
    target = run_dir / name
    if target.is_dir():
        moved = home / "moved"
        os.rename(target, moved)
        target.symlink_to(moved, target_is_directory=True)
    else:
        target.unlink()
        target.symlink_to(home / "secret.txt")
    for page, status in SYMLINKED[name].items():
        resp = client.get(_url(FT, FT_RUN, page))
        assert SECRET not in resp.text
        if status == 404:
            _assert_404_names_no_path(resp, home)
        else:
            assert resp.status_code == 200, (page, resp.text[:300])
    report = client.get(_url(FT, FT_RUN)).text
    if name == "report.md":
        assert "The report is written" in report
    if name.startswith("eval"):
        assert "HELM-style evaluation" not in report and "Model card" in report
    if name == "model_card.md":
        assert "Model card" not in report and "HELM-style evaluation" in report
    listing = client.get(f"/reports/{FT}").text
    assert SECRET not in listing and OTHER_FT_RUN in listing
    assert (FT_RUN in listing) == (name not in ("stages", "stages/prepare.json", "report.json"))


def test_a_symlinked_helm_page_is_refused(client, home):
    helm = Paths().run_dir(FT_RUN) / "eval" / "helm" / "helm.html"
    helm.unlink()
    helm.symlink_to(home / "secret.txt")
    _assert_404_names_no_path(client.get(_url(FT, FT_RUN, "helm")), home)
    page = client.get(_url(FT, FT_RUN))
    assert page.status_code == 200 and "HELM-style evaluation" not in page.text


ESCAPES = ["..", ".", "", "../..", "../secret.txt", "/etc/passwd", "runs/..", "___", "+", "._"]


@pytest.mark.parametrize(
    "run_id", [quote(r, safe="").replace(".", "%2E") for r in ESCAPES if r] + ["%2e%2E", "..%2F.."]
)
def test_a_run_id_cannot_leave_its_folder(client, home, run_id):
    # The runs root itself looks like a run here: a run id that sanitises to "" must not reach it.
    _write_run(Paths().runs, "root", FT)
    for page in ("", "/helm", "/model-card"):
        _assert_404_names_no_path(client.get(f"/reports/{FT}/{run_id}{page}"), home)


@pytest.mark.parametrize("run_id", ESCAPES)
def test_the_pages_refuse_dot_segments_sent_as_is(home, run_id):
    # A browser or httpx folds a literal /.. before sending it; a raw request (curl --path-as-is) does not.
    from fastapi import HTTPException

    _write_run(Paths().runs, "root", FT)
    for page in (plugin.run_report, plugin.helm_page, plugin.model_card):
        with pytest.raises(HTTPException) as err:
            page(FT, run_id)
        assert err.value.status_code == 404 and str(home) not in str(err.value.detail)


def test_unreadable_records_are_not_found(client, home):
    run_dir = Paths().run_dir(FT_RUN)
    (run_dir / "stages" / "prepare.json").write_text("{not json")
    _assert_404_names_no_path(client.get(_url(FT, FT_RUN)), home)
    assert FT_RUN not in client.get(f"/reports/{FT}").text


def test_what_prepare_records_is_what_the_plugin_reads(tmp_path, monkeypatch):
    """The contract with tasks/stages/privacy_finetune.py and tasks/stages/monthly_refinetune.py: prepare records the run's DAG, and the
    month's Airflow run id is linked to its folder; the pages follow from those records alone."""
    from tasks.stages import monthly_refinetune, privacy_finetune

    home = tmp_path / "pft"
    monkeypatch.setenv("PFT_HOME", str(home))
    monkeypatch.setattr(
        privacy_finetune,
        "resolve_base_model",
        lambda cfg, paths: {"base_model_dir": "base", "base_model_source": "test"},
    )
    privacy_finetune.stage_prepare(FT_RUN, {}, dag_id=FT)
    monthly_refinetune.stage_prepare(MONTH_AIRFLOW_RUN, "2026-01", {})
    for run_id in (FT_RUN, MONTH_KEY):
        (Paths().run_dir(run_id) / "report.md").write_text(f"report of {run_id}")
    plugin.app.dependency_overrides[plugin.can_read_runs.dependency] = lambda: None
    try:
        with TestClient(plugin.app) as c:
            assert c.get(_url(FT, FT_RUN)).status_code == 200
            assert c.get(_url(MONTHLY, MONTH_KEY)).status_code == 200
            assert f"report of {MONTH_KEY}" in c.get(_url(MONTHLY, MONTH_AIRFLOW_RUN)).text  # the run note's link
            for dag_id, run_id in ((MONTHLY, FT_RUN), (FT, MONTH_KEY), (FT, MONTH_AIRFLOW_RUN)):
                _assert_404_names_no_path(c.get(_url(dag_id, run_id)), home)
    finally:
        plugin.app.dependency_overrides.clear()
