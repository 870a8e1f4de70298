"""Failure notifications: the message holds ids and types only, and reaches real loopback receivers."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.airflow import notify
from tasks.config import NotifyConfig

DAGS = Path(__file__).resolve().parents[2] / "dags"


class GatedError(RuntimeError):
    pass


def failed_context(error: BaseException | str | None) -> dict:
    """What Airflow hands an on_failure_callback, reduced to the attributes the message reads."""
    ti = SimpleNamespace(
        dag_id="privacy_finetune",
        run_id="manual__2026-01-01T00:00:00+00:00",
        task_id="mask_shard",
        try_number=2,
        map_index=3,
        state="failed",
    )
    dag_run = SimpleNamespace(dag_id="privacy_finetune", run_id=ti.run_id)
    return {"ti": ti, "task_instance": ti, "dag_run": dag_run, "exception": error}


def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """An exception that really went through raise (so it carries a traceback we must not send)."""
    try:
        if cause is not None:
            raise exc from cause
        raise exc
    except BaseException as caught:
        return caught


# ---------------------------------------------------------------- loopback receivers


@pytest.fixture
def webhook_server():
    """A real HTTP server on 127.0.0.1 that records each POSTed JSON body."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
            self.send_response(500 if self.path == "/fail" else 204)
            self.end_headers()

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(port=server.server_address[1], received=received)
    server.shutdown()
    server.server_close()


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. No STARTTLS."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        self.reply("220 loopback ESMTP")
        envelope = {"from": None, "to": []}
        while line := self.rfile.readline():
            verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-loopback")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 loopback")
            elif verb == "MAIL":
                envelope["from"] = line.decode().split(":", 1)[1].strip()
                self.reply("250 OK")
            elif verb == "RCPT":
                envelope["to"].append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                self.server.received.append({**envelope, "message": message_from_bytes(b"".join(data))})
                envelope = {"from": None, "to": []}
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.daemon_threads = True
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(port=server.server_address[1], received=server.received)
    server.shutdown()
    server.server_close()


def dead_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the message


def test_message_holds_ids_and_types_never_a_traceback():
    secret_detail = "x" * 1000
    error = raised(
        RuntimeError(f'stage mask failed\n  File "tasks/pii/engine.py", line 3\n{secret_detail}'),
        cause=GatedError("gate"),
    )
    message = notify.failure_message(failed_context(error))

    assert message["dag_id"] == "privacy_finetune" and message["task_id"] == "mask_shard"
    assert message["run_id"] == "manual__2026-01-01T00:00:00+00:00"
    assert (message["try_number"], message["map_index"], message["state"]) == (2, 3, "failed")
    assert message["exception_type"] == "RuntimeError" and message["cause_type"] == "GatedError"
    assert "\n" not in message["message"] and len(message["message"]) <= notify.MAX_MESSAGE_CHARS
    assert message["message"].startswith("stage mask failed") and message["message"].endswith("…")
    dumped = json.dumps(message)  # JSON-able as is
    assert "Traceback" not in dumped and "test_notify.py" not in dumped
    # The task page in the Airflow 3 UI (the fake ti has no log_url).
    assert message["log_url"].endswith(
        "/dags/privacy_finetune/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/mask_shard/mapped/3?try_number=2"
    )
    assert "mask_shard[3] failed" in message["text"] and "RuntimeError (GatedError)" in message["text"]


def test_message_prefers_the_task_instance_log_url_and_takes_string_errors():
    context = failed_context("killed by the executor")
    context["ti"].log_url = "http://airflow.example/dags/x/runs/y/tasks/z"
    message = notify.failure_message(context)
    assert message["log_url"] == "http://airflow.example/dags/x/runs/y/tasks/z"
    assert message["exception_type"] is None and message["message"] == "killed by the executor"


def test_webhook_url_from_connection_parts():
    assert (
        notify.webhook_url("hooks.example.com", "https", None, "/services/T/B")
        == "https://hooks.example.com/services/T/B"
    )
    assert notify.webhook_url("127.0.0.1", "http", 8123, "hook") == "http://127.0.0.1:8123/hook"
    assert notify.webhook_url("https://hooks.example.com/", None, None, None) == "https://hooks.example.com"
    assert notify.webhook_url(None) is None


# ---------------------------------------------------------------- delivery


def test_webhook_from_an_airflow_connection_receives_the_json(webhook_server, monkeypatch):
    conn = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": webhook_server.port,
        "schema": "http",
        "extra": {"endpoint": "/pft/failures", "headers": {"X-Token": "t0k"}},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PFT_NOTIFY_TEST_HTTP", json.dumps(conn))
    message = notify.failure_message(failed_context(raised(ValueError("bad field"))))

    assert notify.send(message, NotifyConfig(channel="webhook", webhook_conn_id="pft_notify_test_http", timeout_s=5))
    [hit] = webhook_server.received
    assert hit["path"] == "/pft/failures" and hit["headers"]["X-Token"] == "t0k"
    assert hit["headers"]["Content-Type"] == "application/json"
    assert hit["json"] == message


