"""Invisible characters: one definition shared by ingest, the masking stage and the serving output filter.

A zero-width space or a bidi override inside "MBR-12345678" hides it from every regex and from the
NER, yet the text reads the same. So before any text is checked for personal data it loses:

- format characters (Unicode category Cf: zero-width spaces and joiners, bidi marks, embeddings,
  overrides and isolates, soft hyphen, word joiner, BOM, tag characters, ...),
- the other default-ignorable code points (variation selectors, Hangul fillers, the combining
  grapheme joiner, ...), which render as nothing too,
- control characters (Cc) other than tab, line feed and carriage return;

and every other whitespace character (no-break and typographic spaces, U+2028/U+2029 line and
paragraph separators, vertical tab, form feed, ...) becomes a plain space, so that a pattern's
"\\s" and a name's "Maria Gonzalez" match whatever space sat between the parts.

Only removals shift positions; replacements are one character for one, so `kept_offsets` maps
positions in the cleaned text back to the original (the masker reports spans in input offsets).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside Cc/Cf: the reserved ones
# included, since a later Unicode version may assign them and they already render as nothing.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)
# Cc, Cf and non-ASCII whitespace occur only in these planes (BMP, SMP, SSP): scanning them is
# a fifth of the cost of scanning every code point, once per process.
_SCANNED = (range(0x20000), range(0xE0000, 0xE1000))
_KEPT = frozenset("\t\n\r ")


class Cleaned(NamedTuple):
    text: str
    removed: int  # invisible characters dropped
    spaces: int  # other whitespace turned into " "


def _char_class(code_points: list[int]) -> str:
    """A regex character class for sorted code points, as ranges."""
    parts, start, prev = [], None, None
    for cp in code_points + [-2]:
        if start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(re.escape(chr(start)) + ("" if prev == start else "-" + re.escape(chr(prev))))
        start = prev = cp
    return "[" + "".join(parts) + "]"


@lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    ignorable = {cp for lo, hi in _IGNORABLE_RANGES for cp in range(lo, hi + 1)}
    invisible, spaces = [], []
    for block in _SCANNED:
        for cp in block:
            c = chr(cp)
            if c in _KEPT:
                continue
            if c.isspace():  # before Cc: vertical tab, form feed, \x1c-\x1f and \x85 are spaces
                spaces.append(cp)
            elif cp in ignorable or unicodedata.category(c) in ("Cc", "Cf"):
                invisible.append(cp)
    return re.compile(_char_class(invisible)), re.compile(_char_class(spaces))


def clean(text: str) -> Cleaned:
    """Drop invisible characters and turn other whitespace into " " (tab and line breaks stay)."""
    invisible, spaces = _patterns()
    text, removed = invisible.subn("", text)
    text, replaced = spaces.subn(" ", text)
    return Cleaned(text, removed, replaced)


def kept_offsets(text: str) -> list[int]:
    """For each character `clean(text)` keeps, its index in `text`; then len(text) (an end offset)."""
    invisible, _ = _patterns()
    dropped = {m.start() for m in invisible.finditer(text)}
    return [i for i in range(len(text)) if i not in dropped] + [len(text)]


def shown(name: str) -> str:
    """A file name as logs and notes print it: one line, nothing hidden, nothing to mistake.

    Control and invisible characters and other non-printable ones are escaped as Python would
    ("\\n", "\\u202e"), bytes that were not UTF-8 (surrogate-escaped by the OS layer) as "\\xe9",
    and a backslash as "\\\\", so a name cannot forge a log line or pass for another name.
    """
    out = []
    for c in name:
        if "\udc80" <= c <= "\udcff":  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(repr(c)[1:-1] if c in "\t\n\r" or ord(c) < 0x100 else c.encode("unicode_escape").decode())
    return "".join(out)
