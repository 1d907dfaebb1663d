"""Feature files: the matrices attribution works on, stored without pickle.

A feature file is a ``.npz`` holding ``features`` (N x D float) and, where known, ``generators`` (N
strings), ``paths``, ``splits`` and ``families`` (N strings each); a bare ``.npy`` with the N x D
matrix alone (enough for enrolment and prediction, where the label is given or wanted); or a feature
folder as ``detector features extract --out DIR`` writes it (``features.npy`` + ``records.csv`` with
one row per feature row). Strings are
stored as fixed-width unicode arrays, so ``np.load(..., allow_pickle=False)`` reads them back: a
feature file from a stranger cannot run code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import DetectorError
from detector.io import atomic_write_bytes

_TEXT_KEYS = ("generators", "paths", "splits", "families")


class FeatureFileError(DetectorError, ValueError):
    """A feature file is missing, malformed or lacks a column the caller needs."""


@dataclass
class FeatureSet:
    """N feature vectors and the per-row facts that travel with them (empty lists when unknown)."""

    features: np.ndarray
    generators: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        if self.features.ndim != 2:
            raise FeatureFileError(f"features must be N x D, got shape {self.features.shape}")
        if not np.isfinite(self.features).all():
            raise FeatureFileError("features contain NaN or infinite values")
        for key in _TEXT_KEYS:
            values = [str(v) for v in getattr(self, key)]
            if values and len(values) != len(self.features):
                raise FeatureFileError(
                    f"{key} has {len(values)} entries for {len(self.features)} feature rows"
                )
            setattr(self, key, values)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def select(self, mask: np.ndarray) -> FeatureSet:
        """The rows where ``mask`` (boolean, length N) is true."""
        mask = np.asarray(mask, dtype=bool)
        idx = np.flatnonzero(mask)
        return FeatureSet(
            self.features[idx],
            **{key: [getattr(self, key)[i] for i in idx] if getattr(self, key) else [] for key in _TEXT_KEYS},
        )

    def split(self, name: str) -> FeatureSet:
        if not self.splits:
            raise FeatureFileError(
                f"the feature file has no 'splits' column, so split {name!r} cannot be chosen"
            )
        return self.select(np.array([s == name for s in self.splits]))

    def require_generators(self, where: str) -> list[str]:
        if not self.generators:
            raise FeatureFileError(f"{where}: the feature file has no 'generators' column (a .npz is needed)")
        return self.generators


def save_features(features: FeatureSet, path: str | Path) -> Path:
    """Write a ``.npz`` feature file atomically (no pickled objects inside)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"features": features.features}
    for key in _TEXT_KEYS:
        values = getattr(features, key)
        if values:
            arrays[key] = np.asarray(values, dtype=np.str_)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_features(path: str | Path) -> FeatureSet:
    """Read a ``.npz`` or ``.npy`` feature file (pickled content is refused)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such feature file")
    try:
        if path.suffix == ".npy":
            return FeatureSet(np.load(path, allow_pickle=False))
        with np.load(path, allow_pickle=False) as data:
            if "features" not in data.files:
                raise FeatureFileError(f"a .npz feature file needs a 'features' array, found {data.files}")
            return FeatureSet(
                data["features"],
                **{key: data[key].tolist() if key in data.files else [] for key in _TEXT_KEYS},
            )
    except FeatureFileError as exc:
        raise FeatureFileError(f"{path}: {exc}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: not a readable feature file ({exc})") from None


def _load_folder(folder: Path) -> FeatureSet:
    """``features.npy`` + ``records.csv`` (columns path, generator, split, optionally family), row-aligned."""
    import csv

    matrix, records = folder / "features.npy", folder / "records.csv"
    if not matrix.is_file() or not records.is_file():
        raise FeatureFileError(f"{folder}: a feature folder needs features.npy and records.csv")
    features = load_features(matrix).features
    with open(records, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != len(features):
        raise FeatureFileError(f"{folder}: records.csv has {len(rows)} rows for {len(features)} feature rows")
    columns = set(rows[0]) if rows else set()
    if "generator" not in columns:
        raise FeatureFileError(f"{folder}/records.csv: no 'generator' column")

    def column(name: str) -> list[str]:
        return [row[name] for row in rows] if name in columns else []

    return FeatureSet(
        features,
        generators=column("generator"),
        paths=column("path"),
        splits=column("split"),
        families=column("family"),
    )
