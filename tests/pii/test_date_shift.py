"""The per-subject date shift (mask.date_shift): consistent per subject, keyed like the pseudonyms
(the key from the environment or an Airflow connection), intervals kept, original dates gone, and a
record without a subject masked with a placeholder."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tasks.config import MASK_PROFILES, REPO_ROOT, MaskConfig
from tasks.data.mask import date_shift_option
from tasks.pii import DateShift, mask_records, offset_days, resolve_key, shift_date

SAFE_HARBOR = REPO_ROOT / MASK_PROFILES["safe_harbor"]
MINIMAL = REPO_ROOT / MASK_PROFILES["minimal"]
KEY = b"test-key-0123456789abcdef0123456789"
SHIFT = DateShift(("MEMBER_ID",), 365)
US_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4})\b")


def _dates(text: str) -> list[dt.date]:
    return [dt.date(int(y), int(m), int(d)) for m, d, y in US_DATE.findall(text)]


def _mask(texts: list[str], key: bytes = KEY, path=SAFE_HARBOR, shift: DateShift | None = SHIFT):
    return list(mask_records(texts, key=key, recognizers_path=path, workers=1, date_shift=shift))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("03/14/2024", "03/24/2024"),
        ("3/4/24", "3/14/24"),
        ("2024-03-14", "2024-03-24"),
        ("2024-03-14T10:30", "2024-03-24T10:30"),
        ("14.03.2024", "24.03.2024"),
        ("20/12/2023", "30/12/2023"),  # day first: 20 is no month
        ("March 4, 2024", "March 14, 2024"),
        ("Dec. 28th 2023", "Jan. 7th 2024"),
        ("4th of March 2024", "14th of March 2024"),
        ("4 MAR 2024", "14 MAR 2024"),
        ("June 3", "June 13"),
        ("DOB: 03/14/1980", "DOB: 03/24/1980"),  # a label inside the finding stays
    ],
)
def test_shift_date_formats(value, expected):
    assert shift_date(value, 10) == expected
    assert shift_date(expected, -10) == value


def test_unreadable_dates_are_not_shifted():
    assert shift_date("May 2020", 10) is None and shift_date("02/30/2024", 10) is None


def test_offset_is_keyed_per_subject_and_never_zero():
    same = {offset_days("MEMBER_ID", v, KEY, 365) for v in ("MBR-12345678", "mbr 12345678", "MBR#12345678")}
    assert len(same) == 1  # the pseudonym's normal form: spacing and case do not count
    subjects = {offset_days("MEMBER_ID", f"MBR-{n:08d}", KEY, 365) for n in range(50)}
    assert len(subjects) > 40 and 0 not in subjects and all(-365 <= d <= 365 for d in subjects)
    keys = [offset_days("MEMBER_ID", "MBR-12345678", k, 365) for k in (KEY, b"another-key", b"third-key")]
    assert len(set(keys)) == 3
    assert all(-7 <= offset_days("MEMBER_ID", f"MBR-{n:08d}", KEY, 7) <= 7 for n in range(50))


RECORDS = [
    "Member MBR-12345678 was admitted 03/14/2024 and discharged 03/21/2024.",
    "Follow-up for MBR-12345678: seen on 04/02/2024 after discharge.",
    "Member MBR-87654321 was admitted 03/14/2024 and discharged 03/16/2024.",
    "A patient was admitted 03/14/2024.",  # no subject in the record
]


def test_dates_shift_consistently_per_subject_with_intervals_kept():
    masked = _mask(RECORDS)
    a1, a2, b, none = (m.text for m in masked)
    for text in (a1, a2, b, none):
        assert "03/14/2024" not in text and "03/21/2024" not in text and "04/02/2024" not in text
    # One subject: one offset across its records, so the stay and the follow-up gap survive.
    (adm, dis), (seen,) = _dates(a1), _dates(a2)
    offset = (adm - dt.date(2024, 3, 14)).days
    assert offset != 0 and (dis - adm).days == 7 and (seen - adm).days == 19
    assert (seen - dt.date(2024, 4, 2)).days == offset
    # Another subject: its own offset, its own interval.
    adm_b, dis_b = _dates(b)
    assert (adm_b - dt.date(2024, 3, 14)).days != offset and (dis_b - adm_b).days == 2
    # No subject: a typed placeholder, as without the option.
    assert re.search(r"admitted <DATE_[0-9a-f]{8}>", none) and not _dates(none)
    # A shifted date is no residual; the member id is still pseudonymised.
    assert not any(m.residual for m in masked) and all("MBR-" not in m.text for m in masked)


def test_the_offset_follows_the_key_from_the_environment_or_a_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv("PFT_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_PFT_PSEUDONYM_KEY", "generic://:conn-secret@")
    from_conn = _mask(RECORDS[:1], key=resolve_key())[0].text
    monkeypatch.setenv("PFT_PSEUDONYM_KEY", "env-secret")  # the env var wins, as for the pseudonyms
    from_env = _mask(RECORDS[:1], key=resolve_key())[0].text
    assert _mask(RECORDS[:1], key=b"env-secret")[0].text == from_env  # the same key: the same shift
    (c_adm, c_dis), (e_adm, e_dis) = _dates(from_conn), _dates(from_env)
    assert c_adm != e_adm and (c_dis - c_adm).days == (e_dis - e_adm).days == 7


def test_birth_dates_shift_too_and_the_option_is_off_by_default():
    text = "Member MBR-12345678, DOB: 03/14/1980, admitted 03/14/2024."
    (shifted,) = _mask([text], path=MINIMAL)  # minimal masks birth dates only: the label stays
    dob, kept = _dates(shifted.text)
    assert kept == dt.date(2024, 3, 14)  # minimal keeps other dates
    assert shifted.text.startswith("Member <MEMBER_ID_") and "DOB: " in shifted.text and dob.year in (1979, 1980, 1981)
    (both,) = _mask([text])
    born, adm = _dates(both.text)
    assert (adm - born).days == (dt.date(2024, 3, 14) - dt.date(1980, 3, 14)).days  # the age survives
    (plain,) = _mask([text], shift=None)
    assert not _dates(plain.text) and "<DATE_" in plain.text
    assert date_shift_option(MaskConfig()) is None
    assert date_shift_option(MaskConfig(date_shift=True, date_shift_max_days=30)) == DateShift(("MEMBER_ID",), 30)
