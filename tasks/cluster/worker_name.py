"""Airflow's `core.hostname_callable` for the one-machine cluster's Celery workers.

Both workers run on one host, so the host name alone cannot tell which one ran a task instance. Each
worker's environment names it (`cpu-worker`, `gpu-worker`); on separate hosts, leave the callable
unset and Airflow records the host's FQDN as usual.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    return os.environ.get("PFT_WORKER_NAME") or socket.getfqdn()
