"""A content-addressed feature cache: sharded safetensors files plus a SQLite index.

Keys are ``(sha256 of the file's bytes, extractor name, weights id, preprocessing)``: renaming or
moving an image keeps its features, editing one byte or changing the model does not. The last three
parts name a *namespace* folder; inside it, ``index.sqlite`` maps a content hash to ``(shard, row)``
and each shard is one safetensors file with a ``features`` matrix.

Why this shape: shards are written whole and atomically (temp file + rename) *before* their rows enter
the index in one transaction, so a crash loses at most the shard in flight and a rerun recomputes
only what is missing (resumable). Reading goes shard by shard, so memory stays flat. A shard that no
longer reads back (disk damage, a truncated copy) is reported, dropped from the index and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from detector.errors import DetectorError
from detector.io import atomic_write_bytes, atomic_write_text

CACHE_FORMAT = 1
DEFAULT_SHARD_SIZE = 1024


class CacheError(DetectorError, RuntimeError):
    """The cache folder is unusable (e.g. its metadata does not match the extractor)."""


class Extractor(Protocol):
    """What the cache needs to know about anything that turns images into vectors."""

    name: str
    feature_dim: int

    @property
    def weights_id(self) -> str: ...


def namespace_meta(extractor: Extractor) -> dict:
    """Everything that makes features differ besides the image bytes."""
    preprocess = getattr(extractor, "preprocess", None)
    return {
        "format": CACHE_FORMAT,
        "extractor": extractor.name,
        "weights_id": extractor.weights_id,
        "preprocess": preprocess.key if preprocess is not None else "",
        "feature_dim": int(extractor.feature_dim),
    }


def namespace_dir(root: str | Path, meta: dict) -> Path:
    """``root/<readable name>-<hash of meta>``: one folder per (extractor, weights, preprocessing)."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", meta["extractor"]).strip("_")[:48] or "features"
    return Path(root) / f"{readable}-{digest}"


@dataclass
class CacheStats:
    entries: int
    shards: int
    bytes: int
    feature_dim: int
    problems: list[str] = field(default_factory=list)


def write_shard(folder: str | Path, features: np.ndarray) -> str:
    """Write one shard file atomically (not yet indexed); returns its name in ``folder``."""
    from safetensors.numpy import save

    matrix = np.ascontiguousarray(features, dtype=np.float32)
    shard = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.safetensors"
    atomic_write_bytes(Path(folder) / shard, save({"features": matrix}))
    return shard


class FeatureCache:
    """One namespace of the cache. Use :meth:`for_extractor` to open the right one."""

    def __init__(self, folder: str | Path, meta: dict, shard_size: int = DEFAULT_SHARD_SIZE):
        self.folder = Path(folder)
        self.meta = meta
        self.dim = int(meta["feature_dim"])
        self.shard_size = max(1, int(shard_size))
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "meta.json"
        if meta_path.exists():
            existing = json.loads(meta_path.read_text())
            if existing != meta:
                raise CacheError(f"{self.folder}: metadata {existing} does not match {meta}")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self._db = sqlite3.connect(self.folder / "index.sqlite", timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (sha TEXT PRIMARY KEY, shard TEXT NOT NULL, row INTEGER NOT NULL)"
        )
        self._db.commit()
        self._pending_keys: list[str] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    @classmethod
    def for_extractor(cls, root: str | Path, extractor, shard_size: int = DEFAULT_SHARD_SIZE) -> FeatureCache:
        meta = namespace_meta(extractor)
        return cls(namespace_dir(root, meta), meta, shard_size)

    # -- lookups --------------------------------------------------------------------------------------
    def lookup(self, keys: Iterable[str]) -> dict[str, tuple[str, int]]:
        """``{sha: (shard, row)}`` for the keys present (queried in chunks: any number of keys)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sha, shard, row in self._db.execute(
                f"SELECT sha, shard, row FROM entries WHERE sha IN ({marks})", chunk
            ):
                found[sha] = (shard, int(row))
        return found

    def __contains__(self, key: str) -> bool:
        return bool(self.lookup([key]))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def _load_shard(self, shard: str) -> np.ndarray:
        from safetensors.numpy import load_file

        matrix = load_file(str(self.folder / shard))["features"]
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"shape {matrix.shape}, expected (n, {self.dim})")
        return matrix

    def read(
        self, locations: dict[str, tuple[str, int]]
    ) -> Iterator[tuple[list[str], np.ndarray | None, str | None]]:
        """Yield ``(keys, features, None)`` per shard, or ``(keys, None, reason)`` when a shard is
        unreadable (its index rows are dropped, so those keys become misses)."""
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for key, (shard, row) in locations.items():
            by_shard.setdefault(shard, []).append((key, row))
        for shard, items in by_shard.items():
            keys = [k for k, _ in items]
            try:
                matrix = self._load_shard(shard)
                rows = np.array([r for _, r in items])
                if rows.max() >= len(matrix):
                    raise ValueError(f"row {rows.max()} beyond {len(matrix)} rows")
            except Exception as exc:
                self.forget_shard(shard)
                yield keys, None, f"cache shard {shard} unreadable ({type(exc).__name__}: {exc}); recomputing"
                continue
            yield keys, matrix[rows], None

    def forget_shard(self, shard: str) -> None:
        self._db.execute("DELETE FROM entries WHERE shard = ?", (shard,))
        self._db.commit()

    # -- writes ---------------------------------------------------------------------------------------
    def add(self, keys: list[str], features: np.ndarray) -> None:
        """Buffer rows; a full shard is written (atomically) and indexed."""
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (len(keys), self.dim):
            raise ValueError(f"expected features of shape ({len(keys)}, {self.dim}), got {features.shape}")
        self._pending_keys.extend(keys)
        self._pending.append(features)
        self._pending_rows += len(keys)
        if self._pending_rows >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one shard, then index them in one transaction."""
        if not self._pending_rows:
            return
        shard = write_shard(self.folder, np.concatenate(self._pending, axis=0))
        self.index_shard(shard, self._pending_keys)
        self._pending_keys, self._pending, self._pending_rows = [], [], 0

    def index_shard(self, shard: str, keys: list[str]) -> None:
        """Index a complete shard file (written by :func:`write_shard`, here or on another machine)."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO entries (sha, shard, row) VALUES (?, ?, ?)",
                [(key, shard, row) for row, key in enumerate(keys)],
            )

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- maintenance ----------------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        shards = sorted(p for p in self.folder.glob("shard-*.safetensors"))
        referenced = {s for (s,) in self._db.execute("SELECT DISTINCT shard FROM entries")}
        problems = [f"{s}: indexed but missing" for s in referenced if not (self.folder / s).exists()]
        orphans = [p.name for p in shards if p.name not in referenced]
        if orphans:
            problems.append(f"{len(orphans)} shard(s) not in the index (interrupted writes); safe to delete")
        return CacheStats(
            entries=len(self),
            shards=len(shards),
            bytes=sum(os.path.getsize(p) for p in shards),
            feature_dim=self.dim,
            problems=problems,
        )
