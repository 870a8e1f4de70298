"""Failure notifications: a failed task announces itself on a webhook or by email.

`on_failure` is the DAG's `on_failure_callback` (default_args). It runs in the worker after the task
failed, so it must never raise and never hold the task for long: every delivery has a timeout and every
error is logged and swallowed — a notification problem must not mask the task failure.

The message holds ids, the exception type and a short one-line message only. Exceptions raised by this
project never carry record text, but the message is still truncated and tracebacks are never sent.
This module is imported by the DAG file at parse time: standard library only at import.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from tasks.config import NotifyConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300
WEBHOOK_URL_ENV = "PFT_NOTIFY_WEBHOOK_URL"
SMTP_HOST_ENV = "PFT_SMTP_HOST"
SMTP_PORT_ENV = "PFT_SMTP_PORT"


# ---------------------------------------------------------------- the message


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Whitespace collapsed to single spaces, cut at `limit` characters (with an ellipsis)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _value(obj: Any) -> Any:
    """Enum members (TaskInstanceState) as their plain value, so the message stays JSON-able."""
    return getattr(obj, "value", obj)


def _ui_url(
    dag_id: str | None, run_id: str | None, task_id: str | None, map_index: int | None, try_number: int | None
) -> str | None:
    """The task's page in the Airflow 3 UI, built like RuntimeTaskInstance.log_url (which older or fake
    task instances may lack); None when the ids or the configuration are not there."""
    if not (dag_id and run_id and task_id):
        return None
    try:
        from airflow.sdk.configuration import conf  # the worker-side config, as task_runner reads it

        base_url = conf.get("api", "base_url", fallback="http://localhost:8080/")
    except Exception:  # Airflow not configured (CLI, tests): no link rather than a wrong one
        return None
    url = f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}"
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{map_index}"
    if try_number:
        url += f"?try_number={try_number}"
    return url


def failure_message(context: Mapping[str, Any]) -> dict[str, Any]:
    """A small JSON-able summary of a failed task from its Airflow context.

    Ids, try number, map index, state, the exception type (and the type of its cause: run_stage wraps
    permanent errors in AirflowFailException) and a one-line message of at most ~300 characters.
    Never a traceback: frames can show local values."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None)
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None)
    task_id = getattr(ti, "task_id", None)
    try_number = getattr(ti, "try_number", None)
    map_index = getattr(ti, "map_index", None)
    state = _value(getattr(ti, "state", None)) or "failed"

    error = context.get("exception")
    if isinstance(error, BaseException):
        exception_type = type(error).__name__
        cause = error.__cause__
        cause_type = type(cause).__name__ if isinstance(cause, BaseException) else None
        text = one_line(str(error))
    elif error:  # Airflow may pass the error as a string
        exception_type, cause_type, text = None, None, one_line(str(error))
    else:
        exception_type, cause_type, text = None, None, ""

    try:
        log_url = getattr(ti, "log_url", None)
    except Exception:  # a property that needs configuration the callback process lacks
        log_url = None
    log_url = log_url or _ui_url(dag_id, run_id, task_id, map_index, try_number)

    where = f"{dag_id}.{task_id}" + (f"[{map_index}]" if map_index is not None and map_index >= 0 else "")
    return {
        "event": "task_failed",
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "try_number": try_number,
        "map_index": map_index,
        "state": str(state),
        "exception_type": exception_type,
        "cause_type": cause_type,
        "message": text,
        "log_url": log_url,
        # Chat webhooks (Slack, Mattermost, Teams workflows) display "text".
        "text": f"PrivateTune: task {where} failed (run {run_id}, try {try_number}): "
        f"{exception_type or 'error'}" + (f" ({cause_type})" if cause_type else ""),
    }


# ---------------------------------------------------------------- connections


def _connection(conn_id: str):
    """The Airflow connection, or None when Airflow, the connection or the supervisor is not there."""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception as exc:
        log.debug("Airflow connection %s not available (%s)", conn_id, type(exc).__name__)
        return None


def webhook_url(
    host: str | None, schema: str | None = None, port: int | None = None, endpoint: str | None = None
) -> str | None:
    """URL from an HTTP connection's parts, as the HTTP provider builds it: a host with a scheme is used
    as is, else schema (default https) + host; then port and the extra's endpoint."""
    if not host:
        return None
    if "://" in host:
        base = host.rstrip("/")
    else:
        base = f"{schema or 'https'}://{host}"
        if port:
            base += f":{port}"
    if endpoint:
        base += "/" + endpoint.lstrip("/")
    return base


def _webhook_target(cfg: NotifyConfig) -> tuple[str | None, dict[str, str]]:
    conn = _connection(cfg.webhook_conn_id)
    if conn is not None and conn.host:
        extra = conn.extra_dejson or {}
        headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
        return webhook_url(conn.host, conn.schema, conn.port, extra.get("endpoint")), headers
    return os.environ.get(WEBHOOK_URL_ENV) or None, {}


