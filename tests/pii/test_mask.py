"""Masking stage: every PII type is caught, placeholders are typed and keyed, domain facts survive;
operators per entity from the YAML; the residual scan counts and fails; workers and batching."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from tasks.config import REPO_ROOT
from tasks.data.mask import mask_dataset
from tasks.pii import (
    MissingKeyError,
    Operator,
    ResidualPiiError,
    load_spec,
    mask_chars,
    mask_records,
    mask_texts,
    name_list_spans,
    pseudonym,
    residual_findings,
    resolve_key,
    usable_workers,
)
from tasks.pii import workers as pii_workers
from tasks.pii.engines import analyzer
from tasks.pii.gate import ner_gate

RECOGNIZERS = REPO_ROOT / "include" / "presidio" / "recognizers.yaml"
KEY = b"test-key-0123456789abcdef0123456789"
OTHER_KEY = b"another-key-fedcba9876543210fedcba"
PLACEHOLDER = re.compile(r"<([A-Z_]+)_[0-9a-f]{8}>")

FACTS = [
    "The annual deductible for the Silver Saver plan is $1,500.",
    "Prior authorization is required for CPT 70551.",
    "Appeals must be filed within 60 days.",
    "Use Form HX-12 for out-of-network claims.",
    "The out-of-pocket maximum for the Bronze Basic plan is $8,700.",
    "An ER visit on the Harbor Kids plan costs a copay of $50.",
    "Effective 2026-01-01, members have 90 days to submit an out-of-network claim.",
    "Question: Which form is used to appeal a denied claim?\nAnswer: Form AP-7",
    "Harborview Health plan summary. CPT 27447, a knee replacement, requires prior authorization.",
]

# Every PII type in the contract, plus the other types the stage masks. The key lists
# (type, raw value) for each; the leak check looks for each value literally.
RECORDS = [
    (
        "R-1",
        "claim_note",
        "Claim pended for review. Member: Maria Gonzalez, ID MBR-48213377, DOB: 1961-04-12, "
        "phone (312) 555-0147, SSN 219-09-9999. Claim CLM-2026-004821. " + FACTS[0],
    ),
    (
        "R-2",
        "member_letter",
        "Dear James Whitaker, your policy POL-HX-482133 is active. We mailed the new card to "
        "1423 Maple Avenue, Springfield, IL 62704. Questions? Write to james.whitaker@example.com. " + FACTS[2],
    ),
    (
        "R-3",
        "support_ticket",
        "Maria Gonzalez called back from 312-555-0147 about medical record MRN-4821337; she was "
        "born 04/12/1961. " + FACTS[1],
    ),
    (
        "R-4",
        "support_ticket",
        "Caller Aisha Okafor paid with card 4111 1111 1111 1111 and asked for a refund to IBAN "
        "GB82 WEST 1234 5698 7654 32. Portal login from 192.168.14.22 at https://portal.example.com/claims/77. "
        + FACTS[3],
    ),
    ("R-5", "plan_document", " ".join(FACTS[4:7])),
]
PII = [
    ("PERSON", "Maria Gonzalez"),
    ("PERSON", "James Whitaker"),
    ("PERSON", "Aisha Okafor"),
    ("MEMBER_ID", "MBR-48213377"),
    ("CLAIM_ID", "CLM-2026-004821"),
    ("POLICY_NUMBER", "POL-HX-482133"),
    ("MEDICAL_RECORD_NUMBER", "MRN-4821337"),
    ("DATE_OF_BIRTH", "1961-04-12"),
    ("DATE_OF_BIRTH", "04/12/1961"),
    ("PHONE_NUMBER", "(312) 555-0147"),
    ("PHONE_NUMBER", "312-555-0147"),
    ("US_SSN", "219-09-9999"),
    ("STREET_ADDRESS", "1423 Maple Avenue, Springfield, IL 62704"),
    ("EMAIL_ADDRESS", "james.whitaker@example.com"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
    ("IP_ADDRESS", "192.168.14.22"),
    ("URL", "https://portal.example.com/claims/77"),
]
DIGIT_TYPES = {"PHONE_NUMBER", "US_SSN", "CREDIT_CARD"}


def _config() -> dict:
    """The committed recognizers YAML, its name-list paths made absolute so a copy elsewhere works."""
    config = yaml.safe_load(RECOGNIZERS.read_text())
    for field in ("first_names", "last_names", "not_names"):
        config["name_lists"][field] = [str(RECOGNIZERS.parent / f) for f in config["name_lists"][field]]
    return config


def _write_rows(path: Path, records) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "record_id": rid,
                    "record_type": rtype,
                    "created_at": "2026-01-14",
                    "text": text,
                    "source_file": "2026-01/records.jsonl",
                    "source_line": i,
                }
            )
            + "\n"
            for i, (rid, rtype, text) in enumerate(records, 1)
        )
    )
    return path


def _read_masked(out_dir: Path) -> dict[str, dict]:
    return {row["record_id"]: row for row in map(json.loads, (out_dir / "train.jsonl").read_text().splitlines())}


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """The synthetic records masked once with KEY (the engines load once for the module)."""
    tmp = tmp_path_factory.mktemp("mask")
    rows = _write_rows(tmp / "rows.jsonl", RECORDS)
    result = mask_dataset(rows_path=rows, out_dir=tmp / "masked", key=KEY, recognizers_path=RECOGNIZERS)
    return result, tmp / "masked"


def test_no_raw_pii_survives(masked):
    _result, out_dir = masked
    rows = _read_masked(out_dir)
    assert [rows[rid]["record_type"] for rid, _, _ in RECORDS] == [rtype for _, rtype, _ in RECORDS]
    everything = "\n".join(row["text"] for row in rows.values())
    # Digits-only check ignores the placeholders, whose hex digests hold digits.
    digits_outside_placeholders = [_digits(t) for t in PLACEHOLDER.split(everything)]
    for etype, value in PII:
        assert value not in everything, f"{etype} survived masking"
        if etype == "PERSON":
            for part in value.split():
                assert part not in everything, f"part of a {etype} survived masking"
        if etype in DIGIT_TYPES:
            assert not any(_digits(value) in d for d in digits_outside_placeholders), f"{etype} digits survived"
    found_types = set(PLACEHOLDER.findall(everything))
    assert {etype for etype, _ in PII} <= found_types
    assert found_types <= {etype for etype, _ in PII}, "something that is not PII was masked"


def test_result_dict_and_entities_file_hold_counts_only(masked):
    result, out_dir = masked
    assert set(result) == {"rows", "entities", "entities_total", "masked_path", "residual", "residual_share"}
    assert result["rows"] == len(RECORDS)
    assert result["masked_path"] == str(out_dir / "train.jsonl")
    assert json.loads((out_dir / "entities.json").read_text()) == result["entities"]
    assert result["entities_total"] == sum(result["entities"].values())
    assert result["entities"]["PERSON"] == 4  # Maria in, James, Aisha
    blob = json.dumps(result) + (out_dir / "entities.json").read_text()
    assert not any(value in blob for _, value in PII)
    assert not (out_dir / "train.jsonl.tmp").exists()


def test_domain_facts_survive_unchanged(masked):
    _, out_dir = masked
    rows = _read_masked(out_dir)
    assert rows["R-5"]["text"] == RECORDS[4][2]
    for rid, fact in (("R-1", FACTS[0]), ("R-2", FACTS[2]), ("R-3", FACTS[1]), ("R-4", FACTS[3])):
        assert rows[rid]["text"].endswith(fact)
    assert [text for text, _ in mask_texts(FACTS, key=KEY, recognizers_path=RECOGNIZERS)] == FACTS


def test_placeholders_are_typed_consistent_and_keyed(masked):
    _, out_dir = masked
    rows = _read_masked(out_dir)
    maria = pseudonym("PERSON", "Maria Gonzalez", KEY)
    assert re.fullmatch(r"<PERSON_[0-9a-f]{8}>", maria)
    assert maria in rows["R-1"]["text"] and maria in rows["R-3"]["text"]
    # One phone in two formats, one birth date in two records: one placeholder each.
    phone = pseudonym("PHONE_NUMBER", "312-555-0147", KEY)
    assert phone == pseudonym("PHONE_NUMBER", "(312) 555-0147", KEY)
    assert phone in rows["R-1"]["text"] and phone in rows["R-3"]["text"]
    assert rows["R-1"]["text"].startswith(f"Claim pended for review. Member: {maria}, ID <MEMBER_ID_")
    assert "DOB: <DATE_OF_BIRTH_" in rows["R-1"]["text"]  # the label stays, the date goes

    # Same key → same text on a later run; another key → other placeholders.
    text = RECORDS[2][2]
    (again,) = [t for t, _ in mask_texts([text], key=KEY, recognizers_path=RECOGNIZERS)]
    (other,) = [t for t, _ in mask_texts([text], key=OTHER_KEY, recognizers_path=RECOGNIZERS)]
    assert again == rows["R-3"]["text"]
    assert maria not in other and pseudonym("PERSON", "Maria Gonzalez", OTHER_KEY) in other
    assert PLACEHOLDER.sub("<>", other) == PLACEHOLDER.sub("<>", again)


def test_custom_identifier_from_yaml_without_code(tmp_path):
    text = "Approved by employee EMP-123456 after review. Appeals must be filed within 60 days."
    config = _config()
    config["recognizers"].append(
        {
            "name": "employee_id",
            "supported_language": "en",
            "supported_entity": "EMPLOYEE_ID",
            "patterns": [{"name": "employee id", "regex": r"\bEMP-\d{6}\b", "score": 0.9}],
            "context": ["employee"],
        }
    )
    custom = tmp_path / "recognizers.yaml"
    custom.write_text(yaml.safe_dump(config, sort_keys=False))

    (before,) = mask_texts([text], key=KEY, recognizers_path=RECOGNIZERS)
    (after,) = mask_texts([text], key=KEY, recognizers_path=custom)
    assert before[0] == text
    assert (
        after[0] == f"Approved by employee {pseudonym('EMPLOYEE_ID', 'EMP-123456', KEY)} after review. "
        "Appeals must be filed within 60 days."
    )
    assert after[1] == {"EMPLOYEE_ID": 1}


def test_yaml_operators_and_errors(tmp_path):
    config = _config()
    config["mask"]["entities"].update({"US_SSN": "replace", "MEMBER_ID": "redact", "PERSON": "keep"})
    custom = tmp_path / "ops.yaml"
    custom.write_text(yaml.safe_dump(config, sort_keys=False))
    ((text, counts),) = mask_texts(["Maria Gonzalez, MBR-48213377, SSN 219-09-9999."], key=KEY, recognizers_path=custom)
    assert text == "Maria Gonzalez, , SSN <US_SSN>."
    assert counts == {"US_SSN": 1, "MEMBER_ID": 1}

    config["mask"]["entities"]["US_SSN"] = "scramble"
    custom.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=r"ops\.yaml: mask\.entities\.US_SSN"):
        list(mask_texts(["x"], key=KEY, recognizers_path=custom))


def test_missing_key_raises_and_key_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv("PFT_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_PFT_PSEUDONYM_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="PFT_PSEUDONYM_KEY") as err:
        resolve_key()
    assert "pft_pseudonym_key" in str(err.value)

    # An Airflow connection (here from its env-var form) supplies the key's password.
    monkeypatch.setenv("AIRFLOW_CONN_PFT_PSEUDONYM_KEY", "generic://:conn-secret@")
    assert resolve_key() == b"conn-secret"
    monkeypatch.setenv("PFT_PSEUDONYM_KEY", "env-secret")  # the env var wins
    assert resolve_key() == b"env-secret"

    rows = _write_rows(tmp_path / "rows.jsonl", RECORDS[:1])
    with pytest.raises(MissingKeyError):
        mask_dataset(rows_path=rows, out_dir=tmp_path / "out", key=b"", recognizers_path=RECOGNIZERS)


def test_no_network_and_no_text_in_logs(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise AssertionError("masking tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # Rebuild the analyzer and the TLD extractor under the ban (spaCy stays loaded).
    monkeypatch.setattr("tasks.pii.engines._ANALYZERS", {})
    monkeypatch.setattr("tasks.pii.residual._RESIDUAL_RECOGNIZERS", {})
    monkeypatch.setattr("tasks.pii.engines._OFFLINE_TLD", None)
    caplog.set_level("DEBUG")

    rows = _write_rows(tmp_path / "rows.jsonl", RECORDS[1:2])
    result = mask_dataset(rows_path=rows, out_dir=tmp_path / "out", key=KEY, recognizers_path=RECOGNIZERS)
    assert result["entities"]["EMAIL_ADDRESS"] == 1  # the TLD check ran, offline
    assert not any(value in caplog.text for _, value in PII)
    assert KEY.decode() not in caplog.text


def test_bad_rows_name_file_and_line_without_text(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"record_id": "R-1", "record_type": "claim_note", "text": "ok"})
        + "\n"
        + json.dumps({"record_id": "R-2", "record_type": "claim_note", "text": 42, "note": "Maria Gonzalez"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: field 'text'") as err:
        mask_dataset(rows_path=rows, out_dir=tmp_path / "out", key=KEY, recognizers_path=RECOGNIZERS)
    assert "Maria" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="run ingest"):
        mask_dataset(rows_path=tmp_path / "nope.jsonl", out_dir=tmp_path / "out", key=KEY, recognizers_path=RECOGNIZERS)


def test_cli_prints_result_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PFT_PSEUDONYM_KEY", KEY.decode())
    rows = _write_rows(tmp_path / "rows.jsonl", RECORDS[2:3])
    from tasks.data import mask as mask_stage

    assert mask_stage.main(["--rows", str(rows), "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 1 and result["entities"]["PERSON"] == 1
    assert pseudonym("PERSON", "Maria Gonzalez", KEY) in (tmp_path / "out" / "train.jsonl").read_text()


# ---------------------------------------------------------------- operators per entity


def _custom_yaml(tmp_path: Path, name: str = "custom.yaml", *, drop_recognizer: str | None = None, **entities) -> Path:
    config = _config()
    config["mask"]["entities"].update(entities)
    if drop_recognizer:
        config["recognizers"] = [r for r in config["recognizers"] if r["name"] != drop_recognizer]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_mask_chars_keeps_the_last_letters_and_digits_and_the_separators():
    assert mask_chars("219-09-9999") == "***-**-9999"
    assert mask_chars("4111 1111 1111 1111", keep_last=4, masking_char="#") == "#### #### #### 1111"
    assert mask_chars("(312) 555-0147", keep_last=0) == "(***) ***-****"
    assert mask_chars("MBR-48", keep_last=9) == "MBR-48"  # shorter than keep_last: nothing hidden


def test_each_operator_from_yaml(tmp_path):
    custom = _custom_yaml(
        tmp_path,
        PERSON="replace",
        MEMBER_ID="redact",
        PHONE_NUMBER="pseudonym",
        US_SSN={"operator": "mask"},  # keep_last 4 and "*" by default
        CREDIT_CARD={"operator": "mask", "keep_last": 2, "masking_char": "#"},
        CLAIM_ID=None,  # no operator given: the default one (pseudonym)
    )
    text = (
        "Maria Gonzalez, MBR-48213377, SSN 219-09-9999, card 4111 1111 1111 1111, "
        "phone 312-555-0147, claim CLM-2026-004821."
    )
    ((masked, counts),) = mask_texts([text], key=KEY, recognizers_path=custom)
    assert masked == (
        f"<PERSON>, , SSN ***-**-9999, card #### #### #### ##11, "
        f"phone {pseudonym('PHONE_NUMBER', '312-555-0147', KEY)}, "
        f"claim {pseudonym('CLAIM_ID', 'CLM-2026-004821', KEY)}."
    )
    assert counts == {"PERSON": 1, "MEMBER_ID": 1, "US_SSN": 1, "CREDIT_CARD": 1, "PHONE_NUMBER": 1, "CLAIM_ID": 1}
    spec = load_spec(custom)
    assert spec.entities["CREDIT_CARD"] == Operator("mask", 2, "#")
    assert spec.entities["CLAIM_ID"] == Operator("pseudonym")


@pytest.mark.parametrize(
    "entry, error",
    [
        ({"operator": "redact", "keep_last": 4}, "only apply to the 'mask' operator"),
        ({"operator": "mask", "keep_last": -1}, "keep_last must be a whole number"),
        ({"operator": "mask", "keep_last": "4"}, "keep_last must be a whole number"),
        ({"operator": "mask", "masking_char": "x"}, "masking_char must be one character"),
        ({"operator": "mask", "masking_char": "**"}, "masking_char must be one character"),
        ({"operator": "mask", "keep": 4}, "unknown option"),
        ({"operator": "shuffle"}, "operator 'shuffle' is not one of"),
        (["mask"], "expected an operator name or a mapping"),
    ],
)
def test_operator_errors_name_file_and_entity(tmp_path, entry, error):
    custom = _custom_yaml(tmp_path, "ops.yaml", US_SSN=entry)
    with pytest.raises(ValueError, match=rf"ops\.yaml: mask\.entities\.US_SSN: .*{re.escape(error)}"):
        load_spec(custom)


def test_formats_beyond_presidio_defaults():
    texts = [
        "Please call me at 0335 7793958 today.",  # a foreign format, after "call" (a spaCy stop word)
        "Card 2224840206583879 was declined.",  # Mastercard 2-series, Luhn-valid
        "Card 2224840206583870 was declined.",  # fails the Luhn check: not a card
        "Contact: Member: Aisha Okafor, ID MBR-48213377.",  # the second label is not a name
    ]
    out = [text for text, _ in mask_texts(texts, key=KEY, recognizers_path=RECOGNIZERS)]
    assert out[0] == f"Please call me at {pseudonym('PHONE_NUMBER', '0335 7793958', KEY)} today."
    assert out[1] == f"Card {pseudonym('CREDIT_CARD', '2224840206583879', KEY)} was declined."
    assert out[2] == texts[2]
    assert out[3].startswith(f"Contact: Member: {pseudonym('PERSON', 'Aisha Okafor', KEY)}, ID <MEMBER_ID_")


# ---------------------------------------------------------------- residual scan


def test_residual_findings_ignore_placeholders_masks_and_allow_list():
    spec = load_spec(RECOGNIZERS)
    clean = (
        f"Member {pseudonym('PERSON', 'Maria Gonzalez', KEY)} <US_SSN>, card **** **** **** 1111, "
        f"phone {pseudonym('PHONE_NUMBER', '312-555-0147', KEY)}, CPT 70551 costs $1,500 from 2026-01-01."
    )
    assert residual_findings(clean, [], spec) == {}
    leaky = "SSN 219-09-9999 and MBR 48213377, call (312) 555-0147 or mail maria.g@example.com; DOB: 04/12/1961."
    assert residual_findings(leaky, [], spec) == {
        "US_SSN": 1,
        "MEMBER_ID": 1,
        "PHONE_NUMBER": 1,
        "EMAIL_ADDRESS": 1,
        "DATE_OF_BIRTH": 1,
    }
    # One value two detectors agree on counts once.
    from presidio_analyzer import RecognizerResult

    assert residual_findings("SSN 219-09-9999.", [RecognizerResult("US_SSN", 4, 15, 0.5)], spec) == {"US_SSN": 1}


def test_residual_scan_is_zero_on_clean_output(masked):
    result, out_dir = masked
    assert result["residual"] == {} and result["residual_share"] == 0.0
    report = json.loads((out_dir / "residual.json").read_text())
    assert report == {
        "rows": len(RECORDS),
        "residual": {},
        "residual_records": 0,
        "residual_share": 0.0,
        "max_residual_share": 0.01,
        "record_ids": [],
    }


def test_residual_pii_fails_the_stage_with_counts_and_ids_only(tmp_path, caplog):
    # A customer's YAML lost the member-id recognizer: masking misses the ids, the residual scan does not.
    broken = _custom_yaml(tmp_path, drop_recognizer="member_id")
    rows = _write_rows(tmp_path / "rows.jsonl", RECORDS)
    out = tmp_path / "out"
    with pytest.raises(ResidualPiiError) as err:
        mask_dataset(rows_path=rows, out_dir=out, key=KEY, recognizers_path=broken)
    message = str(err.value)
    assert "1 of 5 masked records (20.00%)" in message and "MEMBER_ID: 1" in message and "R-1" in message
    assert "max_residual_share=1.00%" in message
    assert not any(value in message for _, value in PII) and "48213377" not in message
    assert not any(value in caplog.text for _, value in PII)
    assert err.value.residual == {"MEMBER_ID": 1} and err.value.record_ids == ["R-1"]
    assert not (out / "train.jsonl").exists() and not (out / "train.jsonl.tmp").exists()
    assert json.loads((out / "residual.json").read_text())["record_ids"] == ["R-1"]

    # Counting only (None), or a looser threshold: the stage publishes and reports the residue.
    for share in (None, 0.5):
        result = mask_dataset(rows_path=rows, out_dir=out, key=KEY, recognizers_path=broken, max_residual_share=share)
        assert result["residual"] == {"MEMBER_ID": 1} and result["residual_share"] == pytest.approx(0.2)
        assert "MBR-48213377" in (out / "train.jsonl").read_text()  # what the scan flagged


def test_residual_config_errors_name_the_field(tmp_path):
    config = _config()
    config["residual"]["patterns"]["US_SSN"] = "(\\d{3}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=r"bad\.yaml: residual\.patterns\.US_SSN\[0\] is not a valid regex"):
        load_spec(bad)
    config["residual"] = {"score_threshold": 2}
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=r"residual\.score_threshold"):
        load_spec(bad)
    with pytest.raises(ValueError, match="max_residual_share"):
        mask_dataset(
            rows_path=_write_rows(tmp_path / "rows.jsonl", RECORDS[:1]),
            out_dir=tmp_path / "o",
            key=KEY,
            recognizers_path=RECOGNIZERS,
            max_residual_share=1.5,
        )


# ---------------------------------------------------------------- throughput: batching and workers


def test_spacy_runs_only_ner_in_one_batched_pipe(monkeypatch):
    spec = load_spec(RECOGNIZERS)
    nlp = analyzer(RECOGNIZERS, "en", spec).nlp_engine.nlp["en"]
    assert nlp.pipe_names == ["ner"]
    calls = []
    real_pipe = nlp.pipe

    def counting_pipe(texts, **kwargs):
        texts = list(texts)
        calls.append((len(texts), sum(map(len, texts)), kwargs.get("batch_size")))
        return real_pipe(texts, **kwargs)

    monkeypatch.setattr(nlp, "pipe", counting_pipe)
    texts = [text for _, _, text in RECORDS] * 2
    out = list(mask_texts(texts, key=KEY, recognizers_path=RECOGNIZERS, batch_size=64, workers=1))
    assert len(out) == len(texts)
    # One nlp.pipe over the NER segments of all texts, not one nlp() per text; sentences with
    # no capitalised word that may be a name (most plan-document text) are not read at all.
    gate = ner_gate(spec)
    expected = [(s, e) for text in texts for s, e in gate.segments(text)]
    assert calls == [(len(expected), sum(e - s for s, e in expected), 64)]
    assert sum(e - s for s, e in expected) < 0.9 * sum(map(len, texts))


def test_ner_gate_reads_only_sentences_that_may_hold_a_name():
    gate = ner_gate(load_spec(RECOGNIZERS))
    facts = f"{FACTS[0]} {FACTS[1]}"  # capitalised words: "The", "Silver Saver" (a domain term), "Prior", "CPT"
    text = f"{facts}\nDear Mr. Gábor, your claim is approved.\n{facts} {facts}"
    ((start, end),) = gate.segments(text)
    # The name's sentence with one neighbour each side ("Mr." does not end a sentence).
    assert text[start:end].strip() == f"{FACTS[1]}\nDear Mr. Gábor, your claim is approved.\n{FACTS[0]}"
    assert gate.segments(facts + " The plan is sold by Member Services.") == []
    assert gate.segments("Prior authorization is required. Appeals go to Ingrid.") == [(0, 54)]


def test_gate_changes_nothing_on_the_records(tmp_path):
    config = _config()
    config["mask"]["ner_gate"] = False
    ungated = tmp_path / "ungated.yaml"
    ungated.write_text(yaml.safe_dump(config, sort_keys=False))
    texts = [text for _, _, text in RECORDS]
    assert list(mask_texts(texts, key=KEY, recognizers_path=ungated, workers=1)) == list(
        mask_texts(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    )


def test_workers_give_the_same_result_in_input_order(monkeypatch):
    started = []
    real_start = pii_workers._start_pool
    monkeypatch.setattr(pii_workers, "_start_pool", lambda *a: started.append(a) or real_start(*a))
    # Distinct texts, so an order mix-up would show.
    texts = [f"Ticket {i}. {text}" for i in range(3) for _, _, text in RECORDS]
    single = list(mask_records(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=1, chunk_size=4))
    assert not started
    parallel = list(mask_records(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=2, chunk_size=4))
    assert len(started) == (1 if usable_workers(2) > 1 else 0)
    assert parallel == single
    assert [m.text.split(".")[0] for m in parallel] == [t.split(".")[0] for t in texts]
    assert single[0].spans and all(isinstance(e, str) and 0 <= s < e_ <= len(texts[0]) for e, s, e_ in single[0].spans)


@pytest.mark.parametrize(
    "text, name",
    [
        # Not in spaCy's small model, nor in the name lists: a cue word makes it a name.
        ("Our adjuster spoke with Dzhamalay Batukayev regarding the appeal.", "Dzhamalay Batukayev"),
        ("Policy belongs to Qoqa M Arsanukayev, effective today.", "Qoqa M Arsanukayev"),  # middle initial
        ("Hideo Yamanaka\nCardiographer\nSeqLL Inc.", "Hideo Yamanaka"),  # listed names at a line start
        ("Mr. Gábor is a 39 year old man who grew up in Constitución.", "Gábor"),  # accented: was dropped
        ("The subscriber, Sietske van der Wardt, asked us to stop calling.", "Sietske van der Wardt"),
    ],
)
def test_person_names_the_ner_misses(text, name):
    ((masked, counts),) = mask_texts([text], key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    assert name not in masked and pseudonym("PERSON", name, KEY) in masked
    assert counts["PERSON"] >= 1


def test_words_of_a_found_name_are_masked_alone_too():
    text = "My name is Muriz Panković but everyone calls me Muriz."
    ((masked, _),) = mask_texts([text], key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    assert "Muriz" not in masked and pseudonym("PERSON", "Muriz", KEY) in masked


def test_name_lists_keep_words_that_are_not_names():
    spec = load_spec(RECOGNIZERS).name_lists
    assert name_list_spans("Grace periods end in May. Morris Street is closed.", spec) == []
    assert name_list_spans("call sofia brandt today", spec) == [(5, 17, spec.score)]


@pytest.mark.parametrize(
    "phone",
    [
        "(07700) 459 044",
        "+41 (0)88 694 68 51",
        "04.27.13.70.72",
        "0498 33 37 76",
        "(11) 2313-7324",
        "+1-555-123-4567",
        "001-938-473-0441",
        "(659)711-4952x605",
    ],
)
def test_international_phone_formats(phone):
    text = f"Her number is {phone} since March."
    ((masked, counts),) = mask_texts([text], key=KEY, recognizers_path=RECOGNIZERS, workers=1)
    assert masked == f"Her number is {pseudonym('PHONE_NUMBER', phone, KEY)} since March."
    assert counts == {"PHONE_NUMBER": 1}


def test_phone_digit_groups_after_a_label_or_a_phone_word_only():
    texts = [
        "Phone: 33 93 31",
        "Call back at 42-62-71-61.",
        "Personal Info:\\nPhone:\\n963 90 011\\n",
        "Effective 05.06.2026 and 2026-01-15, see 1125 73 Rue Ibn Al Khatib.",
    ]
    out = [t for t, _ in mask_texts(texts, key=KEY, recognizers_path=RECOGNIZERS, workers=1)]
    assert out[0] == f"Phone: {pseudonym('PHONE_NUMBER', '33 93 31', KEY)}"
    assert out[1] == f"Call back at {pseudonym('PHONE_NUMBER', '42-62-71-61', KEY)}."
    assert "963 90 011" not in out[2]
    assert "05.06.2026" in out[3] and "2026-01-15" in out[3] and "1125 73" in out[3]
