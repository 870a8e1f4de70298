"""The pseudonymisation (HMAC) key: from an environment variable, else an Airflow connection.

The key is a secret: it is never logged, returned in a result or written anywhere.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class MissingKeyError(RuntimeError):
    """No pseudonymisation key is configured."""


def resolve_key(env_var: str = "PFT_PSEUDONYM_KEY", conn_id: str = "pft_pseudonym_key") -> bytes:
    """The HMAC key: env var first, then the password of an Airflow connection.

    The key is a secret: it is never logged, returned or written anywhere.
    """
    value = os.environ.get(env_var)
    if value:
        return value.encode("utf-8")
    password = _airflow_connection_password(conn_id)
    if password:
        return password.encode("utf-8")
    raise MissingKeyError(
        f"no pseudonymisation key: set the environment variable {env_var} "
        f"(e.g. `export {env_var}=$(python -c 'import secrets; print(secrets.token_hex(32))')`) "
        f"or create an Airflow connection '{conn_id}' with the key as its password "
        f"(`airflow connections add {conn_id} --conn-type generic --conn-password ...`). "
        "Keep the same key across runs so placeholders stay consistent."
    )


def _airflow_connection_password(conn_id: str) -> str | None:
    # Imported here: masking must work (CLI, tests, a bare container) without Airflow configured.
    # The one import of Airflow below tasks.airflow (an ignore_imports entry in pyproject.toml).
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id).password or None
    except Exception as exc:  # not installed, not configured, connection missing: all mean "no key here"
        log.debug("Airflow connection %s not available (%s)", conn_id, type(exc).__name__)
        return None
