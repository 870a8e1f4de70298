"""The safe_harbor masking profile: every Safe Harbor identifier kind that occurs in text, in several
formats (value gone, placeholder typed), names in any casing, domain facts kept (fact retention on
generated records), and the profile selected through the config (mask.profile)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks.config import MASK_PROFILES, REPO_ROOT, MaskConfig
from tasks.demo import synth
from tasks.pii import fact_retention, load_spec, mask_records, mask_texts, name_list_spans

SAFE_HARBOR = REPO_ROOT / MASK_PROFILES["safe_harbor"]
MINIMAL = REPO_ROOT / MASK_PROFILES["minimal"]
KEY = b"test-key-0123456789abcdef0123456789"
PLACEHOLDER = re.compile(r"<([A-Z_]+)_[0-9a-f]{8}>")

# Per Safe Harbor kind: (text, the raw values that must be gone, the placeholder types accepted).
CASES = {
    "street_address": [
        ("Mail it to 1423 maple avenue, apt 4 please.", ["1423 maple avenue"], {"STREET_ADDRESS"}),
        ("She lives at 77 rue de Groussay since May.", ["77 rue de Groussay"], {"STREET_ADDRESS"}),
        ("New address: Norrbyvägen 21, Stockholm.", ["Norrbyvägen 21"], {"STREET_ADDRESS"}),
        ("Post to ul. Biskupa Bogedaina 118 today.", ["Bogedaina 118"], {"STREET_ADDRESS"}),
        ("Send to PO Box 5030 or Suite 171.", ["Box 5030", "Suite 171"], {"STREET_ADDRESS"}),
    ],
    "city_county": [
        ("He grew up in LAHTI and now lives in Tucson.", ["LAHTI", "Tucson"], {"LOCATION"}),
        ("It is near Tucson. Fine.", ["Tucson"], {"LOCATION"}),
        ("The member moved to Cook County last year.", ["Cook County"], {"LOCATION"}),
        ("Born in the city of Albufeira, she travels.", ["Albufeira"], {"LOCATION"}),
        # spaCy reads some towns as people; the place is masked either way.
        ("Letters go to Schwänberg now.", ["Schwänberg"], {"LOCATION", "PERSON"}),
    ],
    "zip_code": [
        ("Springfield, IL 62704 is on file.", ["62704"], {"ZIP_CODE", "STREET_ADDRESS", "LOCATION"}),
        ("My zip code is 20303.", ["20303"], {"ZIP_CODE"}),
        ("ZIP: 2331", ["2331"], {"ZIP_CODE"}),
        ("Postcode SW1A 1AA, London.", ["SW1A 1AA"], {"ZIP_CODE"}),
        ("Billing address:\n    5931 DB\n", ["5931 DB"], {"STREET_ADDRESS", "ZIP_CODE"}),
    ],
    "date": [
        ("Patient admitted 03/14/2024 and discharged 3/18/24.", ["03/14/2024", "3/18/24"], {"DATE"}),
        ("Date of service 2024-03-15, seen again on March 18, 2024.", ["2024-03-15", "March 18, 2024"], {"DATE"}),
        ("He died on 7 June 2023 at home.", ["7 June 2023"], {"DATE"}),
        ("Admitted on March 3 for surgery.", ["March 3"], {"DATE"}),
        ("Date: 1991-08-07 06:54:21.113200", ["1991-08-07"], {"DATE"}),
    ],
    "age_over_89": [
        ("He is 93 years old.", ["93"], {"AGE"}),
        ("A 101-year-old woman, aged 95 at intake.", ["101", "95"], {"AGE"}),
        ("I'm 92 y/o and she turned 90.", ["92", "90"], {"AGE"}),
    ],
    "license": [
        ("My driver's license number is D1234567.", ["D1234567"], {"LICENSE_NUMBER", "US_DRIVER_LICENSE"}),
        ("Certificate no. 88-301-442 was renewed.", ["88-301-442"], {"LICENSE_NUMBER"}),
        ("NPI: 1234567893 on the claim.", ["1234567893"], {"LICENSE_NUMBER"}),
    ],
    "vehicle": [
        ("VIN 1HGCM82633A004352 was in the accident.", ["1HGCM82633A004352"], {"VEHICLE_ID"}),
        ("License plate ABC 1234, car parked outside.", ["ABC 1234"], {"VEHICLE_ID"}),
    ],
    "device": [
        ("Pump serial number SN-88213X failed.", ["SN-88213X"], {"DEVICE_ID"}),
        # An IMEI passes the Luhn check: a card finding may win the overlap; the number goes either way.
        ("IMEI: 490154203237518 on the monitor.", ["490154203237518"], {"DEVICE_ID", "CREDIT_CARD"}),
        ("The hub's MAC is 00:1A:2B:3C:4D:5E.", ["00:1A:2B:3C:4D:5E"], {"DEVICE_ID"}),
    ],
    "account_fax_url": [
        ("Refund to account number 123456789.", ["123456789"], {"ACCOUNT_NUMBER", "US_BANK_NUMBER"}),
        ("Acct #: 0045-2231-88 is closed.", ["0045-2231-88"], {"ACCOUNT_NUMBER"}),
        ("Fax: (312) 555-0147 or fax 0498 33 37 76.", ["(312) 555-0147", "0498 33 37 76"], {"PHONE_NUMBER"}),
        ("See https://www.LodgingAlternatives.it/ for it.", ["LodgingAlternatives"], {"URL"}),
    ],
    "names_any_casing": [
        ("spoke with maria gonzalez about the claim.", ["maria gonzalez"], {"PERSON"}),
        ("ROBERT KOWALSKI called back.", ["ROBERT", "KOWALSKI"], {"PERSON"}),
        ("Attn: SOFIA J BRANDT, claims.", ["SOFIA", "BRANDT"], {"PERSON"}),
        # After a cue, a listed first name and any lower-case word; a name that is no English word.
        ("the patient maria zbyszewska was seen.", ["maria", "zbyszewska"], {"PERSON"}),
        ("name: khasbulat shishani", ["khasbulat", "shishani"], {"PERSON"}),
        ("follow up with tamara okonkwo next week.", ["tamara", "okonkwo"], {"PERSON"}),
        ("KOWALSKI, ROBERT (DOB on file) called.", ["KOWALSKI", "ROBERT"], {"PERSON"}),
        ("MY NAME IS MR. MOHSIN WILMSEN", ["MOHSIN", "WILMSEN"], {"PERSON"}),
        # A first name that is a domain word too ("grace period"), beside a surname: missed by the e2e's data.
        ("Spoke with GRACE FISCHER about it.", ["GRACE", "FISCHER"], {"PERSON"}),
        ("caller grace kowalski, re: the claim", ["grace", "kowalski"], {"PERSON"}),
        ("HUGHES, GRACE phoned.", ["HUGHES", "GRACE"], {"PERSON"}),
    ],
    "places_in_address_structure": [
        ("She lives at 458 Oak Street, Edmonton", ["Edmonton"], {"LOCATION", "STREET_ADDRESS"}),
        (
            "Cards go to Lindenstraße 4, 04123 Leipzig, Germany.",
            ["Leipzig", "04123"],
            {"LOCATION", "ZIP_CODE", "STREET_ADDRESS"},
        ),
        (
            "Send it to 12 Aldwick Road, Leeds LS1 2AB now.",
            ["Leeds", "LS1 2AB"],
            {"LOCATION", "ZIP_CODE", "STREET_ADDRESS"},
        ),
        ("Mrs. Lee\nCalgary AB T2P 1J9", ["Calgary", "T2P 1J9"], {"LOCATION", "ZIP_CODE", "STREET_ADDRESS"}),
        (
            "Billing:\n 355 Keizersgracht\n Pietersburg\n 8913\n",
            ["Pietersburg", "8913"],
            {"LOCATION", "ZIP_CODE", "STREET_ADDRESS"},
        ),
        (
            "Rua das Flores 9, 3000-297 Coimbra, Portugal",
            ["3000-297", "Coimbra"],
            {"LOCATION", "ZIP_CODE", "STREET_ADDRESS"},
        ),
        ("I am in LONDON for a business trip.", ["LONDON"], {"LOCATION"}),
        ("He flew to Koidu on Saturday.", ["Koidu"], {"LOCATION"}),
        # The place list in lower case, in address context.
        ("she lives at 458 oak street, utrecht now", ["utrecht"], {"LOCATION", "STREET_ADDRESS"}),
        # No English word and no listed name, after a preposition of place; "home city X".
        ("We returned to GLAUBENDORF by helicopter.", ["GLAUBENDORF"], {"LOCATION"}),
        ("The club is in Sauðarkrókur, they say.", ["Sauðarkrókur"], {"LOCATION"}),
        ("the economy of her home city STAVANGER: oil", ["STAVANGER"], {"LOCATION"}),
    ],
}


def _mask(texts: list[str], path: Path = SAFE_HARBOR) -> list[tuple[str, dict]]:
    return list(mask_texts(texts, key=KEY, recognizers_path=path, workers=1))


def _assert_unchanged(texts: list[str]) -> None:
    """safe_harbor masks nothing in these texts: each comes out exactly as it went in."""
    for text, (masked, counts) in zip(texts, _mask(texts), strict=True):
        assert masked == text, counts


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_safe_harbor_kind_is_masked_typed(kind):
    cases = CASES[kind]
    for (text, values, types), (masked, _counts) in zip(cases, _mask([c[0] for c in cases]), strict=True):
        for value in values:
            assert value not in masked, f"{kind}: a value survived in case {cases.index((text, values, types))}"
        found = set(PLACEHOLDER.findall(masked))
        assert found and found <= types | {"PERSON", "LOCATION", "STREET_ADDRESS", "ZIP_CODE"}, (kind, found)
        assert found & types, (kind, found, types)


def test_facts_bare_years_and_deadlines_survive():
    texts = [
        "CPT 70551, an MRI of the brain, requires prior authorization. In 2019 the plan changed.",
        "Members have 30 days to report a new dependent. Effective 2026-01-01, the Coastal HMO plan applies.",
        "To appeal a denied claim, members use Form AP-7. The deductible for the Evergreen PPO plan is $2,000.",
        "Skilled nursing care is covered up to 100 days a year. A member must file a grievance within 45 days.",
    ]
    _assert_unchanged(texts)


def test_acronyms_and_english_words_are_not_names_in_any_casing():
    texts = [
        "CPT 70551 REQUIRES PRIOR AUTHORIZATION. THE COPAY FOR THE COASTAL HMO PLAN IS $20.",
        "Is an MRI, CPT 70551, subject to prior authorization? patient reported pain, dear valued member.",
        "update a member address within 30 days; the copay is $20.",
        "THE GRACE PERIOD IS 31 DAYS. the grace period ends; a grace period applies.",
        "The claim went to CPT review in Medicare and to Member Services for the Gold Premier plan.",
    ]
    _assert_unchanged(texts)


def test_minimal_profile_leaves_what_safe_harbor_adds():
    text = "He is 93 years old, admitted 03/14/2024, lives in Tucson; VIN 1HGCM82633A004352."
    ((masked, counts),) = _mask([text], MINIMAL)
    assert masked == text and not counts


def test_fact_retention_on_generated_records(tmp_path):
    synth.generate(tmp_path, seed=20261207, n_records=160, bad_rows=0, canaries=0)
    rows = [r for p in sorted((tmp_path / "landing").rglob("*.jsonl")) for r in _jsonl(p)]
    texts = [r["text"] for r in rows]
    masked = list(mask_records(texts, key=KEY, recognizers_path=SAFE_HARBOR, workers=1))
    result = fact_retention(texts, [m.text for m in masked], synth.fact_strings())
    assert result.present > 300
    assert result.share >= 0.99, result
    # The generator's own PII is all gone too, and the residual scan finds nothing.
    key = _key(tmp_path)
    for row, m in zip(rows, masked, strict=True):
        assert not [v for v in key.get(row["record_id"], ()) if v in m.text]
        assert not m.residual


def test_every_identifier_kind_of_the_generator_is_masked(tmp_path):
    """Records with every Safe Harbor kind in free prose (identifiers="safe_harbor"): each keyed
    value gone, facts kept. Tuned on these templates: the benchmark's figures are the fair ones."""
    synth.generate(tmp_path, seed=20261208, n_records=240, bad_rows=0, canaries=0, identifiers="safe_harbor")
    rows = [r for p in sorted((tmp_path / "landing").rglob("*.jsonl")) for r in _jsonl(p)]
    texts = [r["text"] for r in rows]
    masked = list(mask_records(texts, key=KEY, recognizers_path=SAFE_HARBOR, workers=1))
    assert fact_retention(texts, [m.text for m in masked], synth.fact_strings()).share >= 0.99
    key = _key(tmp_path)
    values = [v for row in rows for v in key.get(row["record_id"], ())]
    left = [v for row, m in zip(rows, masked, strict=True) for v in key.get(row["record_id"], ()) if v in m.text]
    assert len(values) > 300 and len(left) <= 0.02 * len(values), len(left)
    assert not any(m.residual for m in masked)


