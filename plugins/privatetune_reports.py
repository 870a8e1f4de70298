"""PrivateTune run reports inside the Airflow UI.

A FastAPI app mounted by the Airflow api-server at /privatetune: each run's report, its
HELM-style evaluation page and its model card, behind Airflow's own login (the same
JWT cookie or bearer token; a user needs read access to the DAG's runs). The approval
request links here, so a reviewer reads the evidence without leaving Airflow.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from tasks import run_notes
from tasks.config import Paths, safe_run_id

app = FastAPI(title="PrivateTune reports", docs_url=None, redoc_url=None, openapi_url=None)
can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem}}pre{{background:#f6f8fa;padding:1rem;
overflow:auto}}a{{margin-right:1rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"""


def _run_dir(run_id: str) -> Path:
    run_dir = Paths().run_dir(run_id)
    if not (run_dir / "report.json").is_file() and not (run_dir / "stages").is_dir():
        raise HTTPException(404, f"no PrivateTune report for run {run_id!r} under {Paths().runs}")
    return run_dir


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(PAGE.format(csp=CSP, title=html.escape(title), body=body), headers={"Content-Security-Policy": CSP})


@app.get("/reports/{dag_id}", dependencies=[can_read_runs])
def list_reports(dag_id: str) -> HTMLResponse:
    # Monthly runs are also linked under their Airflow run id: list each folder once.
    runs = sorted((p for p in Paths().runs.glob("*/report.json") if not p.parent.is_symlink()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    items = []
    for path in runs[:200]:
        report = json.loads(path.read_text())
        run_id = str(report.get("run_id") or path.parent.name)
        items.append(f'<li><a href="{html.escape(dag_id)}/{html.escape(run_id)}">{html.escape(run_id)}</a> — '
                     f'{html.escape(str(report.get("outcome", "")))}</li>')
    return _page("PrivateTune reports", "<ul>" + "".join(items) + "</ul>" if items else "<p>No run reports yet.</p>")


@app.get("/reports/{dag_id}/{run_id}", dependencies=[can_read_runs])
def run_report(dag_id: str, run_id: str) -> HTMLResponse:
    run_dir = _run_dir(run_id)
    md = run_dir / "report.md"
    text = md.read_text(encoding="utf-8") if md.is_file() else "The report is written when the run's report task runs."
    here = quote(run_id, safe="")  # relative to /reports/{dag_id}/, so the links work behind any prefix
    links = ""
    if (run_dir / "eval" / "helm" / "helm.html").is_file():
        links += f'<a href="{here}/helm">HELM-style evaluation</a>'
    if (run_dir / "model_card.md").is_file():
        links += f'<a href="{here}/model-card">Model card</a>'
    body = f"<p>{links}</p>"
    return _page(f"Run {run_id}", body + f"<pre>{html.escape(text)}</pre>")


@app.get("/reports/{dag_id}/{run_id}/helm", dependencies=[can_read_runs])
def helm_page(dag_id: str, run_id: str) -> FileResponse:
    path = _run_dir(run_id) / "eval" / "helm" / "helm.html"
    if not path.is_file():
        raise HTTPException(404, f"run {run_id!r} has no HELM-style report yet (the evaluate task writes it)")
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": CSP})


@app.get("/reports/{dag_id}/{run_id}/model-card", dependencies=[can_read_runs])
def model_card(dag_id: str, run_id: str) -> HTMLResponse:
    path = _run_dir(run_id) / "model_card.md"
    if not path.is_file():
        raise HTTPException(404, f"run {run_id!r} has no model card yet (the register task writes it)")
    return _page(f"Model card — run {run_id}", f"<pre>{html.escape(path.read_text(encoding='utf-8'))}</pre>")


class PrivateTuneReports(AirflowPlugin):
    name = "privatetune_reports"
    listeners = [run_notes]  # each run's note in the UI: the report's summary and link
    fastapi_apps = [{"app": app, "url_prefix": "/privatetune", "name": "PrivateTune reports"}]
    external_views = [{"name": "PrivateTune reports", "href": "/privatetune/reports/privacy_finetune",
                       "destination": "nav", "url_route": "privatetune_reports"}]
