"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader (or a crashed job restarting) sees either the old file or the complete new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", mode_bits: int | None = None
) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit it replaces ``path`` atomically.
    ``mode_bits`` (e.g. ``0o600`` for a secret) replaces the ordinary umask-based permissions; the
    temporary file has them from its creation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600; outputs get ordinary permissions unless asked otherwise.
        os.chmod(tmp, (0o666 & ~_UMASK) if mode_bits is None else mode_bits)
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once at import (os.umask can only be read by setting it, which is not thread-safe later on).
_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as handle:
        handle.write(text)
