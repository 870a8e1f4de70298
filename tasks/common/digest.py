"""File digests in bounded memory: model weights and datasets are gigabytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def update_from_file(h, path: Path):
    """Feed `path` to hash object `h` in 1 MiB blocks; returns `h`."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h


def sha256_file(path: Path) -> str:
    return update_from_file(hashlib.sha256(), path).hexdigest()
