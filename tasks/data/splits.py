"""The audit hold-out: masked records kept out of training so privacy attacks have non-members.

A membership-inference test needs records from the same distribution that the model never
saw. The split is by a hash of `record_id`, so a record stays on the same side in every
run and every month (a record trained on last month is never a "non-member" this month).

Under privacy.unit: subject the split is by a hash of the record's subject (the masker's keyed pseudonym):
a data subject's records are all on one side, so the audit can score a held-out person, not a held-out row
of a person whose other rows trained. A record with no subject is split by its `record_id`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.common.jsonl import read_objects
from tasks.pii.subjects import audit_unit

SALT = b"privatetune-audit-holdout-v1"


def in_holdout(record_id: str, share: float) -> bool:
    """Deterministic: the first 8 bytes of sha256(salt + id) as a fraction in [0, 1)."""
    digest = hashlib.sha256(SALT + record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_audit_holdout(rows_path: Path, out_dir: Path, share: float, *, subject_entity: str | None = None) -> dict:
    """Write out_dir/train.jsonl and out_dir/audit_holdout.jsonl (same rows, partitioned).

    `subject_entity` (privacy.unit: subject): hold out whole subjects (`audit_unit`). Returns paths and
    counts only. share = 0 puts every record in train.
    """
    if not 0.0 <= share < 0.5:
        raise ValueError(f"train.audit_holdout_share must be in [0, 0.5), got {share}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, holdout_path = out_dir / "train.jsonl", out_dir / "audit_holdout.jsonl"
    counts = {"train": 0, "holdout": 0}
    with train_path.open("w", encoding="utf-8") as train, holdout_path.open("w", encoding="utf-8") as holdout:
        for row in read_objects(Path(rows_path), fields=("record_id", "text"), hint="; re-run the version stage"):
            side = "holdout" if share and in_holdout(audit_unit(row, subject_entity), share) else "train"
            (holdout if side == "holdout" else train).write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[side] += 1
    if counts["train"] == 0:
        raise ValueError(f"{rows_path}: no records left for training after the audit hold-out (share {share})")
    return {
        "train_path": str(train_path),
        "holdout_path": str(holdout_path),
        "train_records": counts["train"],
        "holdout_records": counts["holdout"],
        "holdout_share": share,
        "holdout_unit": "subject" if subject_entity else "record",
    }