def test_webhook_url_from_the_environment_when_no_connection(webhook_server, monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{webhook_server.port}/env-hook")
    cfg = NotifyConfig(channel="webhook", webhook_conn_id="pft_notify_missing_conn", timeout_s=5)
    assert notify.send({"event": "task_failed"}, cfg)
    assert [h["path"] for h in webhook_server.received] == ["/env-hook"]


def test_dead_or_failing_webhook_never_raises(monkeypatch, caplog):
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{dead_port()}/hook?token=secret-token")
    cfg = NotifyConfig(channel="webhook", webhook_conn_id="pft_notify_missing_conn", timeout_s=2)
    assert notify.send({"event": "task_failed"}, cfg) is False
    assert "delivery failed" in caplog.text and "secret-token" not in caplog.text


def test_webhook_http_error_never_raises(webhook_server, monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{webhook_server.port}/fail")
    cfg = NotifyConfig(channel="webhook", webhook_conn_id="pft_notify_missing_conn", timeout_s=5)
    assert notify.send({"event": "task_failed"}, cfg) is False


def test_email_through_the_environment_smtp_server(smtp_server, monkeypatch):
    monkeypatch.setenv(notify.SMTP_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(notify.SMTP_PORT_ENV, str(smtp_server.port))
    message = notify.failure_message(failed_context(raised(ValueError("bad field"))))
    cfg = NotifyConfig(
        channel="email", smtp_conn_id="pft_notify_missing_conn", email_to=["ops@example.org", "ml@example.org"]
    )
    assert notify.send(message, cfg)
    [mail] = smtp_server.received
    assert mail["to"] == ["ops@example.org", "ml@example.org"]
    assert "mask_shard[3] failed" in mail["message"]["Subject"]
    assert json.loads(mail["message"].get_payload(decode=True)) == message


def test_email_through_an_airflow_smtp_connection(smtp_server, monkeypatch):
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "extra": {"from_email": "airflow@example.org"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PFT_NOTIFY_TEST_SMTP", json.dumps(conn))
    cfg = NotifyConfig(channel="email", smtp_conn_id="pft_notify_test_smtp", email_to=["ops@example.org"])
    assert notify.send({"event": "task_failed", "text": "x failed"}, cfg)
    [mail] = smtp_server.received
    assert mail["message"]["From"] == "airflow@example.org" and mail["from"] == "<airflow@example.org>"


def test_dead_smtp_server_never_raises(monkeypatch):
    monkeypatch.setenv(notify.SMTP_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(notify.SMTP_PORT_ENV, str(dead_port()))
    cfg = NotifyConfig(
        channel="email", smtp_conn_id="pft_notify_missing_conn", email_to=["ops@example.org"], timeout_s=2
    )
    assert notify.send({"event": "task_failed"}, cfg) is False


def test_channel_none_sends_nothing(webhook_server, monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{webhook_server.port}/hook")
    assert notify.send({"event": "task_failed"}, NotifyConfig()) is False
    assert webhook_server.received == []


def test_email_channel_needs_recipients():
    with pytest.raises(ValueError, match=r"notify.email_to"):
        NotifyConfig(channel="email")


# ---------------------------------------------------------------- the callback


def test_on_failure_reads_the_pipeline_config_and_delivers(webhook_server, monkeypatch, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("notify:\n  channel: webhook\n  webhook_conn_id: pft_notify_missing_conn\n  timeout_s: 5\n")
    monkeypatch.setenv("PFT_CONFIG", str(config))
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{webhook_server.port}/hook")
    notify.on_failure(failed_context(raised(ValueError("bad field"))))
    [hit] = webhook_server.received
    assert hit["json"]["task_id"] == "mask_shard" and hit["json"]["exception_type"] == "ValueError"


def test_on_failure_with_an_unreadable_config_logs_and_returns(monkeypatch, tmp_path, caplog):
    broken = tmp_path / "pipeline.yaml"
    broken.write_text("notify:\n  channel: pager\n")
    monkeypatch.setenv("PFT_CONFIG", str(broken))
    assert notify.on_failure(failed_context(raised(ValueError("x")))) is None
    monkeypatch.setenv("PFT_CONFIG", str(tmp_path / "missing.yaml"))
    assert notify.on_failure(failed_context(raised(ValueError("x")))) is None
    assert "config unreadable" in caplog.text


def test_default_config_sends_nothing(webhook_server, monkeypatch):
    monkeypatch.setenv(notify.WEBHOOK_URL_ENV, f"http://127.0.0.1:{webhook_server.port}/hook")
    notify.on_failure(failed_context(raised(ValueError("x"))))
    assert webhook_server.received == []


def test_every_task_of_the_dag_carries_the_callback():
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(DAGS))
    assert dagbag.import_errors == {}
    dag = dagbag.dags["privacy_finetune"]
    for t in dag.tasks:
        callbacks = t.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(
            getattr(cb, "__module__", None) == "tasks.airflow.notify" and cb.__name__ == "on_failure"
            for cb in callbacks
        ), f"{t.task_id} has no failure notification"
