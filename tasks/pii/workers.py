"""Worker processes for large inputs, and the package's entry points: mask_records and mask_texts.

Chunks of texts are spread over `workers` spawned processes, each loading its engines once;
results come back in input order and do not depend on the number of workers, the chunk size or
the batch size. mask_workers keeps a warm pool for every call inside a block.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.pii.dateshift import DateShift
from tasks.pii.key import MissingKeyError
from tasks.pii.masking import MaskedText, MaskJob, mask_chunk
from tasks.pii.spec import load_spec

log = logging.getLogger(__name__)

CHUNK_SIZE = 64  # texts per worker task (one spaCy batch, about half a second): fine enough to balance the workers
_WARM_POOLS: dict[tuple, Any] = {}


def _worker_init() -> None:
    from tasks.common import offline

    offline.apply()


def _load_engines(recognizers_path: str, language: str) -> int:
    """Load the engines in this (worker) process; errors come back to the caller with their message."""
    import time

    # A made-up text through the whole chunk path: spaCy, libphonenumber's region metadata, the
    # email check's suffix list and the regex caches all do lazy work on first use.
    warm_up = "Warm-up: Jane Doe, MBR-12345678, jane.doe@example.com, call (312) 555-0147, SSN 219-09-9999."
    mask_chunk([warm_up] * 4, MaskJob(b"warm-up", recognizers_path, 0.4, language, 64, True))
    time.sleep(0.05)  # long enough that each of a batch of these lands on another idle worker
    return os.getpid()


def usable_workers(workers: int) -> int:
    """`workers`, capped at the CPUs this process may use; 1 inside a daemon process (a Celery
    prefork child cannot start processes of its own)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if multiprocessing.current_process().daemon:
        if workers > 1:
            log.info("masking in one process: a daemon process (e.g. a Celery prefork child) cannot start workers")
        return 1
    return max(1, min(int(workers), cpus))


def _start_pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may be an Airflow task with threads running; a fresh
    # interpreter never inherits a lock held mid-fork. A worker that dies (OOM kill) fails the
    # call with BrokenProcessPool instead of hanging it, as multiprocessing.Pool would.
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )


@contextmanager
def mask_workers(workers: int = 2, *, recognizers_path: Path, language: str = "en") -> Iterator[int]:
    """Keep a pool of warm workers (engines loaded) for every masking call inside the block.

    Without it each call with workers > 1 starts and stops its own pool. Yields the number of
    workers once every worker has loaded its engines.
    """
    n = usable_workers(workers)
    if n <= 1:
        yield n
        return
    path = str(Path(recognizers_path).resolve())
    load_spec(Path(path))
    pool = _start_pool(n)
    key = (n, path, language)
    try:
        seen: set[int] = set()
        for _ in range(100):  # until every worker has answered (each loads its engines first)
            seen.update(f.result() for f in [pool.submit(_load_engines, path, language) for _ in range(2 * n)])
            if len(seen) >= n:
                break
        _WARM_POOLS[key] = pool
        yield n
    finally:
        _WARM_POOLS.pop(key, None)
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def mask_records(
    texts: Iterable[str],
    *,
    key: bytes,
    recognizers_path: Path,
    score_threshold: float = 0.4,
    language: str = "en",
    batch_size: int = 64,
    workers: int = 2,
    chunk_size: int = CHUNK_SIZE,
    residual: bool = True,
    date_shift: DateShift | None = None,
) -> Iterator[MaskedText]:
    """Yield a MaskedText per input text, in input order.

    Chunks of `chunk_size` texts are spread over `workers` processes, each loading its engines
    once; an input of one chunk stays in this process unless a `mask_workers` block keeps warm
    workers. The result does not depend on `workers`, `chunk_size` or `batch_size`. At most 2
    chunks per worker are in flight, so memory stays flat on a large partition. `date_shift`
    moves a subject's dates by its keyed offset instead of masking them (tasks.pii.dateshift).
    """
    if not key:
        raise MissingKeyError("the pseudonymisation key is empty; see resolve_key()")
    load_spec(recognizers_path)  # a bad YAML fails here, with its path, before any worker starts
    job = MaskJob(
        key, str(Path(recognizers_path).resolve()), score_threshold, language, batch_size, residual, date_shift
    )
    chunks = _chunks(texts, max(1, chunk_size))
    head = list(itertools.islice(chunks, 2))
    n = usable_workers(workers)
    pool = _WARM_POOLS.get((n, job.recognizers_path, language))
    if n <= 1 or (len(head) < 2 and pool is None):  # one chunk: not worth starting workers
        for chunk in itertools.chain(head, chunks):
            yield from mask_chunk(chunk, job)
        return

    owned = pool is None
    if owned:
        pool = _start_pool(n)
    pending: deque = deque()
    try:
        for chunk in itertools.chain(head, chunks):
            pending.append(pool.submit(mask_chunk, chunk, job))
            if len(pending) >= 2 * n:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:  # an error or an abandoned generator: drop the queued work
            future.cancel()
        if owned:
            pool.shutdown(wait=True, cancel_futures=True)


def mask_texts(
    texts: Iterable[str],
    *,
    key: bytes,
    recognizers_path: Path,
    score_threshold: float = 0.4,
    language: str = "en",
    batch_size: int = 64,
    workers: int = 2,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[tuple[str, Counter]]:
    """Yield (masked text, entity counts) per input text, in order (no residual scan)."""
    for m in mask_records(
        texts,
        key=key,
        recognizers_path=recognizers_path,
        score_threshold=score_threshold,
        language=language,
        batch_size=batch_size,
        workers=workers,
        chunk_size=chunk_size,
        residual=False,
    ):
        yield m.text, m.entities
