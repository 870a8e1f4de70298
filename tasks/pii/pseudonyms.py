"""Keyed pseudonyms and character masks: what a masked value becomes.

"<PERSON_1a2b3c4d>" is a truncated HMAC of the entity type and the value's normalised form, so
the same person, phone or id gets the same placeholder across records and runs with one key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

DIGEST_CHARS = 8
# What masking leaves behind: "<PERSON_1a2b3c4d>" (pseudonym) and "<PERSON>" (replace). The
# residual scan ignores findings that touch one (the hex digest holds digits).
PLACEHOLDER = re.compile(rf"<[A-Z][A-Z0-9_]*?(?:_[0-9a-f]{{{DIGEST_CHARS}}})?>")


def normalise(entity_type: str, value: str) -> str:
    """The form of a value that decides its pseudonym: case, spacing and punctuation do not count.

    "(312) 555-0147" and "312-555-0147" are one phone; "Maria  Gonzalez" and "maria gonzalez"
    one person.
    """
    folded = unicodedata.normalize("NFKC", value).casefold()
    compact = re.sub(r"[\W_]+", "", folded)
    if entity_type == "PHONE_NUMBER" and len(compact) == 11 and compact.startswith("1"):
        compact = compact[1:]  # +1 country code
    return compact or folded.strip()


def pseudonym(entity_type: str, value: str, key: bytes) -> str:
    """Typed, keyed placeholder: "<PERSON_1a2b3c4d>" (truncated HMAC-SHA256 of type and value)."""
    message = f"{entity_type}\x1f{normalise(entity_type, value)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).hexdigest()[:DIGEST_CHARS]
    return f"<{entity_type}_{digest}>"


def mask_chars(value: str, keep_last: int = 4, masking_char: str = "*") -> str:
    """Hide every letter and digit but the last `keep_last`; separators stay, so the shape reads.

    "219-09-9999" → "***-**-9999", "4111 1111 1111 1111" → "**** **** **** 1111".
    """
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    hidden = set(positions[: max(0, len(positions) - keep_last)])
    return "".join(masking_char if i in hidden else c for i, c in enumerate(value))
