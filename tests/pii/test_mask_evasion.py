"""Masking against evasion (issue 12, finding 3): invisible characters inside a value and separator
variants of SSNs and ids do not get personal data past the masker or the serving output filter,
and domain facts still survive."""

from __future__ import annotations

import re

import pytest

from tasks.config import REPO_ROOT
from tasks.pii import mask_records, mask_texts, pseudonym

RECOGNIZERS = REPO_ROOT / "include" / "presidio" / "recognizers.yaml"
KEY = b"test-key-0123456789abcdef0123456789"
PLACEHOLDER = re.compile(r"<[A-Z_]+_[0-9a-f]{8}>")

# (entity type, text, the value in it): every kind the stage masks, in the formats of
# tasks/demo/synth.py's PiiFactory and the masking tests.
KINDS = [
    ("PERSON", "Member: Maria Gonzalez called about her claim.", "Maria Gonzalez"),
    ("EMAIL_ADDRESS", "Questions? Write to james.whitaker@example.com today.", "james.whitaker@example.com"),
    ("PHONE_NUMBER", "Please call (312) 555-0147 after noon.", "(312) 555-0147"),
    ("PHONE_NUMBER", "Please call 312-555-0147 after noon.", "312-555-0147"),
    ("US_SSN", "Her SSN 219-09-9999 is on file.", "219-09-9999"),
    ("CREDIT_CARD", "She paid with card 4111 1111 1111 1111 yesterday.", "4111 1111 1111 1111"),
    ("IBAN_CODE", "Refund to IBAN GB82 WEST 1234 5698 7654 32 please.", "GB82 WEST 1234 5698 7654 32"),
    ("IP_ADDRESS", "Portal login from 192.168.14.22 at noon.", "192.168.14.22"),
    ("URL", "Details at https://portal.example.com/claims/77 for the member.", "https://portal.example.com/claims/77"),
    (
        "STREET_ADDRESS",
        "We mailed the card to 1423 Maple Avenue, Springfield, IL 62704 last week.",
        "1423 Maple Avenue, Springfield, IL 62704",
    ),
    ("DATE_OF_BIRTH", "Member DOB: 1961-04-12 confirmed.", "1961-04-12"),
    ("DATE_OF_BIRTH", "She was born 04/12/1961 in the city.", "04/12/1961"),
    ("MEMBER_ID", "Member ID MBR-48213377 is active.", "MBR-48213377"),
    ("CLAIM_ID", "Claim CLM-2026-004821 pended for review.", "CLM-2026-004821"),
    ("POLICY_NUMBER", "Your policy POL-HX-482133 is active.", "POL-HX-482133"),
    ("MEDICAL_RECORD_NUMBER", "The medical record MRN-4821337 was updated.", "MRN-4821337"),
]
# Zero-width, joiners, bidi embeddings/overrides/isolates/marks, soft hyphen, word joiner, BOM,
# Mongolian vowel separator, a tag character, a variation selector, combining grapheme joiner.
INVISIBLE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202d",
    "\u202e",
    "\u202c",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u00ad",
    "\u2060",
    "\u2061",
    "\ufeff",
    "\u180e",
    "\U000e0020",
    "\ufe0f",
    "\u034f",
]
ODD_SPACES = ["\u00a0", "\u2007", "\u2009", "\u202f", "\u205f", "\u3000", "\u2028"]
DIGIT_TYPES = {
    "PHONE_NUMBER",
    "US_SSN",
    "CREDIT_CARD",
    "MEMBER_ID",
    "CLAIM_ID",
    "POLICY_NUMBER",
    "MEDICAL_RECORD_NUMBER",
}


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _hide(value: str, char: str) -> str:
    """`char` after the first character, in the middle, and around the last part (bidi style)."""
    mid = len(value) // 2
    return value[:1] + char + value[1:mid] + char + value[mid:-2] + char + value[-2:] + "\u202c"


def _masked(texts: list[str]) -> list[str]:
    return [t for t, _ in mask_texts(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=1)]


def _assert_gone(out: str, etype: str, value: str) -> None:
    assert value not in out, f"{etype} survived"
    assert f"<{etype}_" in out, f"no {etype} placeholder"
    if etype in DIGIT_TYPES:
        assert _digits(value) not in _digits(PLACEHOLDER.sub(" ", out)), f"{etype} digits survived"


@pytest.mark.parametrize("etype, text, value", KINDS, ids=[f"{k[0]}-{i}" for i, k in enumerate(KINDS)])
def test_invisible_characters_inside_every_pii_kind_are_masked(etype, text, value):
    (clean,) = _masked([text])
    _assert_gone(clean, etype, value)
    hidden = [text.replace(value, _hide(value, char)) for char in INVISIBLE]
    for char, out, _hidden_text in zip(INVISIBLE, _masked(hidden), hidden):
        assert _hide(value, char) not in out
        assert out == clean, f"U+{ord(char):04X} inside {etype} changed the masking"