def test_profile_is_selected_by_config():
    assert MaskConfig(profile="safe_harbor").recognizers == MASK_PROFILES["safe_harbor"]
    assert MaskConfig().recognizers == MASK_PROFILES["minimal"]
    with pytest.raises(ValueError, match=r"drop mask\.recognizers"):
        MaskConfig(profile="safe_harbor", recognizers=MASK_PROFILES["minimal"])
    spec = load_spec(SAFE_HARBOR)
    # safe_harbor extends minimal: every minimal type and operator is kept.
    assert load_spec(MINIMAL).entities.items() <= spec.entities.items()
    assert {"LOCATION", "ZIP_CODE", "DATE", "AGE", "VEHICLE_ID", "DEVICE_ID"} <= set(spec.entities)


def test_extends_resolves_files_and_refuses_a_circle(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {SAFE_HARBOR}\nmask:\n  entities: {{AGE: keep}}\n")
    spec = load_spec(child)
    assert "AGE" not in spec.entities and "DATE" in spec.entities
    assert spec.places is not None and spec.places.places[0].is_file()
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="circle"):
        load_spec(loop)


def _jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def _key(home: Path) -> dict[str, list[str]]:
    import json

    out: dict[str, list[str]] = {}
    for entry in json.loads((home / "synth" / "pii_key.json").read_text()):
        out.setdefault(entry["record_id"], []).append(entry["value"])
    return out


