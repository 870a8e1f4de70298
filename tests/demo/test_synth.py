"""The demo data generator: deterministic, PII recorded in its key, QA splits held out, facts at uneven frequencies."""

from __future__ import annotations

import hashlib
import json
import re

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


def _landing_text(root):
    return "".join(p.read_text() for p in (root / "landing").rglob("*.*"))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_qa_splits_are_disjoint_cover_every_fact_and_stay_out_of_the_records(tmp_path):
    synth.generate(tmp_path, n_records=400)
    landing = _landing_text(tmp_path)
    val = _jsonl(tmp_path / "synth" / "qa_validation.jsonl")
    test = _jsonl(tmp_path / "synth" / "qa_test.jsonl")
    facts = {f.fact_id for f in synth.domain_facts()}
    assert len(facts) >= 150
    assert len(val) >= 300 and len(test) >= 300
    for rows in (val, test):
        assert all(set(r) == {"id", "question", "answer", "fact_id", "kind", "bucket"} for r in rows)
        assert {r["fact_id"] for r in rows} == facts  # every fact asked in both splits
        assert {r["bucket"] for r in rows} == set(synth.BUCKETS)
    assert len({r["id"] for r in val + test}) == len(val) + len(test)
    assert not {r["question"] for r in val} & {r["question"] for r in test}  # disjoint in question text
    assert not [r["question"] for r in val + test if r["question"] in landing]  # no eval phrasing in a record
    assert all(r["answer"] in landing for r in val)  # every fact is taught somewhere


def test_eval_phrasings_are_never_train_phrasings():
    for kind, templates in synth.QUESTION_TEMPLATES.items():
        train, val, test = (set(templates[s]) for s in ("train", "validation", "test"))
        assert len(val) >= 2 and len(test) >= 2, kind
        assert not (train & val or train & test or val & test), kind


def test_bucket_frequencies_at_demo_size(tmp_path):
    """Common facts each in at least 1 % of the records, tail facts in a handful; every kind has both."""
    n = synth.DEMO_RECORDS
    synth.generate(tmp_path, n_records=n)
    table = json.loads((tmp_path / "synth" / "facts.json").read_text())
    assert {row["fact_id"] for row in table} == {f.fact_id for f in synth.domain_facts()}
    common = [row for row in table if row["bucket"] == "common"]
    tail = [row for row in table if row["bucket"] == "tail"]
    assert len(common) >= 50 and len(tail) >= 50
    assert all(row["records"] >= 0.01 * n and row["share"] >= 0.01 for row in common)
    assert all(3 <= row["records"] <= 8 for row in tail)
    assert max(row["records"] for row in tail) < min(row["records"] for row in common) / 5
    for kind in synth.FACT_KINDS:
        assert {row["bucket"] for row in table if row["kind"] == kind} == set(synth.BUCKETS), kind


def test_every_fact_lands_in_exactly_its_count_of_records():
    import random

    facts = synth.domain_facts()
    counts = synth.fact_counts(facts, 1000)
    types = [synth.RECORD_TYPES[i % 4] for i in range(1000)]
    records = synth.assign_facts(random.Random(3), facts, types, counts)
    assert len(records) == 1000 and all(records)
    assert all(len({f.fact_id for f in rec}) == len(rec) for rec in records)  # never twice in one record
    seen = {f.fact_id: 0 for f in facts}
    for rec in records:
        for f in rec:
            seen[f.fact_id] += 1
    assert seen == counts


def test_ten_times_the_demo_keeps_the_shares(tmp_path):
    """The benchmark's sizes: 10× the records in seconds, the same facts at the same shares, tails scaled."""
    n = 10 * synth.DEMO_RECORDS
    counts = synth.generate(tmp_path, n_records=n, canaries=0)
    assert counts["records"] == n and counts["questions"] == {"validation": 320, "test": 320}
    table = json.loads((tmp_path / "synth" / "facts.json").read_text())
    demo = synth.fact_counts(synth.domain_facts(), synth.DEMO_RECORDS)
    for row in table:
        if row["bucket"] == "tail":
            assert 30 <= row["records"] <= 89
        else:
            assert abs(row["share"] - demo[row["fact_id"]] / synth.DEMO_RECORDS) < 0.001
    assert (tmp_path / "landing" / "2026-01" / "records.jsonl").read_text().count("\n") > 0.7 * n


