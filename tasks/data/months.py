"""Months: the landing partitions a monthly run owns, its run key, and the order months must go in.

Each run of `monthly_refinetune` owns one month, named by its logical date ("2026-03"), and works
under the run key `monthly-2026-03`; its dataset version is tagged with it (tasks.data.version).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from tasks.config import Paths
from tasks.data.ingest import PARTITION_RE
from tasks.data.version import tag_for, tags_with_prefix

log = logging.getLogger(__name__)

MONTH_RE = PARTITION_RE  # a month is a landing partition name
RUN_KEY_PREFIX = "monthly-"


class PreviousMonthMissing(RuntimeError):
    """An earlier month has landing data but no dataset version: this month cannot build on it."""


def month_of(logical_date) -> str:
    """The month a run owns: its logical date's year and month ("2026-03")."""
    if isinstance(logical_date, str):
        logical_date = datetime.fromisoformat(logical_date.replace("Z", "+00:00"))
    return f"{logical_date.year:04d}-{logical_date.month:02d}"


def run_key(month: str) -> str:
    if not MONTH_RE.match(month):
        raise ValueError(f"month {month!r}: expected YYYY-MM")
    return f"{RUN_KEY_PREFIX}{month}"


def version_tag(month: str) -> str:
    return tag_for(run_key(month))


def month_tags(registry_dir: Path) -> dict[str, str]:
    """month → commit of every monthly dataset version in the registry."""
    return {m: rev for m, rev in tags_with_prefix(registry_dir, RUN_KEY_PREFIX).items() if MONTH_RE.match(m)}


def previous_version(registry_dir: Path, month: str) -> dict | None:
    """The newest monthly dataset version of a month before `month` (None: this is the first month)."""
    earlier = {m: rev for m, rev in month_tags(registry_dir).items() if m < month}
    if not earlier:
        return None
    prev = max(earlier)
    return {"month": prev, "rev": earlier[prev], "tag": version_tag(prev)}


def previous_month_ready(previous_run: dict | None) -> bool:
    """May this month start? Not while the run of an earlier month is still going (a backfill with
    --max-active-runs above 1 would start several). Whether the earlier months left a dataset version is
    `check_earlier_months`' question, asked by prepare. `previous_run`: {"state", "logical_date"} or None."""
    if previous_run is None or previous_run.get("logical_date") is None:
        return True
    if previous_run["state"] not in ("success", "failed"):
        log.info("waiting: the run of %s is %s", month_of(previous_run["logical_date"]), previous_run["state"])
        return False
    return True


def landed_months(landing: Path, *, up_to: str | None = None) -> list[str]:
    """The month partitions under landing/, oldest first (at most `up_to`)."""
    if not landing.is_dir():
        return []
    return sorted(
        p.name
        for p in landing.iterdir()
        if p.is_dir() and MONTH_RE.match(p.name) and (up_to is None or p.name <= up_to)
    )


def unversioned_earlier_months(month: str, paths: Paths | None = None) -> list[str]:
    """Months before `month` that have a landing partition but no dataset version: building `month` now
    would leave their rows out of every later version. (A month that delivered nothing blocks nothing.)"""
    paths = paths or Paths()
    versioned = month_tags(paths.datasets)
    return [m for m in landed_months(paths.landing) if m < month and m not in versioned]


def check_earlier_months(month: str, paths: Paths | None = None) -> None:
    missing = unversioned_earlier_months(month, paths)
    if missing:
        raise PreviousMonthMissing(
            f"landing partitions {', '.join(missing)} have no dataset version yet, and {month} would be built "
            f"without their rows: backfill them first (airflow backfill create --dag-id monthly_refinetune "
            f"--from-date {missing[0]}-01 --to-date {month}-01 --max-active-runs 1), or move a partition that "
            f"must not be trained on out of landing/"
        )