def test_a_masked_place_keeps_the_full_stop_after_it():
    ((masked, _),) = _mask(["She now lives in Tucson."])
    assert masked.endswith(">.") and "Tucson" not in masked
    # A town ending an address line is one word or three, never across a sentence end (the demo's records
    # lost "Agent answered." to a LOCATION).
    text = "Cards go to 12 Rue de la Paix, 75002 Paris, France. Agent answered.\nQuestion: Is it covered?"
    ((masked, _),) = _mask([text])
    assert masked.endswith(". Agent answered.\nQuestion: Is it covered?") and "Paris" not in masked, masked


def test_the_residual_scan_knows_the_safe_harbor_kinds():
    """The second detector (residual.patterns, merged over minimal's) counts each added kind left in
    a text, ignores placeholders and domain facts, and is not part of the minimal profile."""
    from tasks.pii import residual_findings

    spec, minimal = load_spec(SAFE_HARBOR), load_spec(MINIMAL)
    left = {
        "ZIP_CODE": "My zip code is 20303.",
        "LOCATION": "Mail to <STREET_ADDRESS_1a2b3c4d>, Springfield, IL <ZIP_CODE_1a2b3c4d>.",
        "DATE": "She was admitted on 03/14/2025.",
        "AGE": "He is 93 years old.",
        "LICENSE_NUMBER": "driver's license D1234567 on file",
        "VEHICLE_ID": "VIN 1HGCM82633A004352",
        "DEVICE_ID": "pump serial number SN-88213X",
        "ACCOUNT_NUMBER": "refund to account number 0045-2231-88",
    }
    for kind, text in left.items():
        assert kind in residual_findings(text, [], spec), kind
        assert not residual_findings(text, [], minimal), kind
    clean = [
        "Members have 30 days to report a new dependent. CPT 70551 requires prior authorization.",
        "To appeal a denied claim, members use Form AP-7. The deductible for the Gold Premier plan is $500.",
        "Dear <PERSON_1a2b3c4d>, born <DATE_1a2b3c4d>, aged <AGE_1a2b3c4d>, VIN <VEHICLE_ID_1a2b3c4d>.",
    ]
    for text in clean:
        assert not residual_findings(text, [], spec), text


