"""The mask stage: staged rows (raw zone) in, masked rows (clean zone) out.

Reads staging rows.jsonl, masks every text with the PII engine (tasks.pii: Presidio, keyed
pseudonyms, residual scan) and writes masked/train.jsonl ({"record_id", "record_type", "text"}, and
"subject": the keyed pseudonym of the raw subject field, e.g. member_id, when a record has one),
masked/entities.json (counts per entity type) and masked/residual.json (residual counts, share
and the flagged record ids). Above `max_residual_share` of the records still looking like
personal data the stage fails and publishes nothing. Logs, errors and the returned dict hold
counts, ids and paths, never text.

    python -m tasks.data.mask --rows STAGED.jsonl --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tasks.common.jsonl import read_objects
from tasks.config import MaskConfig
from tasks.pii import DateShift, MissingKeyError, ResidualPiiError, mask_records, resolve_key, subject_pseudonym

log = logging.getLogger(__name__)


def _read_rows(rows_path: Path) -> Iterator[dict]:
    return read_objects(
        rows_path,
        fields=("record_id", "record_type", "text"),
        hint="; staged rows must pass ingest and validation before masking",
    )


def publish_masked(
    out_dir: Path,
    tmp_path: Path,
    masked_path: Path,
    *,
    rows: int,
    entities: Counter,
    residual: Counter,
    flagged: list[str],
    max_residual_share: float | None,
) -> tuple[dict[str, int], dict[str, int], float]:
    """Write residual.json (counts and ids only), apply the residual threshold, then move the masked file
    into place and write entities.json. Over the threshold nothing is published — neither this attempt's
    file nor an earlier attempt's — and ResidualPiiError says which types and records."""
    entity_counts = dict(sorted(entities.items()))
    residual_counts = dict(sorted(residual.items()))
    share = len(flagged) / rows if rows else 0.0
    report = out_dir / "residual.json"
    report.write_text(
        json.dumps(
            {
                "rows": rows,
                "residual": residual_counts,
                "residual_records": len(flagged),
                "residual_share": share,
                "max_residual_share": max_residual_share,
                "record_ids": flagged,
            },
            indent=2,
        )
        + "\n"
    )
    if max_residual_share is not None and share > max_residual_share:
        tmp_path.unlink(missing_ok=True)
        masked_path.unlink(missing_ok=True)
        log.error("residual scan failed: %d of %d records, %s", len(flagged), rows, residual_counts)
        raise ResidualPiiError(
            residual_message(residual_counts, flagged, rows, share, max_residual_share, report),
            residual=residual_counts,
            share=share,
            record_ids=flagged,
        )
    os.replace(tmp_path, masked_path)
    (out_dir / "entities.json").write_text(json.dumps(entity_counts, indent=2, sort_keys=True) + "\n")
    return entity_counts, residual_counts, share


def residual_message(
    residual: dict[str, int], flagged: list[str], rows: int, share: float, max_share: float, report: Path
) -> str:
    ids = ", ".join(flagged[:20]) + (f" and {len(flagged) - 20} more" if len(flagged) > 20 else "")
    found = ", ".join(f"{etype}: {n}" for etype, n in residual.items())
    return (
        f"residual scan: {len(flagged)} of {rows} masked records ({share:.2%}) still look like they hold "
        f"personal data ({found}), above max_residual_share={max_share:.2%}; records: {ids}. Nothing was "
        f"published (counts and ids in {report}). Add or fix a recognizer in the recognizers YAML for these "
        "types, or mark a value that is not personal data in mask.allow_list, then re-run."
    )


def date_shift_option(mask_cfg: MaskConfig) -> DateShift | None:
    """The masker's date-shift option from the run's `mask:` config; None when it is off."""
    if not mask_cfg.date_shift:
        return None
    return DateShift(tuple(mask_cfg.date_shift_subject), mask_cfg.date_shift_max_days)


