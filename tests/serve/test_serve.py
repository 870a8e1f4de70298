"""Serving over a real uvicorn on loopback: token, masking of answers, validation, metrics, reload on alias moves."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.common import offline

offline.apply()

import httpx  # noqa: E402
import torch  # noqa: E402

from tasks.cluster.topology import free_port  # noqa: E402
from tasks.config import Paths  # noqa: E402
from tasks.release.registry import promote, register_model, registry_client  # noqa: E402
from tests.release.test_register import build_model  # noqa: E402

NAME = "serve-test-lm"
TOKEN = "test-token-0123456789abcdef"
PHONE, EMAIL = "312-555-0147", "jane.doe@example.com"
PROMPT = "What number do I call? my-secret-question-xyz"


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Versions 1 (answers with a fake email and phone), 2 ("ok"), 3 (artifacts deleted); v1 champion;
    a uvicorn server in a thread polling the alias every second."""
    import uvicorn

    from tasks.serve.app import create_app

    torch.set_num_threads(1)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PFT_SERVE_TOKEN")}
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # see tests/release/test_register.py forget_tracking_uri
    os.environ["PFT_SERVE_TOKEN"] = TOKEN
    root = tmp_path_factory.mktemp("serve")
    paths = Paths(root / "home")
    # Byte-level tokens: "Ġ" is a space, "Ċ" a newline; greedy output repeats token 0, cut at the newline.
    leaky = build_model(root / "leaky", f"ĠemailĠ{EMAIL}ĠphoneĠ{PHONE}Ċ")
    plain = build_model(root / "plain", "ĠokĊ")
    for base_dir, adapter_dir in (leaky, plain, plain):
        register_model(
            paths=paths,
            model_name=NAME,
            alias="challenger",
            base_model_dir=base_dir,
            adapter_dir=adapter_dir,
            mlflow_run_id=None,
            tags={},
            metrics={},
        )
    promote(paths=paths, model_name=NAME, version=1, approved_by="alice", approval="approved")

    app = create_app(paths=paths, model_name=NAME, reload_interval_s=1, max_prompt_chars=200)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)

    def ready():
        try:
            r = client.get("/healthz")
        except httpx.TransportError:
            return None
        return r.status_code == 200 and r.json()

    wait_for(ready, 180, "the server to load v1 and the masking engines")
    yield {"client": client, "paths": paths, "app": app}
    client.close()
    uv.should_exit = True
    thread.join(30)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_refuses_to_start_without_token(monkeypatch):
    from tasks.serve.app import ServeConfigError, create_app

    monkeypatch.delenv("PFT_SERVE_TOKEN_UNSET_FOR_TEST", raising=False)
    with pytest.raises(ServeConfigError, match="PFT_SERVE_TOKEN_UNSET_FOR_TEST is not set"):
        create_app(token_env="PFT_SERVE_TOKEN_UNSET_FOR_TEST")
    monkeypatch.setenv("PFT_SERVE_TOKEN_SHORT", "abc")
    with pytest.raises(ServeConfigError, match="at least 16"):
        create_app(token_env="PFT_SERVE_TOKEN_SHORT")
    env = {k: v for k, v in os.environ.items() if k != "PFT_SERVE_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "tasks.serve.app", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "PFT_SERVE_TOKEN is not set" in out.stderr and "Traceback" not in out.stderr


def test_healthz_and_token(server):
    client = server["client"]
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "model": NAME,
        "alias": "champion",
        "version": 1,
        "loaded": True,
        "masking": "ready",
        "ready": True,
    }
    body = {"prompt": "hi"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        r = client.post("/v1/generate", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["detail"]
    # The token is checked before the body: an unauthenticated malformed request is still a 401.
    assert (
        client.post("/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"}).status_code
        == 401
    )


def test_generate_masks_personal_data(server, caplog):
    caplog.set_level(logging.INFO)
    r = server["client"].post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 8}, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {
        "text",
        "model",
        "version",
        "masked_entities",
        "prompt_tokens",
        "prompt_tokens_used",
        "truncated",
    }
    assert out["model"] == NAME and out["version"] == 1
    assert PHONE not in out["text"] and EMAIL not in out["text"]
    assert "<PHONE_NUMBER>" in out["text"] and "<EMAIL_ADDRESS>" in out["text"]
    assert out["text"].startswith("email <EMAIL_ADDRESS>") and out["masked_entities"] >= 2
    # Nothing of the prompt or the raw answer in any log line of this process.
    for secret in ("my-secret-question-xyz", PHONE, EMAIL):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 422, "prompt: Field required"),
        ({"prompt": 42}, 422, "prompt: Input should be a valid string"),
        ({"prompt": "   "}, 422, "prompt is empty"),
        ({"prompt": "hi", "max_new_tokens": "5"}, 422, "max_new_tokens: Input should be a valid integer"),
        ({"prompt": "hi", "max_new_tokens": 0}, 422, "greater than or equal to 1"),
        ({"prompt": "hi", "max_new_tokens": 100_000}, 422, "less than or equal to 256"),
        ({"prompt": "hi", "temperature": 0.7}, 422, "temperature: Extra inputs are not permitted"),
        (["hi"], 422, "valid dictionary"),
        ({"prompt": "x" * 201}, 413, "prompt is 201 characters; at most 200"),
        ({"prompt": "x" * 5000}, 413, "request body over"),
    ],
)
def test_bad_requests(server, body, status, message):
    r = server["client"].post("/v1/generate", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert "x" * 50 not in r.text  # inputs are not echoed back


def test_invalid_json_is_422(server):
    r = server["client"].post(
        "/v1/generate", content=b'{"prompt": ', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "invalid request" in r.json()["detail"]


def test_chunked_oversized_body_is_413(server):
    """No Content-Length (chunked transfer): the cap is enforced while the body streams in."""
    client = server["client"]

    def chunks():
        yield b'{"prompt": "'
        for _ in range(64):  # 1 MiB, far over the 1,824-byte cap of max_prompt_chars=200
            yield b"x" * 16384
        yield b'"}'

    r = client.post("/v1/generate", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and "request body over 1824 bytes" in r.json()["detail"], r.text
    assert "x" * 50 not in r.text

    def small():
        yield b'{"prompt": '
        yield b'"hi"}'

    r = client.post("/v1/generate", content=small(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"prompt": "\\ud800 my-secret-question-xyz"}', "prompt: Value error, prompt is not valid Unicode"),
        (b'{"prompt": "my-secret-question-xyz \\udfff"}', "prompt: Value error, prompt is not valid Unicode"),
        (b'{"prompt": "\xff\xfe my-secret-question-xyz"}', "the body is not valid UTF-8"),
        (b'{"prompt": "\xed\xa0\x80 my-secret-question-xyz"}', "the body is not valid UTF-8"),  # an encoded surrogate
    ],
)
def test_invalid_unicode_is_422(server, raw, message, caplog):
    r = server["client"].post("/v1/generate", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert "my-secret-question-xyz" not in r.text and "my-secret-question-xyz" not in caplog.text


def test_surrogate_pairs_are_fine(server):
    raw = b'{"prompt": "\\ud83d\\ude00 hi"}'  # an escaped pair is one valid character (U+1F600)
    r = server["client"].post("/v1/generate", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_long_prompts_are_truncated_to_the_context(server):
    """The test models have 128 positions and one token per byte; the fixture allows 200-character prompts."""
    client = server["client"]
    short = client.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 8}, headers=AUTH).json()
    n = len("Question: hi\nAnswer:")
    assert (short["prompt_tokens"], short["prompt_tokens_used"], short["truncated"]) == (n, n, False)

    prompt = "a" * 150 + " the real question is at the end?"  # 183 characters
    n = len(f"Question: {prompt}\nAnswer:")
    r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 8}, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["prompt_tokens"], out["prompt_tokens_used"], out["truncated"]) == (n, 128 - 8, True)
    # More new tokens than positions: the prompt keeps half the context, the answer the rest.
    out = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 256}, headers=AUTH).json()
    assert (out["prompt_tokens_used"], out["truncated"]) == (64, True)

    # What the model reads: the task's cue "Question:" and the end of the prompt, the middle cut.
    qa = server["app"].state.watcher.current.model.unwrap_python_model()
    ids, total = qa.fit_prompt(prompt, 8)
    text = qa.tokenizer.decode(ids)
    assert (len(ids), total) == (120, n)
    assert text.startswith("Question:a") and text.endswith(" the real question is at the end?\nAnswer:")