def test_first_names_in_a_name_slot_of_uncased_text():
    """Text without capitals (all lower case or all capitals): a listed first name before ":", "," or
    "'s", in a list, or at a sentence's end after "to"; a first name with a word that is no English word."""
    cases = [
        ("bryan: remember me? when i met your brother", ["bryan"]),
        ("as promised, here's david's address", ["david"]),
        ("they had 6: dawn, tony, tiffany and carol.", ["dawn", "tony", "tiffany", "carol"]),
        ("i'm so jealous! to thomas", ["thomas"]),
        ("sung by thea kokshoorn in 2017", ["thea kokshoorn"]),
        ("BRYAN: REMEMBER ME?\\NMATTHEW: YOU SAVED MY LIFE!", ["BRYAN", "MATTHEW"]),
    ]
    for (_text, values), (masked, _) in zip(cases, _mask([c[0] for c in cases]), strict=True):
        assert not [v for v in values if v in masked], masked
    # Mixed-case text keeps its capitals as the signal: common words that are listed names stay.
    ((masked, _),) = _mask(["The claim was filed with Frank Moore: chase the appeal, mark the form."])
    assert "chase the appeal, mark the form" in masked


def test_a_capitals_name_the_ner_also_found_is_masked():
    """The clean-clone CI's miss: spaCy and the name list both found "GRACE KOWALSKI" (0.85 each), Presidio
    kept one of the equal findings, the NER's, and the casing filter then dropped it as a word-less NER
    finding. Masked alone this text left the name; inside a larger batch it did not."""
    text = (
        "Contact: Member: Ethan Ivanova, ID MBR-15311169, phone (608) 615-1682, policy POL-XP-127175, claim "
        "CLM-2026-551832. patient GRACE KOWALSKI was admitted on 3/14/24 and discharged on 08.03.2025."
    )
    ((masked, counts),) = _mask([text])
    assert "GRACE" not in masked and "KOWALSKI" not in masked and counts["PERSON"] == 2, masked


