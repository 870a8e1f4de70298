"""Serving hardening without a model: the body cap while it streams, docs off, the metrics token, and the
access log of the real `python -m tasks.serve.app` (no query strings). Issue 12, finding 6."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.common import offline

offline.apply()

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from tasks.config import Paths  # noqa: E402
from tests.serve.test_serve import TOKEN, free_port, wait_for  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    """create_app over an empty registry; TestClient without `with` runs no lifespan, so nothing loads."""
    from tasks.serve.app import create_app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PFT_SERVE_TOKEN", TOKEN)
    monkeypatch.delenv("PFT_METRICS_TOKEN", raising=False)
    return lambda **kw: create_app(
        paths=Paths(tmp_path / "home"), model_name="hardening-test", max_prompt_chars=200, **kw
    )


def test_chunked_body_is_not_read_past_the_cap(make_app):
    """Drive the ASGI app with a 64 MiB chunked body: 413 after the first chunks, the rest never read."""
    app = make_app()
    chunk, pulled, sent = b"x" * 65536, [], []

    async def receive():
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(pulled) < 1024}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/generate",
        "raw_path": b"/v1/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert len(pulled) <= 2, f"read {sum(pulled)} bytes of an oversized body"


def test_docs_are_off_by_default(make_app):
    client = TestClient(make_app())
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path
    # The schema on request; the HTML pages stay off (their assets come from a public CDN).
    client = TestClient(make_app(openapi=True))
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/generate" in schema.json()["paths"]
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_metrics_token(make_app, monkeypatch):
    client = TestClient(make_app())
    assert client.get("/metrics").status_code == 200  # public unless a metrics token is set

    monkeypatch.setenv("PFT_METRICS_TOKEN", METRICS_TOKEN)
    client = TestClient(make_app())
    for headers in (
        {},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        AUTH,
        {"Authorization": f"Basic {METRICS_TOKEN}"},
    ):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        assert "PFT_METRICS_TOKEN" in r.json()["detail"] and METRICS_TOKEN not in r.text
    assert client.get(f"/metrics?token={METRICS_TOKEN}").status_code == 401  # the header only
    r = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "pft_serve_requests_total" in r.text
    # The readiness probe stays public (no model here: 503, but not 401); the API still needs its own token.
    assert client.get("/healthz").status_code == 503
    r = client.post("/v1/generate", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 401

    monkeypatch.setenv("PFT_METRICS_TOKEN", "short")
    from tasks.serve.app import ServeConfigError

    with pytest.raises(ServeConfigError, match="PFT_METRICS_TOKEN is 5 characters"):
        make_app()


def test_server_access_log_has_no_query_string(tmp_path):
    """The real entry point: uvicorn's own access log (which prints the query string) is off; ours is not."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PFT_METRICS_TOKEN")}
    env["PFT_SERVE_TOKEN"] = TOKEN
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.serve.app",
            "--port",
            str(port),
            "--home",
            str(tmp_path),
            "--model-name",
            "hardening-test",
            "--reload-interval",
            "600",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def up():
            try:
                return client.get("/healthz?token=query-secret-0").status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_for(up, 120, "python -m tasks.serve.app to listen")
        client.post("/v1/generate?token=query-secret-1", json={"prompt": "hi"})
        client.get("/metrics?token=query-secret-2")
        client.get("/nowhere?token=query-secret-3")
        client.close()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "query-secret" not in out, out
    for line in ("GET /healthz 503", "POST /v1/generate 401", "GET /metrics 200", "GET other 404"):
        assert line in out, out
