"""Small model files: numpy arrays in safetensors with a JSON description in the header.

Safetensors holds only tensors (no code, so loading an untrusted file cannot execute anything); the
header's ``detector`` entry carries the JSON that says what the arrays mean.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from detector.io.atomic import atomic_write_bytes

META_KEY = "detector"


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``meta`` (JSON-serialisable) as one safetensors file, atomically."""
    from safetensors.numpy import save

    path = Path(path)
    atomic_write_bytes(path, save(arrays, metadata={META_KEY: json.dumps(meta)}))
    return path


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` (with the reason) for one that is not such a file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"unreadable safetensors file ({exc})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"missing header: {exc}") from None
    return arrays, meta


def load_format(path: str | os.PathLike, fmt: str, error: type[Exception], what: str):
    """:func:`load_arrays` for a file that must be of format ``fmt`` (its ``meta["format"]``); a missing,
    unreadable or foreign file raises ``error`` naming the path and ``what`` it should have been."""
    try:
        arrays, meta = load_arrays(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except ValueError as exc:
        raise error(f"{path}: not a detector {what} ({exc})") from None
    if meta.get("format") != fmt:
        raise error(f"{path}: unsupported {what} format {meta.get('format')!r} (want {fmt})")
    return arrays, meta


#: Largest safetensors JSON header we parse. Ours are a few kB; the format itself caps it at 100 MB, but
#: a hostile file must not make us read even that into memory before we know it is sane.
MAX_HEADER_BYTES = 16 * 2**20


def check_safetensors_header(path: str | os.PathLike, max_header: int = MAX_HEADER_BYTES) -> None:
    """Refuse a safetensors file whose header length (its first 8 bytes) is absurd, before any parser
    reads the header: ``ValueError`` with the reason."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise ValueError(f"not a safetensors file ({size} bytes: too short for a header)")
    (length,) = struct.unpack("<Q", head)
    if length > max_header:
        raise ValueError(f"safetensors header of {length:,} bytes exceeds the limit of {max_header:,}")
    if length > size - 8:
        raise ValueError(f"safetensors header claims {length:,} bytes; the file holds {size - 8:,}")
