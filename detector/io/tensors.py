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