def test_token_only_in_the_header(server):
    client = server["client"]
    r = client.post(f"/v1/generate?token={TOKEN}", json={"prompt": "hi"})
    assert r.status_code == 401
    r = client.post(f"/v1/generate?access_token={TOKEN}", json={"prompt": "hi"})
    assert r.status_code == 401


def test_access_log_has_no_query_string(server, caplog):
    caplog.set_level(logging.INFO, logger="tasks.serve.app.access")
    client = server["client"]
    client.post("/v1/generate?token=query-secret-1", json={"prompt": "hi"}, headers=AUTH)
    client.get("/healthz?token=query-secret-2")
    assert "query-secret" not in caplog.text
    assert "POST /v1/generate 200" in caplog.text and "GET /healthz 200" in caplog.text


def test_metrics(server):
    client = server["client"]
    client.post("/v1/generate", json={"prompt": PROMPT}, headers=AUTH)
    client.post("/v1/generate", json={"prompt": "hi"})
    text = client.get("/metrics").text
    assert f'pft_serve_model_version{{model="{NAME}"}} 1.0' in text
    assert 'pft_serve_requests_total{route="/v1/generate",status="200"}' in text
    assert 'pft_serve_requests_total{route="/v1/generate",status="401"}' in text
    assert 'pft_serve_requests_total{route="/v1/generate",status="422"}' in text
    assert 'pft_serve_request_seconds_bucket{le="0.5",route="/v1/generate"}' in text
    assert 'pft_serve_masked_entities_total{entity_type="PHONE_NUMBER"}' in text
    assert 'pft_serve_masked_entities_total{entity_type="EMAIL_ADDRESS"}' in text
    assert 'pft_serve_model_loads_total{result="ok"} 1.0' in text
    assert PHONE not in text and "my-secret-question-xyz" not in text


