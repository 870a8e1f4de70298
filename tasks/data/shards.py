"""Split the staged rows into masking shards, and merge the masked shards back into one dataset.

Masking is the slow stage, so it runs once per shard: one Airflow mapped task instance each
(Celery workers share them), or one after another without Airflow. A shard is a contiguous
run of staged rows from one landing partition (`landing/YYYY-MM/`), split evenly so that no
shard holds more than `shard_rows` rows. Concatenating the masked shards in plan order gives
exactly the rows, in exactly the order, that masking the whole file at once would give; the
pseudonyms agree across shards because they are a keyed HMAC of the value, not a lookup table.

Shard inputs hold raw text and live in the raw zone (`staging/<run>/mask_shards/`); masked
shard outputs go to `runs/<run>/mask_shards/<shard_id>/` (the layout `tasks.data.mask.mask_dataset`
writes). The plan and every result hold paths, ids and counts only.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.common.jsonl import read_objects
from tasks.common.rawzone import open_private, private_dir, write_private
from tasks.data.mask import publish_masked

log = logging.getLogger(__name__)

UNPARTITIONED = "unpartitioned"  # rows from files directly under landing/, not in a month folder
MASKED_NAME = "train.jsonl"


def partition_of(source_file: Any) -> str:
    """The landing partition a staged row came from: the `YYYY-MM` folder of its source file."""
    from tasks.data.ingest import PARTITION_RE

    if isinstance(source_file, str) and "/" in source_file:
        top = source_file.split("/", 1)[0]
        if PARTITION_RE.match(top):
            return top
    return UNPARTITIONED


def _staged(rows_path: Path) -> Iterator[dict]:
    return read_objects(
        rows_path, fields=("record_id", "record_type", "text"), hint="; staged rows must come from ingest"
    )


def _runs(rows_path: Path) -> list[tuple[str, int]]:
    """(partition, rows) for each contiguous run of rows from one partition, in file order."""
    runs: list[tuple[str, int]] = []
    for row in _staged(rows_path):
        partition = partition_of(row.get("source_file"))
        if runs and runs[-1][0] == partition:
            runs[-1] = (partition, runs[-1][1] + 1)
        else:
            runs.append((partition, 1))
    return runs


def plan_shards(rows_path: Path, shards_dir: Path, shard_rows: int) -> list[dict]:
    """Write the shard files under `shards_dir` and return one small dict per shard, in input order.

    Every input row lands in exactly one shard. Always at least one shard (an empty input gives
    one empty shard), so the mapped masking task and the merge still run. Re-planning replaces
    the previous plan's files.
    """
    rows_path, shards_dir = Path(rows_path), Path(shards_dir)
    if shard_rows < 1:
        raise ValueError(f"mask.shard_rows={shard_rows}: expected a whole number >= 1")
    sizes: list[tuple[str, int, int, int]] = []  # partition, part, parts, rows
    for partition, n in _runs(rows_path) or [(UNPARTITIONED, 0)]:
        parts = max(1, math.ceil(n / shard_rows))
        # Even split: 4001 rows at 2000 a shard → 1334 + 1334 + 1333, not 2000 + 2000 + 1.
        sizes += [(partition, p + 1, parts, n // parts + (1 if p < n % parts else 0)) for p in range(parts)]

    if shards_dir.exists():
        shutil.rmtree(shards_dir)
    private_dir(shards_dir)  # shard inputs hold raw text: owner-only, like the staged rows
    shards: list[dict] = []
    rows = _staged(rows_path)
    start = 0
    for index, (partition, part, parts, n) in enumerate(sizes):
        shard_id = f"shard-{index:04d}"
        path = shards_dir / f"{shard_id}.jsonl"
        with open_private(path) as out:
            for _ in range(n):
                row = next(rows, None)
                if row is None:
                    raise RuntimeError(f"{rows_path} changed while the masking shards were planned; re-run the task")
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        shards.append(
            {
                "shard_id": shard_id,
                "index": index,
                "partition": partition,
                "part": part,
                "parts": parts,
                "rows": n,
                "first_row": start,
                "path": str(path),
                "label": f"{partition} {part}/{parts}",
            }
        )
        start += n
    if next(rows, None) is not None:  # the file grew between the two passes
        raise RuntimeError(f"{rows_path} changed while the masking shards were planned; re-run the task")
    write_private(shards_dir / "plan.json", json.dumps(shards, indent=2) + "\n")
    log.info(
        "masking plan: %d rows in %d shards over %d partitions (at most %d rows a shard)",
        start,
        len(shards),
        len({s["partition"] for s in shards}),
        shard_rows,
    )
    return shards


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def merge_shards(
    shards: list[dict], shard_out_dirs: list[Path], out_dir: Path, max_residual_share: float | None
) -> dict:
    """Concatenate the masked shards in plan order into out_dir/train.jsonl, with the files and
    result `tasks.data.mask.mask_dataset` writes for a whole dataset; apply the residual threshold to
    the totals.

    Raises ResidualPiiError (leaving no train.jsonl) above `max_residual_share`.
    """
    out_dir = Path(out_dir)
    if len(shards) != len(shard_out_dirs):
        raise ValueError(f"{len(shards)} shards but {len(shard_out_dirs)} shard outputs")
    if max_residual_share is not None and not 0 <= max_residual_share <= 1:
        raise ValueError(f"max_residual_share={max_residual_share}: expected a share between 0 and 1 (or None)")
    out_dir.mkdir(parents=True, exist_ok=True)
    masked_path, tmp_path = out_dir / MASKED_NAME, out_dir / f"{MASKED_NAME}.tmp"
    entities: Counter = Counter()
    residual: Counter = Counter()
    flagged: list[str] = []
    partitions: Counter = Counter()
    rows = 0
    try:
        with open(tmp_path, "wb") as out:
            for shard, shard_dir in zip(shards, shard_out_dirs):
                shard_dir = Path(shard_dir)
                part = shard_dir / MASKED_NAME
                if not part.is_file():
                    raise FileNotFoundError(
                        f"masked shard {shard['shard_id']} not found: {part} (its mask_shard task has not succeeded)"
                    )
                n = _count_lines(part)
                if n != shard["rows"]:  # a stale or partial output must never be published
                    raise RuntimeError(
                        f"masked shard {shard['shard_id']} ({part}) holds {n} rows, "
                        f"the plan says {shard['rows']}; re-run its mask_shard task"
                    )
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out)
                entities.update(json.loads((shard_dir / "entities.json").read_text()))
                found = json.loads((shard_dir / "residual.json").read_text())
                residual.update(found["residual"])
                flagged += found["record_ids"]
                partitions[shard["partition"]] += n
                rows += n
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise

    entity_counts, residual_counts, share = publish_masked(
        out_dir,
        tmp_path,
        masked_path,
        rows=rows,
        entities=entities,
        residual=residual,
        flagged=flagged,
        max_residual_share=max_residual_share,
    )
    log.info(
        "merged %d masked shards: %d rows, %d entities; residual in %d records",
        len(shards),
        rows,
        sum(entity_counts.values()),
        len(flagged),
    )
    return {
        "rows": rows,
        "entities": entity_counts,
        "entities_total": sum(entity_counts.values()),
        "masked_path": str(masked_path),
        "residual": residual_counts,
        "residual_share": share,
        "residual_records": len(flagged),
        "max_residual_share": max_residual_share,
        "shards": len(shards),
        "partitions": dict(sorted(partitions.items())),
    }