def test_a_dropped_ner_finding_gives_back_the_gazetteer_finding_it_hid():
    from presidio_analyzer import RecognizerResult

    from tasks.pii.engines import NER_RECOGNIZER
    from tasks.pii.refine import refine_results

    text = "patient GRACE KOWALSKI was admitted. THE COPAY IS $20."
    ner = {RecognizerResult.RECOGNIZER_NAME_KEY: NER_RECOGNIZER}
    listed = {RecognizerResult.RECOGNIZER_NAME_KEY: "NameListRecognizer"}
    name, copay = (8, 22), (text.index("THE COPAY"), text.index(" IS"))
    results = [
        RecognizerResult("PERSON", *name, 0.85, recognition_metadata=ner),
        RecognizerResult("ORGANIZATION", *copay, 0.85, recognition_metadata=ner),
    ]
    gazetteer = [
        RecognizerResult("PERSON", *name, 0.85, recognition_metadata=listed),
        RecognizerResult("PERSON", 0, 7, 0.6, recognition_metadata=listed),
    ]
    assert refine_results(text, results) == []  # neither NER finding has a word that counts in any case
    kept = refine_results(text, results, gazetteers=lambda _text: gazetteer)
    # Only what lies inside a dropped NER finding of its own type comes back ("patient" was never an NER PERSON).
    assert [(r.entity_type, r.start, r.end) for r in kept] == [("PERSON", 8, 22)]


