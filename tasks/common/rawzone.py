"""Owner-only files for the raw zone: landing, staging (incl. masking shards), quarantine, secrets.

Raw text with personal data, and the keys that protect it, are readable by the pipeline's own user
alone: folders 0700, files 0600, set when they are created (not after, so there is no window in
which another user can open them) and again on folders that already existed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) owner-only; an existing folder is narrowed to 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> IO:
    """Open `path` for writing, created (or truncated) as 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its old mode through O_CREAT: narrow it
    return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)


def write_private(path: Path, text: str) -> Path:
    with open_private(path) as fh:
        fh.write(text)
    return Path(path)


def lock_down(root: Path) -> None:
    """Folders 0700 and files 0600 under `root` (links are left alone, never followed)."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), FILE_MODE)
