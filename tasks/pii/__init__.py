"""Finding and masking personal data: the one engine every zone boundary uses.

The mask stage (tasks.data.mask) masks staged rows with it, the evaluation's PII-leakage scan
(tasks.eval.safety) counts with it, and the serving output filter (tasks.serve) masks generated
text with it. It finds personal data (Presidio's predefined recognizers, spaCy NER for names, name
lists, and the pattern recognizers in include/presidio/recognizers.yaml) and replaces each value
with a typed, keyed pseudonym such as "<PERSON_1a2b3c4d>": the same value gets the same placeholder
across the dataset and across runs with the same key, so the model still sees that two records
concern one member without ever seeing who. Domain facts (amounts, CPT codes, forms, deadlines,
dates that are not birth dates) are left intact. Each entity type has its operator in the YAML:
a pseudonym (default), "replace" ("<PERSON>"), "redact", "mask" ("***-**-9999") or "keep".

How the pieces fit (each module imports only those above it):

    key          the HMAC key: env var, else an Airflow connection's password
    pseudonyms   "<PERSON_1a2b3c4d>" and "***-**-9999": what a masked value becomes
    dateshift    the per-subject date shift (mask.date_shift): a keyed offset in days per subject
    spec         the YAML's `mask:`, `name_lists:`, `places:`, `residual:` sections and `extends:` → MaskSpec
    names        the PERSON gazetteer: name lists and cue words (name_list_spans)
    places       the LOCATION gazetteer: the place list (safe_harbor profile)
    gate         the NER gate: which sentences the spaCy NER reads
    spacy_ner    spaCy with its NER only, as Presidio's NLP engine (imported lazily)
    engines      Presidio's analyzer (recognizers, offline and tuned) and anonymizer (operators),
                 built once per process
    refine       clean-up of the raw findings: domain terms, NER/pattern overlaps, repeats
    residual     the residual scan: a second detector counts what masking left behind
    retention    fact retention: the share of fact strings a masking leaves verbatim
    masking      one process: invisible characters out, analyze, refine, anonymize, residual scan
    workers      chunks over spawned worker processes; mask_records and mask_texts

Throughput: the engines load once per process, spaCy runs only its NER component in batches,
and `workers` processes share the chunks of a large input; results come back in input order and
do not depend on the number of workers. Results hold counts and offsets, never text in logs.
"""

from tasks.pii.dateshift import DateShift, offset_days, shift_date
from tasks.pii.engines import build_registry
from tasks.pii.key import MissingKeyError, resolve_key
from tasks.pii.masking import MaskedText
from tasks.pii.names import name_list_spans
from tasks.pii.pseudonyms import PLACEHOLDER, mask_chars, normalise, pseudonym
from tasks.pii.refine import refine_results
from tasks.pii.residual import ResidualPiiError, residual_findings
from tasks.pii.retention import FactRetention, fact_retention
from tasks.pii.spec import MaskSpec, Operator, load_spec
from tasks.pii.subjects import subject_in_text, subject_pseudonym
from tasks.pii.workers import mask_records, mask_texts, mask_workers, usable_workers

__all__ = [
    "PLACEHOLDER",
    "DateShift",
    "FactRetention",
    "MaskSpec",
    "MaskedText",
    "MissingKeyError",
    "Operator",
    "ResidualPiiError",
    "build_registry",
    "fact_retention",
    "load_spec",
    "mask_chars",
    "mask_records",
    "mask_texts",
    "mask_workers",
    "name_list_spans",
    "normalise",
    "offset_days",
    "pseudonym",
    "refine_results",
    "residual_findings",
    "resolve_key",
    "shift_date",
    "subject_in_text",
    "subject_pseudonym",
    "usable_workers",
]