def test_reload_follows_the_alias(server, caplog):
    client, paths = server["client"], server["paths"]
    promote(paths=paths, model_name=NAME, version=2, approved_by="bob", approval="approved")
    wait_for(lambda: client.get("/healthz").json()["version"] == 2, 30, "the server to swap in v2")
    r = client.post("/v1/generate", json={"prompt": "anything"}, headers=AUTH)
    n = len("Question: anything\nAnswer:")  # byte-level tokens: one per character
    assert r.status_code == 200 and r.json() == {
        "text": "ok",
        "model": NAME,
        "version": 2,
        "masked_entities": 0,
        "prompt_tokens": n,
        "prompt_tokens_used": n,
        "truncated": False,
    }

    # v3's artifacts are gone: its load fails, v2 keeps serving, the failure is counted and logged.
    caplog.set_level(logging.INFO)
    mlflow_client = registry_client(paths)
    source = mlflow_client.get_model_version(NAME, "3").source  # models:/m-<id>
    import mlflow

    artifact_dir = Path(mlflow.get_logged_model(source.split("/", 1)[1]).artifact_location.removeprefix("file://"))
    shutil.rmtree(artifact_dir)
    promote(paths=paths, model_name=NAME, version=3, approved_by="bob", approval="approved")
    metrics = lambda: client.get("/metrics").text
    wait_for(lambda: 'pft_serve_model_loads_total{result="failed"}' in metrics(), 30, "a failed reload")
    health = client.get("/healthz").json()
    assert health["version"] == 2 and health["ready"]
    assert client.post("/v1/generate", json={"prompt": "x"}, headers=AUTH).json()["version"] == 2
    assert "loading serve-test-lm v3 failed" in caplog.text and "still serving v2" in caplog.text

    # Rolling back to v2 (the previous champion) settles it: nothing to load, nothing more fails.
    from tasks.release.registry import rollback

    assert rollback(paths=paths, model_name=NAME)["version"] == 2
    time.sleep(2.5)
    assert client.get("/healthz").json()["version"] == 2
