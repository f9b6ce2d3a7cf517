"""Atomic file writes: write a temporary file, fsync, rename, fsync the folder.

A crash at any point leaves either the old file or the new one, never half of one.
The temporary file is made as ``tempfile.mkstemp`` makes one (a random name, created
exclusively, mode 0600), without importing ``tempfile``: it brings ``shutil`` and with it
``bz2`` and ``lzma``, half a megabyte the long-lived agent has no use for.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(folder, f".{target.name}.")
    try:
        # Set the mode before any secret byte lands in the file.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_temporary(folder: Path, prefix: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = str(folder / f"{prefix}{os.urandom(6).hex()}")
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name in {folder}")
