"""The demo data generator: deterministic, PII recorded in its key, QA phrasings held out."""

from __future__ import annotations

import hashlib
import json

from tasks import synth


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    synth.generate(tmp_path / "a", n_records=200)
    synth.generate(tmp_path / "b", n_records=200)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_pii_key_values_appear_in_landing_and_are_rare(tmp_path):
    synth.generate(tmp_path, n_records=400)
    landing = "".join(p.read_text() for p in (tmp_path / "landing").rglob("*.*"))
    key = json.loads((tmp_path / "synth" / "pii_key.json").read_text())
    types = {e["type"] for e in key}
    assert {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "MEMBER_ID", "CLAIM_ID", "POLICY_NUMBER",
            "MEDICAL_RECORD_NUMBER", "ADDRESS", "DATE_OF_BIRTH"} <= types
    assert all(e["value"] in landing for e in key)
    with_pii = {e["record_id"] for e in key}
    assert len(with_pii) < 0.6 * 400  # personal data appears in a minority of records


def test_held_out_questions_never_appear_in_records(tmp_path):
    synth.generate(tmp_path, n_records=400)
    landing = "".join(p.read_text() for p in (tmp_path / "landing").rglob("*.*"))
    qa = [json.loads(l) for l in (tmp_path / "synth" / "qa_heldout.jsonl").read_text().splitlines()]
    assert len(qa) == len(synth.domain_facts())
    assert not [q["question"] for q in qa if q["question"] in landing]
    assert all(q["answer"] in landing for q in qa)  # every fact is taught somewhere


def test_general_corpus_holds_no_domain_facts(tmp_path):
    synth.generate(tmp_path, n_records=50)
    general = (tmp_path / "synth" / "general_corpus.txt").read_text()
    assert "Question:" in general
    for plan in synth.PLANS:
        assert plan not in general
    for code in synth.PROCEDURES:
        assert f"CPT {code}" not in general