# Issue 16's recall work: formats each rule adds (value gone, placeholder typed); each case failed before.
RECALL_CASES = [
    # A building or delivery number before the house number; a street name without a number.
    ("Deliver to 4410 27 Birchwood Avenue today.", ["4410"], {"STREET_ADDRESS"}),
    ("We met on Wexford Mill Road yesterday.", ["Wexford Mill"], {"STREET_ADDRESS"}),
    # Hungarian "u." (utca), a street name and number after "on", the town after "<number>, ".
    ("Post goes to Kossuth Lajos u. 14. now", ["Kossuth Lajos u. 14"], {"STREET_ADDRESS"}),
    ("He lives on Zelenikova 22 these days.", ["Zelenikova 22"], {"STREET_ADDRESS"}),
    ("Ship to 3301 Kirkeveien 18, SØRUMSAND", ["3301", "SØRUMSAND"], {"STREET_ADDRESS", "LOCATION"}),
    # Postal codes in more formats: alone on a line, ending a town line, after "in <place>".
    ("Billing:\n 12 Lipowa Street\n Kraków\n 31-420\n", ["31-420"], {"ZIP_CODE"}),
    ("Billing:\n 7 Rua Nove 12\n Campinas\n 13083-970\n", ["13083-970"], {"ZIP_CODE"}),
    ("Mr. Orr 22 Ekvägen 4\nUtrecht UT 3511 LX", ["3511 LX", "Utrecht"], {"ZIP_CODE", "LOCATION"}),
    ("Mr. Orr 22 Ekvägen 4\nSKÖVDE O 541 30", ["541 30", "SKÖVDE"], {"ZIP_CODE", "LOCATION", "STREET_ADDRESS"}),
    ("they opened an office in Vellberg 74541 for years", ["74541"], {"ZIP_CODE"}),
    # An export's town line ("\\n" literal): a town, a region code, a UK or 3-digit postal code.
    ("Mrs. Ann Lee Apt. 9 12 Kent Rd\\nLITTLEHAMPTON xx BN17 5AB", ["LITTLEHAMPTON"], {"LOCATION"}),
    ("Ms. Ann Lee 9 Vesturgata 66\\nSelfoss nan 800", ["Selfoss", "800"], {"LOCATION", "ZIP_CODE"}),
    # The town after a street-first address and a comma; a street suffix of USPS's list ("Parade").
    ("Ann lives at 5994 64 avenue de Bouvines, CRÉTEILLE", ["5994", "CRÉTEILLE"], {"STREET_ADDRESS", "LOCATION"}),
    ("Ann lives at 611 43 Farrar Parade, KOOWANUP", ["43 Farrar Parade", "KOOWANUP"], {"STREET_ADDRESS", "LOCATION"}),
    # A town with a one-letter part, a region code and a postal code ending an export's line.
    ("Mrs. Ann Lee 9 Vesturgata 66\\nHOLMSUND N xx 6511", ["HOLMSUND N", "6511"], {"LOCATION", "ZIP_CODE"}),
    # Four capitals with a letter English does not use.
    ("The clinic in ÅMÅL closed.", ["ÅMÅL"], {"LOCATION"}),
    # Digit groups before a phone label.
    ("Contact\n44 819 227 office\n05531882640-Fax", ["44 819 227", "05531882640"], {"PHONE_NUMBER"}),
    # An unlisted name in a name's place, in any casing.
    ("Zarkhun began writing as a teenager.", ["Zarkhun"], {"PERSON"}),
    ("zarkhun began writing as a teenager.", ["zarkhun"], {"PERSON"}),
    ("ZARKHUN BEGAN WRITING AS A TEENAGER.", ["ZARKHUN"], {"PERSON"}),
    ("is there a better song? dahl and petersen were engineers.", ["dahl", "petersen"], {"PERSON"}),
    ("the tennis player aemi nakamoto was detained.", ["aemi", "nakamoto"], {"PERSON"}),
    ("THE TENNIS PLAYER AEMI NAKAMOTO WAS DETAINED.", ["AEMI", "NAKAMOTO"], {"PERSON"}),
    # Uncased, a middle initial between two words that are listed or no English word.
    ("I WANT TO ADD ZORBEK Q. VANTABLOV AS A BENEFICIARY", ["ZORBEK", "VANTABLOV"], {"PERSON"}),
    ("we need to add zorbek q vantablov as guardian", ["zorbek", "vantablov"], {"PERSON"}),
]