@pytest.mark.parametrize(
    "etype, text, value", [k for k in KINDS if " " in k[2]], ids=[k[0] for k in KINDS if " " in k[2]]
)
def test_odd_spaces_inside_a_value_are_masked_like_spaces(etype, text, value):
    (clean,) = _masked([text])
    variants = [text.replace(value, value.replace(" ", space)) for space in ODD_SPACES]
    for space, out in zip(ODD_SPACES, _masked(variants)):
        assert out == clean, f"U+{ord(space):04X} inside {etype} changed the masking"


def test_spans_still_point_into_the_input_text():
    text = "Member ID M\u200bBR-4821\u202e3377\u202c is active."
    (m,) = mask_records([text], key=KEY, recognizers_path=RECOGNIZERS, workers=1, residual=True)
    assert m.text == f"Member ID {pseudonym('MEMBER_ID', 'MBR-48213377', KEY)} is active."
    [(etype, start, end)] = m.spans
    assert etype == "MEMBER_ID" and text[start:end] == "M\u200bBR-4821\u202e3377"
    assert m.residual == {}


SEPARATOR_VARIANTS = [
    ("US_SSN", "SSN 123 45 6789 on file.", "123 45 6789"),
    ("US_SSN", "SSN 123456789 on file.", "123456789"),
    ("US_SSN", "SSN: 219099999", "219099999"),
    ("US_SSN", "SSN#219099999 was given.", "219099999"),
    ("US_SSN", "Her social security number is 219099999.", "219099999"),
    ("US_SSN", "Social Security No. 123456789 was verified.", "123456789"),
    ("US_SSN", "ssn 219 09 9999", "219 09 9999"),
    ("US_SSN", "SSN 219.09.9999 on file.", "219.09.9999"),
    ("US_SSN", "SSN 219\u201309\u20139999 on file.", "219\u201309\u20139999"),
    ("US_SSN", "Her SSN is 219 09 9999 and was checked.", "219 09 9999"),
    ("MEMBER_ID", "ID MBR12345678 on file.", "MBR12345678"),
    ("MEMBER_ID", "ID MBR 12345678 on file.", "MBR 12345678"),
    ("MEMBER_ID", "ID MBR#12345678 on file.", "MBR#12345678"),
    ("MEMBER_ID", "id mbr12345678 on file.", "mbr12345678"),
    ("MEMBER_ID", "ID MBR_12345678 on file.", "MBR_12345678"),
    ("MEMBER_ID", "ID MBR\u201012345678 on file.", "MBR\u201012345678"),
    ("CLAIM_ID", "Claim CLM2026004821 pended.", "CLM2026004821"),
    ("CLAIM_ID", "Claim CLM 2026 004821 pended.", "CLM 2026 004821"),
    ("CLAIM_ID", "Claim CLM-2026004821 pended.", "CLM-2026004821"),
    ("CLAIM_ID", "Claim CLM2026-004821 pended.", "CLM2026-004821"),
    ("CLAIM_ID", "Claim CLM/2026/004821 pended.", "CLM/2026/004821"),
    ("POLICY_NUMBER", "Policy POLHX482133 is active.", "POLHX482133"),
    ("POLICY_NUMBER", "Policy POL HX 482133 is active.", "POL HX 482133"),
    ("POLICY_NUMBER", "Policy POL-HX482133 is active.", "POL-HX482133"),
    ("POLICY_NUMBER", "policy polhx482133 is active.", "polhx482133"),
    ("MEDICAL_RECORD_NUMBER", "Record MRN4821337 updated.", "MRN4821337"),
    ("MEDICAL_RECORD_NUMBER", "Record MRN_4821337 updated.", "MRN_4821337"),
    ("MEDICAL_RECORD_NUMBER", "Record MRN 4821337 updated.", "MRN 4821337"),
]


@pytest.mark.parametrize("etype, text, value", SEPARATOR_VARIANTS, ids=[v[2] for v in SEPARATOR_VARIANTS])
def test_separator_variants_of_ssns_and_ids_are_masked(etype, text, value):
    (out,) = _masked([text])
    _assert_gone(out, etype, value)


# Numbers a greedy SSN or id pattern would take: they must survive unchanged.
FACTS = [
    "Prior authorization is required for CPT 70551 and CPT 27447.",
    "The annual deductible for the Silver Saver plan is $1,500.",
    "Question: Which form is used to appeal a denied claim?\nAnswer: Form AP-7",
    "Appeals must be filed within 60 days; claims older than 365 days are closed.",
    "Payments go to account 123456789 at the plan's bank.",
    "The group number 100200300 is printed on every card.",
    "A security deposit is never required; the limit is $12,500 per year.",
    "The member portal MBR page and the POL form list claim totals of 2026.",
    "Effective 2026-01-01, members have 90 days to submit a claim.",
]


def test_domain_facts_with_long_numbers_survive():
    assert _masked(FACTS) == FACTS


def test_serving_output_filter_shares_the_normalisation_and_variants():
    from tasks.serve.app import OutputMasker

    masker = OutputMasker(RECOGNIZERS)
    text, counts = masker.mask("Your ID is M\u200bBR-12345678, SSN 123 45 6789, claim CLM2026004821.")
    assert text == "Your ID is <MEMBER_ID>, SSN <US_SSN>, claim <CLAIM_ID>."
    assert counts == {"MEMBER_ID": 1, "US_SSN": 1, "CLAIM_ID": 1}
