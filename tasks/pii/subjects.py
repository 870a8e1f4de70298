"""The privacy subject of a record: the person it is about, named the way the masked data names them.

Raw zone: `subject_pseudonym` turns a record's raw subject field (say `member_id`) into the keyed
placeholder the masker gives the same value in the text ("<MEMBER_ID_1a2b3c4d>"), so the field and
the text agree, and the raw id never leaves the raw zone. Clean zone: `subject_in_text` finds that
placeholder in a masked text, for a record that came without the field.
"""

from __future__ import annotations

import re

from tasks.pii.pseudonyms import DIGEST_CHARS, pseudonym


def subject_pseudonym(entity_type: str, value: object, key: bytes) -> str | None:
    """The keyed placeholder of a raw subject value; None for a missing or blank one (no subject)."""
    if value is None or not str(value).strip():
        return None
    return pseudonym(entity_type, str(value), key)


def subject_in_text(text: str, entity_type: str) -> str | None:
    """The first `<ENTITY_xxxxxxxx>` placeholder of `entity_type` in a masked text, else None. A record that
    names several subjects is counted for the first: the unit is a partition of the records."""
    found = re.search(rf"<{re.escape(entity_type)}_[0-9a-f]{{{DIGEST_CHARS}}}>", text)
    return found.group(0) if found else None


def audit_unit(row: dict, subject_entity: str | None) -> str:
    """The key a row is held out by: its subject (field, else the first `subject_entity` placeholder in its
    text) when `subject_entity` is given, else, and for a row naming no subject, its record_id."""
    if subject_entity:
        subject = row.get("subject") or subject_in_text(str(row["text"]), subject_entity)
        if subject:
            return str(subject)
    return str(row["record_id"])
