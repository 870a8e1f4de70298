"""PrivateTune run reports inside the Airflow UI.

A FastAPI app mounted by the Airflow api-server at /privatetune: each run's report, its
HELM-style evaluation page and its model card, behind Airflow's own login (the same
JWT cookie or bearer token; a user needs read access to the DAG's runs). The approval
request links here, so a reviewer reads the evidence without leaving Airflow.

Airflow checks the user's access to the dag_id in the URL, so a run is served only under the
DAG that its folder records (`dag_id` in stages/prepare.json, else in report.json) and only
under the run id the folder records: any other DAG, a folder with no recorded DAG (runs
prepared before it was recorded) or a record that disagrees gets 404. Files are opened below
the runs root one component at a time without following symlinks, except the one link that
tasks/stages/monthly_refinetune.py makes: a runs/ entry that names a sibling run folder (the month's folder under
its Airflow run id). Errors name no path on disk.
"""

from __future__ import annotations

import errno
import html
import json
import os
import stat
from typing import NamedTuple
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from tasks.airflow import run_notes
from tasks.config import Paths

app = FastAPI(title="PrivateTune reports", docs_url=None, redoc_url=None, openapi_url=None)
can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem}}pre{{background:#f6f8fa;padding:1rem;
overflow:auto}}a{{margin-right:1rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"""
LIST_LIMIT = 200
RECORD_LIMIT = 16 << 20  # prepare.json / report.json: more is not a record this pipeline wrote
NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
PREPARE, REPORT = ("stages", "prepare.json"), ("report.json",)


class Refused(Exception):
    """Present but not a plain file or folder (a symlink, a FIFO...), or not readable."""


class Run(NamedTuple):
    folder: str  # the run folder's name, directly under the runs root
    run_id: str  # the run id its records name
    report: dict | None


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and (os.altsep is None or os.altsep not in name)
    )


def _open(folder: str, parts: tuple[str, ...], *, want_dir: bool) -> int:
    """A file descriptor for runs/<folder>/<parts...>, every component opened with O_NOFOLLOW.
    FileNotFoundError when absent; Refused when a component is a symlink or not the right kind."""
    fd = os.open(Paths().runs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the configured root itself
    try:
        names = (folder, *parts)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            if not _plain_name(name):
                raise Refused()
            flags = NOFOLLOW | (os.O_NONBLOCK if last and not want_dir else os.O_DIRECTORY)
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ENOENT:
                    raise FileNotFoundError() from None
                raise Refused() from None  # ELOOP (a symlink), ENOTDIR, EACCES...
            os.close(fd)
            fd = child
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
            raise Refused()
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read(folder: str, *parts: str, limit: int | None = None) -> bytes | None:
    """The file's bytes; None when absent; Refused when it (or a folder on the way) is a symlink."""
    try:
        fd = _open(folder, parts, want_dir=False)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise Refused()
    return data


def _has_file(folder: str, *parts: str) -> bool:
    try:
        os.close(_open(folder, parts, want_dir=False))
        return True
    except (FileNotFoundError, Refused, OSError):
        return False


def _record(folder: str, parts: tuple[str, ...]) -> dict | None:
    data = _read(folder, *parts, limit=RECORD_LIMIT)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        raise Refused() from None
    if not isinstance(record, dict):
        raise Refused()
    return record


def _load(folder: str, dag_id: str) -> Run | None:
    """The run in runs/<folder> when its records bind it to dag_id; None otherwise."""
    try:
        os.close(_open(folder, (), want_dir=True))
        prepare, report = _record(folder, PREPARE), _record(folder, REPORT)
    except (FileNotFoundError, Refused, OSError):
        return None
    if prepare is None and report is None:
        return None
    report_prepare = (report or {}).get("prepare")
    dags = {
        d
        for d in (
            (prepare or {}).get("dag_id"),
            (report or {}).get("dag_id"),
            report_prepare.get("dag_id") if isinstance(report_prepare, dict) else None,
        )
        if d is not None
    }
    if dags != {dag_id}:
        return None  # another DAG's run, no recorded DAG (deny), or records that disagree
    run_id = (prepare or {}).get("run_id") if prepare is not None else (report or {}).get("run_id")
    if not isinstance(run_id, str) or not run_id:
        return None
    if report is not None and report.get("run_id") not in (None, run_id):
        return None
    return Run(folder=folder, run_id=run_id, report=report)


def _folder_of(run_id: str) -> tuple[str, bool] | None:
    """(folder name under runs/, reached through monthly's Airflow-run-id link?) for a requested run id."""
    paths = Paths()
    try:
        run_dir = paths.run_dir(run_id)
    except Exception:  # a run id the pipeline refuses has no folder
        return None
    if run_dir.parent != paths.runs or not _plain_name(run_dir.name):
        return None  # "", ".", ".." or a name with a slash: never the runs root or above it
    try:
        target = os.readlink(run_dir)
    except FileNotFoundError:
        return None
    except OSError as err:
        return (run_dir.name, False) if err.errno == errno.EINVAL else None  # EINVAL: not a link
    # tasks/stages/monthly_refinetune.py links runs/<airflow run id> to the month's folder by its bare name, nothing else.
    if not _plain_name(target) or target == run_dir.name:
        return None
    return target, True


def _run(dag_id: str, run_id: str) -> Run:
    found = _folder_of(run_id)
    run = _load(found[0], dag_id) if found else None
    aliased = bool(found and found[1])
    # A folder answers to the run id it records; monthly's link answers to the Airflow run id it is named for.
    if run is None or (not aliased and run.run_id != run_id):
        raise HTTPException(404, f"no PrivateTune report for run {run_id!r} of DAG {dag_id!r}")
    return run


def _text(run: Run, *parts: str) -> str | None:
    try:
        data = _read(run.folder, *parts)
    except (Refused, OSError):
        return None
    return None if data is None else data.decode("utf-8", errors="replace")


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(csp=CSP, title=html.escape(title), body=body), headers={"Content-Security-Policy": CSP}
    )


def _mtime(entry: os.DirEntry) -> float:
    try:
        return os.stat(os.path.join(entry.path, *REPORT), follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


@app.get("/reports/{dag_id}", dependencies=[can_read_runs])
def list_reports(dag_id: str) -> HTMLResponse:
    # Real folders only: monthly's Airflow-run-id links name a folder that is listed under its run key.
    try:
        with os.scandir(Paths().runs) as it:
            entries = [e for e in it if _plain_name(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        entries = []
    items = []
    for entry in sorted(entries, key=_mtime, reverse=True):
        run = _load(entry.name, dag_id)
        if run is None or run.report is None:
            continue
        found = _folder_of(run.run_id)
        if found != (entry.name, False):
            continue  # its run id would not lead back here
        href = f"{quote(dag_id, safe='')}/{quote(run.run_id, safe='')}"  # relative to /reports/{dag_id}
        items.append(
            f'<li><a href="{html.escape(href)}">{html.escape(run.run_id)}</a> — '
            f"{html.escape(str(run.report.get('outcome', '')))}</li>"
        )
        if len(items) >= LIST_LIMIT:
            break
    return _page("PrivateTune reports", "<ul>" + "".join(items) + "</ul>" if items else "<p>No run reports yet.</p>")


@app.get("/reports/{dag_id}/{run_id}", dependencies=[can_read_runs])
def run_report(dag_id: str, run_id: str) -> HTMLResponse:
    run = _run(dag_id, run_id)
    text = _text(run, "report.md")
    if text is None:
        text = "The report is written when the run's report task runs."
    here = quote(run_id, safe="")  # relative to /reports/{dag_id}/, so the links work behind any prefix
    links = ""
    if _has_file(run.folder, "eval", "helm", "helm.html"):
        links += f'<a href="{here}/helm">HELM-style evaluation</a>'
    if _has_file(run.folder, "model_card.md"):
        links += f'<a href="{here}/model-card">Model card</a>'
    body = f"<p>{links}</p>"
    return _page(f"Run {run_id}", body + f"<pre>{html.escape(text)}</pre>")


@app.get("/reports/{dag_id}/{run_id}/helm", dependencies=[can_read_runs])
def helm_page(dag_id: str, run_id: str) -> HTMLResponse:
    run = _run(dag_id, run_id)
    try:
        data = _read(run.folder, "eval", "helm", "helm.html")
    except (Refused, OSError):
        data = None
    if data is None:
        raise HTTPException(404, f"run {run_id!r} has no HELM-style report yet (the evaluate task writes it)")
    return HTMLResponse(data, headers={"Content-Security-Policy": CSP})


@app.get("/reports/{dag_id}/{run_id}/model-card", dependencies=[can_read_runs])
def model_card(dag_id: str, run_id: str) -> HTMLResponse:
    run = _run(dag_id, run_id)
    text = _text(run, "model_card.md")
    if text is None:
        raise HTTPException(404, f"run {run_id!r} has no model card yet (the register task writes it)")
    return _page(f"Model card — run {run_id}", f"<pre>{html.escape(text)}</pre>")


class PrivateTuneReports(AirflowPlugin):
    name = "privatetune_reports"
    listeners = [run_notes]  # each run's note in the UI: the report's summary and link
    fastapi_apps = [{"app": app, "url_prefix": "/privatetune", "name": "PrivateTune reports"}]
    external_views = [
        {
            "name": "PrivateTune reports",
            "href": "/privatetune/reports/privacy_finetune",
            "destination": "nav",
            "url_route": "privatetune_reports",
        }
    ]
