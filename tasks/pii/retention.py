"""Fact retention: how much of the domain's text masking leaves intact.

Masking must remove people, not the facts the model is trained to learn (plan names, CPT codes,
amounts, form numbers, deadlines). fact_retention counts every occurrence of each fact string in
the raw texts and how many of them are still there, verbatim, in the masked texts. Counts only:
no text leaves this function.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple


class FactRetention(NamedTuple):
    """`present`: fact-string occurrences in the raw texts; `kept`: those still in the masked texts;
    `lost`: per fact string (index into the strings given), occurrences lost."""

    present: int
    kept: int
    lost: Counter

    @property
    def share(self) -> float | None:
        return self.kept / self.present if self.present else None


def fact_retention(raw_texts: Iterable[str], masked_texts: Iterable[str], fact_strings: list[str]) -> FactRetention:
    """Occurrences of each fact string in each raw text, and how many the masked text still holds
    (at most as many as the raw text had: a masked text cannot gain facts)."""
    present = kept = 0
    lost: Counter = Counter()
    for raw, masked in zip(raw_texts, masked_texts, strict=True):
        for i, fact in enumerate(fact_strings):
            n = raw.count(fact)
            if not n:
                continue
            k = min(n, masked.count(fact))
            present, kept = present + n, kept + k
            if k < n:
                lost[i] += n - k
    return FactRetention(present, kept, lost)
