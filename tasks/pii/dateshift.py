"""A consistent per-subject date shift: dates move, intervals between them survive.

With `mask.date_shift` on, a date finding (DATE, DATE_OF_BIRTH) in a record about a subject is
moved by a number of days derived from a keyed HMAC of that subject's id, the same key as the
pseudonyms: every date of one member moves by the same offset, in every record, shard and run, so
"admitted 03/02/2024, discharged 03/09/2024" still reads as a 7-day stay while neither date is
the real one. Another key gives another offset. The shifted date keeps the written format; the
year may change with it (Safe Harbor's exception for years does not matter once the date is gone).

A record's subject is its first finding of a subject type (mask.date_shift_subject: MEMBER_ID).
A record with no subject, or a date this module cannot read (a month and year alone), gets the
profile's own operator instead: a typed placeholder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass

from tasks.pii.pseudonyms import normalise

DATE_TYPES = ("DATE", "DATE_OF_BIRTH")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")  # fmt: skip
_MONTH = r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DAY = r"(?P<day>\d{1,2})(?P<suffix>st|nd|rd|th)?"
# The date inside a finding (a finding may hold more, e.g. a label); each form keeps its layout.
_FORMS = (
    ("ymd", re.compile(r"(?<!\d)(?P<y>\d{4})(?P<s1>[/.-])(?P<m>\d{1,2})(?P<s2>[/.-])(?P<d>\d{1,2})(?!\d)")),
    ("numeric", re.compile(r"(?<!\d)(?P<a>\d{1,2})(?P<s1>[/.-])(?P<b>\d{1,2})(?P<s2>[/.-])(?P<y>\d{4}|\d{2})(?!\d)")),
    ("mdy", re.compile(rf"(?i)\b{_MONTH}(?P<dot>\.?)(?P<sp>\s+){_DAY}(?P<comma>,?\s+)(?P<y>\d{{4}})\b")),
    ("dmy", re.compile(rf"(?i)\b{_DAY}(?P<of>\s+(?:of\s+)?){_MONTH}(?P<dot>\.?)(?P<comma>,?\s+)(?P<y>\d{{4}})\b")),
    ("md", re.compile(rf"(?i)\b{_MONTH}(?P<dot>\.?)(?P<sp>\s+){_DAY}\b")),
    ("dm", re.compile(rf"(?i)\b{_DAY}(?P<of>\s+(?:of\s+)?){_MONTH}\b(?P<dot>\.?)")),
)
_NO_YEAR = 2000  # a leap year: "Feb 29" without a year still parses


@dataclass(frozen=True)
class DateShift:
    """The option as the masker gets it: which entity types name a record's subject, the largest shift."""

    subject_types: tuple[str, ...] = ("MEMBER_ID",)
    max_days: int = 365


def offset_days(subject_type: str, subject: str, key: bytes, max_days: int) -> int:
    """The subject's shift in days, in [-max_days, -1] or [1, max_days]: a keyed HMAC of the subject's
    normalised id (never 0, so no date stays where it was)."""
    message = f"DATE_SHIFT\x1f{subject_type}\x1f{normalise(subject_type, subject)}".encode()
    n = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:8], "big") % (2 * max_days)
    return n - max_days if n < max_days else n - max_days + 1


def _month_name(original: str, month: int) -> str:
    """Month `month` written as `original` was: full or three letters, in its casing."""
    full = _MONTHS[month - 1]
    name = full if len(original) > 4 or original.lower() in ("june", "july") else full[:3]
    if original.isupper():
        return name.upper()
    return name.capitalize() if original[:1].isupper() else name


def _pad(first: str, second: str) -> int:
    """The width to write a day and month in: two digits where the input did ("03/21", "12/25"), else as
    needed ("3/14")."""
    return 2 if (len(first) == len(second) == 2) or "0" in (first[:1], second[:1]) else 1


def _year(y: str) -> int:
    return int(y) if len(y) == 4 else 2000 + int(y) if int(y) < 50 else 1900 + int(y)


def _shift_match(kind: str, m: re.Match, days: int) -> str | None:
    """The matched date moved by `days`, in its own layout; None when it is no calendar date."""
    g = m.groupdict()
    try:
        if kind == "ymd":
            d, w = dt.date(int(g["y"]), int(g["m"]), int(g["d"])) + dt.timedelta(days), _pad(g["m"], g["d"])
            return f"{d.year}{g['s1']}{d.month:0{w}d}{g['s2']}{d.day:0{w}d}"
        if kind == "numeric":
            a, b = int(g["a"]), int(g["b"])
            day_first = a > 12 or g["s1"] == "."  # 13/04/2024 and 03.04.2024 are day first; else US order
            month, day = (b, a) if day_first else (a, b)
            d = dt.date(_year(g["y"]), month, day) + dt.timedelta(days)
            first, second = (d.day, d.month) if day_first else (d.month, d.day)
            year = str(d.year) if len(g["y"]) == 4 else f"{d.year % 100:02d}"
            w = _pad(g["a"], g["b"])
            return f"{first:0{w}d}{g['s1']}{second:0{w}d}{g['s2']}{year}"
        month = next(i for i, name in enumerate(_MONTHS, 1) if name.startswith(g["month"].lower()[:3]))
        year = int(g["y"]) if g.get("y") else _NO_YEAR
        d = dt.date(year, month, int(g["day"])) + dt.timedelta(days)
    except ValueError:
        return None
    name, day = _month_name(g["month"], d.month) + g["dot"], f"{d.day}{_suffix(d.day) if g['suffix'] else ''}"
    tail = f"{g['comma']}{d.year}" if g.get("y") else ""
    return f"{name}{g['sp']}{day}{tail}" if kind in ("mdy", "md") else f"{day}{g['of']}{name}{tail}"


def _suffix(day: int) -> str:
    return "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def shift_date(value: str, days: int) -> str | None:
    """`value` with its date moved by `days` (the rest of the finding, e.g. a label, kept);
    None when no readable date is in it, so the caller masks it the usual way."""
    for kind, pattern in _FORMS:
        m = pattern.search(value)
        if m:
            shifted = _shift_match(kind, m, days)
            return None if shifted is None else value[: m.start()] + shifted + value[m.end() :]
    return None
