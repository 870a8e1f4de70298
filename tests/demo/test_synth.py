"""The demo data generator: deterministic, PII recorded in its key, QA phrasings held out."""

from __future__ import annotations

import hashlib
import json

from tasks.demo import synth


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    synth.generate(tmp_path / "a", n_records=200)
    synth.generate(tmp_path / "b", n_records=200)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_pii_key_values_appear_in_landing_and_are_rare(tmp_path):
    synth.generate(tmp_path, n_records=400)
    landing = "".join(p.read_text() for p in (tmp_path / "landing").rglob("*.*"))
    key = json.loads((tmp_path / "synth" / "pii_key.json").read_text())
    types = {e["type"] for e in key}
    assert {
        "PERSON",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "US_SSN",
        "MEMBER_ID",
        "CLAIM_ID",
        "POLICY_NUMBER",
        "MEDICAL_RECORD_NUMBER",
        "ADDRESS",
        "DATE_OF_BIRTH",
    } <= types
    assert all(e["value"] in landing for e in key)
    with_pii = {e["record_id"] for e in key}
    assert len(with_pii) < 0.6 * 400  # personal data appears in a minority of records


def test_held_out_questions_never_appear_in_records(tmp_path):
    synth.generate(tmp_path, n_records=400)
    landing = "".join(p.read_text() for p in (tmp_path / "landing").rglob("*.*"))
    qa = [json.loads(line) for line in (tmp_path / "synth" / "qa_heldout.jsonl").read_text().splitlines()]
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


# ---------------------------------------------------------------- canaries


def _landing_rows(root):
    """Every landing record as {record_id: text} (JSONL and CSV; malformed demo rows skipped)."""
    import csv

    rows = {}
    for path in sorted((root / "landing").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row.get("text"), str) and row["record_id"].startswith("R-"):
                rows[row["record_id"]] = row["text"]
    for path in sorted((root / "landing").rglob("*.csv")):
        with path.open(newline="") as fh:
            rows.update({r["record_id"]: r["text"] for r in csv.DictReader(fh)})
    return rows


def test_canaries_open_their_records_and_change_nothing_else(tmp_path):
    months = ["2026-01", "2026-02"]
    counts = synth.generate(tmp_path / "c", n_records=300, months=months, canaries=3, canary_repeats=5)
    plain = synth.generate(tmp_path / "p", n_records=300, months=months, canaries=0)
    assert counts["canaries"] == 3 and counts["canary_records"] == 15
    assert counts["records"] == plain["records"] == 300 and counts["pii_values"] == plain["pii_values"]

    key = json.loads((tmp_path / "c" / "synth" / "canaries.json").read_text())
    assert json.loads((tmp_path / "p" / "synth" / "canaries.json").read_text()) == []
    assert [c["id"] for c in key] == ["canary-1", "canary-2", "canary-3"]
    assert len({c["secret"] for c in key}) == 3 and len({c["prefix"] for c in key}) == 3
    for c in key:
        assert set(c) >= {"id", "prefix", "secret", "format", "alphabet", "length", "separator", "repeats"}
        assert c["repeats"] == 5 and len(set(c["record_ids"])) == 5
        assert len(c["secret"].split(c["separator"])) == c["length"]
        assert all(ch in c["alphabet"] for ch in c["secret"].replace(c["separator"], ""))

    with_canary, without = _landing_rows(tmp_path / "c"), _landing_rows(tmp_path / "p")
    assert set(with_canary) == set(without)  # the same records; only the hosts differ, by one sentence
    hosts = {rid: synth.canary_text(c) for c in key for rid in c["record_ids"]}
    assert len(hosts) == 15  # no record hosts two canaries
    for rid, text in with_canary.items():
        expected = f"{hosts[rid]} {without[rid]}" if rid in hosts else without[rid]
        assert text == expected
    landing = "".join(with_canary.values())
    for c in key:
        assert landing.count(c["secret"]) == c["repeats"]
    # The pseudo-random stream of the records is untouched: PII key and QA are byte-identical.
    for name in ("pii_key.json", "qa_heldout.jsonl", "general_corpus.txt"):
        assert (tmp_path / "c" / "synth" / name).read_bytes() == (tmp_path / "p" / "synth" / name).read_bytes()


def test_too_many_canaries_fail_with_what_to_change(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"canary_repeats.*exceeds the 20 records"):
        synth.generate(tmp_path, n_records=20, canaries=4, canary_repeats=8)


def test_canaries_survive_the_real_masker(tmp_path):
    """The adversarial worst case by design: the committed recognizers do not catch a canary, so
    the secret reaches the training set and only the training (DP) can keep it from being learnt."""
    from tasks.config import REPO_ROOT
    from tasks.pii import mask_records

    synth.generate(tmp_path, n_records=120, canaries=4, canary_repeats=2)
    key = json.loads((tmp_path / "synth" / "canaries.json").read_text())
    rows = _landing_rows(tmp_path)
    hosts = [rid for c in key for rid in c["record_ids"]]
    texts = [rows[rid] for rid in hosts]
    masked = list(
        mask_records(
            texts,
            key=b"test-key-0123456789abcdef",
            workers=1,
            recognizers_path=REPO_ROOT / "include" / "presidio" / "recognizers.yaml",
        )
    )
    assert any(m.entities for m in masked)  # the masker did run on these records (their PII went)
    for c in key:
        for rid in c["record_ids"]:
            m = masked[hosts.index(rid)]
            assert m.text.startswith(synth.canary_text(c))
            assert not m.residual  # nor does the residual scan flag it