@pytest.mark.parametrize("case", RECALL_CASES, ids=[c[0][:40] for c in RECALL_CASES])
def test_issue16_formats_are_masked_typed(case):
    text, values, types = case
    ((masked, _),) = _mask([text])
    assert not [v for v in values if v in masked], masked
    found = set(PLACEHOLDER.findall(masked))
    assert found & types, (found, types)


def test_terms_unknown_to_english_stay_in_uncased_text():
    """Uncased text: a word no list or lexicon knows is a name only in a name's place, never a term."""
    texts = [
        "preauthorization is needed; coinsurance applies under hipaa and cobra rules; telehealth copays apply.",
        "PREAUTHORIZATION IS NEEDED UNDER HIPAA; THE FORMULARY LISTS SEMAGLUTIDE.",
        "member called about ozempic and metformin refills, tdap vaccine and a covid booster",
        "We met on Form 1095 day. See Section 4 and CPT 99213 on page 3 in Plan 2025.",
        "THE PLAN A COVERS IT. VITAMIN D LEVELS.",
        "plan a covers it; vitamin d levels; the grace e period",
    ]
    _assert_unchanged(texts)


def test_unlisted_capitalised_names_in_a_names_place():
    """The gazetteer (spaCy's NER aside): a capitalised word no list and no English word list knows, in a
    name's place; not a term, not an English word, not out of a name's place."""
    spec = load_spec(SAFE_HARBOR).name_lists
    for text, value in [
        ("Zsombrák is very reliable.", "Zsombrák"),
        ('"the move was right," says Ulvbakkenes.', "Ulvbakkenes"),
        ("Is it right? Szerdahelyová and Lund were engineers.", "Szerdahelyová"),
        ("a fine time to leave me Drozhbek, four kids at home", "Drozhbek"),
    ]:
        assert value in [text[s:e] for s, e, _ in name_list_spans(text, spec)], text
    for text in ["Preauthorization is needed.", "Discipline is a virtue.", "The form went to Zsombrák Holdings."]:
        assert not name_list_spans(text, spec), text


def test_a_house_number_pattern_never_runs_across_a_sentence_end():
    """A count ending one sentence and a street suffix starting the next are no address ("36 sessions. On the
    Harbor Kids plan", "60 visits. A CT scan")."""
    texts = [
        "The yearly limit on cardiac rehab sessions is 36 sessions. On the Harbor Kids plan, the ER copay is $50.",
        "The yearly limit on home health visits is 60 visits. A CT scan (CPT 74176) requires prior authorization.",
    ]
    _assert_unchanged(texts)


def test_an_ner_place_in_capitals_that_is_no_english_word_stays_found():
    """Presidio keeps the NER's finding over a pattern's of the same span (higher score); in capitals it
    counts when a word of it is five capitals or more and no English word ("grew up in EDMONDSHAM"),
    never for an acronym or an English word."""
    from presidio_analyzer import RecognizerResult

    from tasks.pii.masking import _unknown_word
    from tasks.pii.refine import refine_results

    unknown = _unknown_word(load_spec(SAFE_HARBOR))
    assert unknown is not None and _unknown_word(load_spec(MINIMAL)) is None
    meta = {RecognizerResult.RECOGNIZER_NAME_KEY: "SpacyRecognizer"}
    for text, value, kept in [
        ("He grew up in EDMONDSHAM.", "EDMONDSHAM", True),
        ("Send it to CLAIMS today.", "CLAIMS", False),
    ]:
        s = text.index(value)
        found = [RecognizerResult("LOCATION", s, s + len(value), 0.85, recognition_metadata=dict(meta))]
        assert bool(refine_results(text, found, unknown=unknown)) is kept, text
        assert not refine_results(text, found), text