def test_the_seed_draws_the_records_not_the_domain(tmp_path):
    synth.generate(tmp_path / "a", n_records=200, seed=7)
    synth.generate(tmp_path / "b", n_records=200, seed=8)
    for name in ("qa_validation.jsonl", "qa_test.jsonl"):
        assert (tmp_path / "a" / "synth" / name).read_bytes() == (tmp_path / "b" / "synth" / name).read_bytes()
    assert _landing_text(tmp_path / "a") != _landing_text(tmp_path / "b")


def test_general_corpus_holds_no_domain_facts(tmp_path):
    """The base model's text asks in every phrasing of every kind, about other insurers only."""
    synth.generate(tmp_path, n_records=50)
    general = (tmp_path / "synth" / "general_corpus.txt").read_text()
    assert "Question:" in general
    for plan in synth.PLANS:
        assert plan not in general
    for code in synth.PROCEDURES:
        assert f"CPT {code}" not in general
    for form in synth.FORMS.values():
        assert form not in general
    for fact in synth.domain_facts():
        for text in fact.questions + fact.val_questions + fact.test_questions + fact.statements:
            assert text not in general, text
    asked = [line.removeprefix("Question: ") for line in general.splitlines() if line.startswith("Question: ")]
    for kind, templates in synth.QUESTION_TEMPLATES.items():
        for template in templates["validation"] + templates["test"]:
            pattern = re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)) + "$")
            assert any(pattern.match(q) for q in asked), (kind, template)


# ---------------------------------------------------------------- canaries


def _landing_rows(root):
    """Every landing record as {record_id: text} (JSONL and CSV; malformed demo rows skipped)."""
    return {r["record_id"]: r["text"] for r in _landing_records(root) if isinstance(r.get("text"), str)}


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
    for name in ("pii_key.json", "qa_validation.jsonl", "qa_test.jsonl", "facts.json", "general_corpus.txt"):
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


SAFE_HARBOR_KINDS = {
    "PERSON",
    "ADDRESS",
    "CITY",
    "ZIP_CODE",
    "DATE_OF_BIRTH",
    "ADMISSION_DATE",
    "DISCHARGE_DATE",
    "SERVICE_DATE",
    "DATE_OF_DEATH",
    "AGE",
    "LICENSE_NUMBER",
    "VEHICLE_ID",
    "DEVICE_ID",
    "ACCOUNT_NUMBER",
    "FAX_NUMBER",
    "URL",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "US_SSN",
    "MEDICAL_RECORD_NUMBER",
    "POLICY_NUMBER",
    "MEMBER_ID",
}


def test_safe_harbor_identifiers_add_prose_and_leave_the_rest(tmp_path):
    months = ["2026-01", "2026-02"]
    plain = synth.generate(tmp_path / "p", n_records=400, months=months)
    sh = synth.generate(tmp_path / "s", n_records=400, months=months, identifiers="safe_harbor")
    # Same records, facts, QA splits and corpus: the prose draws from its own stream.
    assert sh["records"] == plain["records"] == 400 and sh["fact_mentions"] == plain["fact_mentions"]
    for name in ("qa_validation.jsonl", "qa_test.jsonl", "facts.json", "general_corpus.txt", "canaries.json"):
        assert (tmp_path / "p" / "synth" / name).read_bytes() == (tmp_path / "s" / "synth" / name).read_bytes()
    before, after = _landing_rows(tmp_path / "p"), _landing_rows(tmp_path / "s")
    assert before.keys() == after.keys()
    changed = 0
    for rid, text in before.items():
        new = after[rid]
        if new != text:
            changed += 1
            # Prose is inserted after a sentence or appended: every original byte stays, in order.
            cuts = [m.end() for m in re.finditer(r"\. ", text)] + [len(text)]
            assert any(new.startswith(text[:c]) and new.endswith(text[c:]) for c in cuts), rid
    assert 0 < changed < 0.5 * len(before)
    # The key lists every Safe Harbor kind; the minimal key's entries are all still there.
    key = json.loads((tmp_path / "s" / "synth" / "pii_key.json").read_text())
    old_key = json.loads((tmp_path / "p" / "synth" / "pii_key.json").read_text())
    assert {e["type"] for e in key} >= SAFE_HARBOR_KINDS
    entries = {(e["type"], e["value"], e["record_id"]) for e in key}
    assert {(e["type"], e["value"], e["record_id"]) for e in old_key} <= entries
    assert all(e["value"] in after[e["record_id"]] for e in key)
    # Names in any casing; ages keyed only over 89; dates in several formats.
    names = [e["value"] for e in key if e["type"] == "PERSON"]
    assert any(n.islower() for n in names) and any(n.isupper() for n in names) and any("," in n for n in names)
    assert all(int(re.search(r"\d+", e["value"])[0]) > 89 for e in key if e["type"] == "AGE")
    dates = [e["value"] for e in key if e["type"].endswith("_DATE") or e["type"] == "DATE_OF_DEATH"]
    assert any("/" in d for d in dates) and any(re.search(r"[A-Z][a-z]+", d) for d in dates)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dates) and any("." in d for d in dates)