def _smtp_settings(cfg: NotifyConfig) -> dict[str, Any] | None:
    conn = _connection(cfg.smtp_conn_id)
    if conn is not None and conn.host:
        extra = conn.extra_dejson or {}
        port = int(conn.port or 25)
        return {
            "host": conn.host,
            "port": port,
            "login": conn.login or None,
            "password": conn.password or None,
            "ssl": bool(extra.get("ssl", port == 465)),
            "starttls": not extra.get("disable_tls", False),
            "from_email": extra.get("from_email"),
        }
    host = os.environ.get(SMTP_HOST_ENV)
    if not host:
        return None
    return {
        "host": host,
        "port": int(os.environ.get(SMTP_PORT_ENV) or 25),
        "login": None,
        "password": None,
        "ssl": False,
        "starttls": True,
        "from_email": None,
    }


# ---------------------------------------------------------------- delivery


def send_webhook(
    message: Mapping[str, Any], url: str, timeout_s: float, headers: Mapping[str, str] | None = None
) -> int:
    """POST the message as JSON; returns the HTTP status. Raises on network or HTTP errors."""
    body = json.dumps(message, default=str).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


def send_email(message: Mapping[str, Any], settings: Mapping[str, Any], to: list[str], timeout_s: float) -> None:
    """Send the message as a plain-text email (the JSON attached as the body). Raises on SMTP errors."""
    mail = EmailMessage()
    mail["Subject"] = one_line(message.get("text") or "PrivateTune task failed", 200)
    mail["From"] = settings.get("from_email") or (
        settings.get("login") if "@" in str(settings.get("login")) else f"privatetune@{socket.gethostname()}"
    )
    mail["To"] = ", ".join(to)
    mail.set_content(json.dumps(message, indent=2, default=str) + "\n")
    smtp_cls = smtplib.SMTP_SSL if settings.get("ssl") else smtplib.SMTP
    with smtp_cls(settings["host"], int(settings["port"]), timeout=timeout_s) as smtp:
        if not settings.get("ssl") and settings.get("starttls"):
            smtp.ehlo()
            if smtp.has_extn("starttls"):  # plain local relays (and test servers) do not offer it
                smtp.starttls()
                smtp.ehlo()
        if settings.get("login") and settings.get("password"):
            smtp.login(settings["login"], settings["password"])
        smtp.send_message(mail)


def send(message: Mapping[str, Any], cfg: NotifyConfig) -> bool:
    """Deliver on the configured channel. True when delivered; False when off, unconfigured or failed.

    Never raises: it runs in a failure callback, and a broken receiver must not hide why the task
    failed. URLs and credentials are never logged (webhook URLs often hold a token)."""
    try:
        if cfg.channel == "none":
            return False
        if cfg.channel == "webhook":
            url, headers = _webhook_target(cfg)
            if not url:
                log.warning(
                    "notify: channel webhook but no URL: create the Airflow connection '%s' (HTTP) or set %s",
                    cfg.webhook_conn_id,
                    WEBHOOK_URL_ENV,
                )
                return False
            status = send_webhook(message, url, cfg.timeout_s, headers)
            log.info("notify: webhook delivered (HTTP %s)", status)
            return True
        if cfg.channel == "email":
            settings = _smtp_settings(cfg)
            if not settings or not cfg.email_to:
                log.warning(
                    "notify: channel email but no SMTP server or recipients: create the Airflow connection "
                    "'%s' or set %s, and list notify.email_to",
                    cfg.smtp_conn_id,
                    SMTP_HOST_ENV,
                )
                return False
            send_email(message, settings, list(cfg.email_to), cfg.timeout_s)
            log.info("notify: email sent to %d recipient(s)", len(cfg.email_to))
            return True
        log.warning("notify: unknown channel %r", cfg.channel)
        return False
    except Exception as exc:
        # One line, no traceback: an HTTPError's or SMTP reply's text is the receiver's, not ours.
        log.warning(
            "notify: %s delivery failed (%s: %s); the task failure stands as reported by Airflow",
            cfg.channel,
            type(exc).__name__,
            one_line(str(exc), 200),
        )
        return False


def on_failure(context: Mapping[str, Any]) -> None:
    """The DAG's on_failure_callback: load the pipeline config and notify when a channel is set.

    An unreadable config is logged and the callback returns: the task has already failed for its own
    reason, which Airflow reports either way."""
    try:
        from tasks.config import load_config

        cfg = load_config().notify
    except Exception as exc:
        log.warning(
            "notify: pipeline config unreadable (%s: %s); no notification sent",
            type(exc).__name__,
            one_line(str(exc), 200),
        )
        return
    if cfg.channel == "none":
        return
    try:
        message = failure_message(context)
    except Exception as exc:  # an unexpected context shape must not break the callback
        log.warning("notify: could not summarise the failure (%s)", type(exc).__name__)
        return
    send(message, cfg)