def mask_dataset(
    *,
    rows_path: Path,
    out_dir: Path,
    key: bytes,
    recognizers_path: Path,
    score_threshold: float = 0.4,
    language: str = "en",
    batch_size: int = 64,
    workers: int = 2,
    max_residual_share: float | None = 0.01,
    date_shift: DateShift | None = None,
    subject_field: str | None = None,
    subject_entity: str = "MEMBER_ID",
) -> dict:
    """Mask staged rows into out_dir/train.jsonl; write entities.json and residual.json; return
    counts and paths. A row's raw `subject_field` becomes its `subject`: the keyed pseudonym of that
    value as `subject_entity`, the placeholder the same id gets in the text; the raw value is dropped.

    Raises ResidualPiiError (and leaves no train.jsonl) when the share of records in which the
    residual scan still finds personal data exceeds `max_residual_share` (None: count only).
    """
    rows_path, out_dir = Path(rows_path), Path(out_dir)
    if not rows_path.is_file():
        raise FileNotFoundError(f"staged rows not found: {rows_path} (run ingest first)")
    if max_residual_share is not None and not 0 <= max_residual_share <= 1:
        raise ValueError(f"max_residual_share={max_residual_share}: expected a share between 0 and 1 (or None)")
    out_dir.mkdir(parents=True, exist_ok=True)
    masked_path = out_dir / "train.jsonl"
    tmp_path = out_dir / "train.jsonl.tmp"

    n, totals, residual, flagged = _write_masked(
        rows_path,
        tmp_path,
        key=key,
        recognizers_path=recognizers_path,
        score_threshold=score_threshold,
        language=language,
        batch_size=batch_size,
        workers=workers,
        date_shift=date_shift,
        subject=(subject_field, subject_entity),
    )
    entities, residual_counts, share = publish_masked(
        out_dir,
        tmp_path,
        masked_path,
        rows=n,
        entities=totals,
        residual=residual,
        flagged=flagged,
        max_residual_share=max_residual_share,
    )
    log.info(
        "masked %d rows, %d entities %s; residual in %d records %s",
        n,
        sum(entities.values()),
        entities,
        len(flagged),
        residual_counts,
    )
    return {
        "rows": n,
        "entities": entities,
        "entities_total": sum(entities.values()),
        "masked_path": str(masked_path),
        "residual": residual_counts,
        "residual_share": share,
    }


def _write_masked(
    rows_path: Path,
    tmp_path: Path,
    *,
    key: bytes,
    recognizers_path: Path,
    score_threshold: float,
    language: str,
    batch_size: int,
    workers: int,
    date_shift: DateShift | None = None,
    subject: tuple[str | None, str] = (None, "MEMBER_ID"),
) -> tuple[int, Counter, Counter, list[str]]:
    """Mask every staged row into `tmp_path` (removed if anything fails); returns (rows, entity counts,
    residual counts, ids of the records the residual scan flagged)."""
    field, entity = subject
    # Two passes over the file (ids, then texts) keep memory flat for large partitions.
    meta = (
        (r["record_id"], r["record_type"], subject_pseudonym(entity, r.get(field), key) if field else None)
        for r in _read_rows(rows_path)
    )
    texts = (r["text"] for r in _read_rows(rows_path))
    totals: Counter = Counter()
    residual: Counter = Counter()
    flagged: list[str] = []
    n = 0
    try:
        with open(tmp_path, "w", encoding="utf-8") as out:
            masked = mask_records(
                texts,
                key=key,
                recognizers_path=recognizers_path,
                score_threshold=score_threshold,
                language=language,
                batch_size=batch_size,
                workers=workers,
                date_shift=date_shift,
            )
            for (record_id, record_type, subject_key), m in zip(meta, masked):
                row = {"record_id": record_id, "record_type": record_type, "text": m.text}
                if subject_key:  # only the keyed pseudonym leaves the raw zone
                    row["subject"] = subject_key
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                totals.update(m.entities)
                if m.residual:
                    residual.update(m.residual)
                    flagged.append(record_id)
                n += 1
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return n, totals, residual, flagged


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from tasks.common import offline
    from tasks.config import REPO_ROOT, MaskConfig, load_config

    offline.apply()
    try:
        cfg = load_config()
        defaults, subject = cfg.mask, (cfg.privacy.subject_field, cfg.privacy.subject_entity)
    except FileNotFoundError:
        defaults, subject = MaskConfig(), (None, "MEMBER_ID")
    parser = argparse.ArgumentParser(prog="python -m tasks.data.mask", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=Path, required=True, help="staged rows.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train.jsonl, entities.json)")
    parser.add_argument(
        "--recognizers",
        type=Path,
        default=REPO_ROOT / defaults.recognizers,
        help="recognizers YAML (default: %(default)s)",
    )
    parser.add_argument("--score-threshold", type=float, default=defaults.score_threshold)
    parser.add_argument("--language", default=defaults.language)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per spaCy batch")
    parser.add_argument(
        "--workers",
        type=int,
        default=getattr(defaults, "workers", 2),
        help="processes sharing a large input (default %(default)s)",
    )
    parser.add_argument(
        "--max-residual-share",
        type=float,
        default=getattr(defaults, "max_residual_share", 0.01),
        help="fail when more than this share of records still holds personal data; "
        "a negative value only counts (default %(default)s)",
    )
    parser.add_argument(
        "--date-shift",
        action=argparse.BooleanOptionalAction,
        default=defaults.date_shift,
        help="shift each subject's dates by a keyed offset instead of masking them (default: mask.date_shift)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        key = resolve_key(defaults.key_env, defaults.key_conn_id)
    except MissingKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = mask_dataset(
            rows_path=args.rows,
            out_dir=args.out,
            key=key,
            recognizers_path=args.recognizers,
            score_threshold=args.score_threshold,
            language=args.language,
            batch_size=args.batch_size,
            workers=args.workers,
            subject_field=subject[0],
            subject_entity=subject[1],
            max_residual_share=(
                None if args.max_residual_share is None or args.max_residual_share < 0 else args.max_residual_share
            ),
            date_shift=date_shift_option(defaults.model_copy(update={"date_shift": args.date_shift})),
        )
    except ResidualPiiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