def test_safe_harbor_identifiers_are_deterministic_and_checked(tmp_path):
    synth.generate(tmp_path / "a", n_records=150, identifiers="safe_harbor")
    synth.generate(tmp_path / "b", n_records=150, identifiers="safe_harbor")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    import pytest

    with pytest.raises(ValueError, match="identifiers"):
        synth.generate(tmp_path / "c", n_records=50, identifiers="everything")


def _landing_records(root):
    """Every landing record (JSONL and CSV), bad rows left out."""
    import csv

    rows = []
    for path in sorted((root / "landing").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and str(row.get("record_id", "")).startswith("R-"):
                rows.append(row)
    for path in sorted((root / "landing").rglob("*.csv")):
        rows += [r for r in csv.DictReader(path.open()) if r["record_id"].startswith("R-")]
    return rows


def test_members_own_heavy_tailed_record_counts_spread_over_months(tmp_path):
    months = ["2026-01", "2026-02", "2026-03", "2026-04"]
    counts = synth.generate(tmp_path, n_records=2000, months=months, canaries=0, members=True)
    key = json.loads((tmp_path / "synth" / "members.json").read_text())
    sizes = sorted(len(m["record_ids"]) for m in key)
    assert counts["members"] == len(key) and counts["member_records"] == sum(sizes)
    assert sizes[len(sizes) // 2] <= 3  # most members have a few records
    assert sizes[-1] >= 20  # some have dozens
    big = max(key, key=lambda m: len(m["record_ids"]))
    assert len({rid[2:9] for rid in big["record_ids"]}) >= 3  # R-2026-01-…: spread over the months
    rows = {r["record_id"]: r for r in _landing_records(tmp_path)}
    owner = {rid: m["member_id"] for m in key for rid in m["record_ids"]}
    for rid, row in rows.items():
        if row["record_type"] == "plan_document":
            assert not row.get("member_id") and rid not in owner  # plan documents belong to no one
        else:  # the structured field and the text both name the owner the key says
            assert row["member_id"] == owner[rid]
            assert owner[rid] in row["text"]
    pii = json.loads((tmp_path / "synth" / "pii_key.json").read_text())
    keyed = {(e["record_id"], e["value"]) for e in pii if e["type"] == "MEMBER_ID"}
    assert set(owner.items()) <= keyed  # the raw id is in the PII key too, so leakage scans look for it


def test_members_are_opt_in_and_leave_facts_and_questions_alone(tmp_path):
    synth.generate(tmp_path / "plain", n_records=300)
    synth.generate(tmp_path / "members", n_records=300, members=True)
    assert not (tmp_path / "plain" / "synth" / "members.json").exists()
    assert all("member_id" not in r for r in _landing_records(tmp_path / "plain"))
    for name in ("facts.json", "qa_validation.jsonl", "qa_test.jsonl"):
        assert (tmp_path / "plain" / "synth" / name).read_bytes() == (
            tmp_path / "members" / "synth" / name
        ).read_bytes()


def test_safe_harbor_zip_codes_are_never_a_number_the_domain_states(tmp_path):
    """A keyed ZIP code equal to a procedure code ("99213") sits verbatim in the masked facts and in the model's
    answers, and reads as a leak in the PII scan and the leakage evaluation: the generator never draws one."""
    synth.generate(tmp_path, n_records=6000, identifiers="safe_harbor", members=True, canaries=0)
    key = json.loads((tmp_path / "synth" / "pii_key.json").read_text())
    zips = {e["value"] for e in key if e["type"] == "ZIP_CODE"}
    stated = set(re.findall(r"\b\d{5}\b", " ".join(synth.fact_strings())))
    assert len(zips) > 200 and "99213" in stated
    assert not zips & stated
    # Nor in a code's range: a model that learned "99213" writes "99203", which a 992xx ZIP code would match.
    assert not {z[:3] for z in zips if z.isdigit()} & {code[:3] for code in stated}
