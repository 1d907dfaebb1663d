"""Features for a whole corpus, through the cache: hash files, look up, compute only what is missing.

:func:`extract_features` is the library entry point other modules use (linear probes, attribution):
it returns a matrix aligned with the corpus records that loaded, the indices of those records, and the
files that failed with their reasons. Memory beyond the returned matrix stays flat: computed features
go to disk shard by shard, and ``out=`` writes the matrix to a memory-mapped ``.npy`` instead of RAM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from detector.corpus import Corpus, load_corpus
from detector.corpus.dataset import CorpusDataset, collate_skip_errors
from detector.corpus.shards import split_member
from detector.features.cache import DEFAULT_SHARD_SIZE, FeatureCache
from detector.io import file_sha256

#: ``progress(description, total)`` -> a context manager yielding ``advance(n)`` (the CLI's progress bar).
ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _no_progress(description: str, total: int):
    yield lambda n=1: None


@dataclass
class ExtractionReport:
    """What a run did: how many records were served from the cache, computed, or failed."""

    total: int = 0
    cached: int = 0
    computed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    cache_problems: list[str] = field(default_factory=list)
    cache_dir: str = ""

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "cached": self.cached,
            "computed": self.computed,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "cache_problems": self.cache_problems,
            "cache_dir": self.cache_dir,
        }


def hash_file(path: str | Path) -> tuple[str | None, str | None]:
    """``(sha256, None)`` for a readable file (or shard member), ``(None, reason)`` otherwise."""
    path = Path(path)
    try:
        if split_member(path) is None and path.stat().st_size == 0:
            raise OSError("empty file (0 bytes)")
        return file_sha256(path), None
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, exc.strerror or str(exc)


def hash_records(corpus: Corpus, progress: ProgressFactory = _no_progress):
    """Content hash per record (None when unreadable) plus ``(path, reason)`` for failures."""
    hashes: list[str | None] = []
    failed: list[tuple[str, str]] = []
    with progress("hashing", len(corpus.records)) as advance:
        for record in corpus.records:
            path = corpus.resolve(record)
            sha, reason = hash_file(path)
            hashes.append(sha)
            if reason is not None:
                failed.append((str(path), reason))
            advance(1)
    return hashes, failed


def compute_missing(
    corpus: Corpus,
    indices: Sequence[int],
    hashes: Sequence[str | None],
    extractor,
    cache: FeatureCache,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: ProgressFactory = _no_progress,
) -> list[tuple[str, str]]:
    """Run ``extractor.encode`` over records ``indices`` and add them to the cache; returns failures."""
    failed: list[tuple[str, str]] = []
    if not indices:
        return failed
    dataset = Subset(CorpusDataset(corpus, transform=extractor.transform()), list(indices))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_skip_errors,
        pin_memory=torch.device(getattr(extractor, "device", "cpu")).type == "cuda",
    )
    with progress(f"features ({extractor.name})", len(indices)) as advance:
        for batch in loader:
            for _, message in batch["errors"]:
                path, _, reason = message.partition(": ")
                failed.append((path, reason or message))
            if "image" in batch:
                features = extractor.encode(batch["image"]).float().cpu().numpy()
                keys = [hashes[int(i)] for i in batch["index"]]
                cache.add(keys, features)
            advance(len(batch["errors"]) + (len(batch["index"]) if "index" in batch else 0))
    cache.flush()
    return failed


def extract_features(
    corpus: Corpus | str | Path,
    extractor,
    cache_dir: str | Path,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    out: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: ProgressFactory = _no_progress,
    report: ExtractionReport | None = None,
    compute: Callable[..., list[tuple[str, str]]] = compute_missing,
    hasher: Callable[..., tuple[list[str | None], list[tuple[str, str]]]] = hash_records,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Features of every loadable record of ``corpus`` with ``extractor`` (a :class:`Backbone` or any
    object with ``name, weights_id, preprocess, feature_dim, transform(), encode()``).

    Returns ``(features [n_valid, D] float32, valid record indices, [(path, reason)] failures)``; row
    ``i`` of the matrix belongs to ``corpus.records[valid[i]]``. A second call is a cache lookup. With
    ``out`` the matrix is a memory-mapped ``.npy`` file there (flat memory for any corpus size).
    ``compute`` fills the cache for the missing records and ``hasher`` hashes the files
    (:func:`compute_missing`'s and :func:`hash_records`'s signatures; the Ray engine passes its own).
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    if device is not None and hasattr(extractor, "to"):
        extractor = extractor.to(device)
    report = report if report is not None else ExtractionReport()
    report.total = len(corpus.records)
    hashes, failed = hasher(corpus, progress)
    cache = FeatureCache.for_extractor(cache_dir, extractor, shard_size=shard_size)
    report.cache_dir = str(cache.folder)
    try:
        wanted = {h for h in hashes if h is not None}
        locations = cache.lookup(wanted)
        first_for_key: dict[str, int] = {}
        for index, key in enumerate(hashes):
            if key is not None and key not in locations:
                first_for_key.setdefault(key, index)
        report.cached = sum(1 for h in hashes if h is not None and h in locations)
        missing = sorted(first_for_key.values())
        new_failures = compute(corpus, missing, hashes, extractor, cache, batch_size, num_workers, progress)
        failed += new_failures
        report.computed = len(missing) - len(new_failures)
        first_index = {}
        for index, key in enumerate(hashes):
            if key is not None:
                first_index.setdefault(key, index)
        # Assemble shard by shard. Records whose image failed to decode never reach the cache, so they
        # drop out here and alignment is kept by ``valid``. An unreadable shard is recomputed once.
        for attempt in range(2):
            locations = cache.lookup(wanted)
            valid = [i for i, key in enumerate(hashes) if key is not None and key in locations]
            rows_of: dict[str, list[int]] = {}
            for row, i in enumerate(valid):
                rows_of.setdefault(hashes[i], []).append(row)
            if out is not None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                matrix = np.lib.format.open_memmap(
                    Path(out), mode="w+", dtype=np.float32, shape=(len(valid), cache.dim)
                )
            else:
                matrix = np.zeros((len(valid), cache.dim), dtype=np.float32)
            broken: list[int] = []
            for keys, features, problem in cache.read({key: locations[key] for key in rows_of}):
                if problem is not None:
                    report.cache_problems.append(problem)
                    broken += [first_index[k] for k in keys]
                    continue
                for key, vector in zip(keys, features, strict=True):
                    matrix[rows_of[key]] = vector
            if not broken:
                break
            if attempt == 1:  # still unreadable right after recomputing: report, and drop the rows
                lost = {hashes[i] for i in broken}
                failed += [(str(corpus.resolve(corpus.records[i])), "cache write failed") for i in broken]
                keep = [row for row, i in enumerate(valid) if hashes[i] not in lost]
                valid = [valid[row] for row in keep]
                matrix = np.asarray(matrix)[keep]
                break
            failed += compute(
                corpus, sorted(broken), hashes, extractor, cache, batch_size, num_workers, progress
            )
            report.computed += len(broken)
        if isinstance(matrix, np.memmap):
            matrix.flush()
    finally:
        cache.close()
    report.failed = failed
    return matrix, valid, failed
