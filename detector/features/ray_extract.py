"""`detector features extract --engine ray`: the cache's missing features computed on a Ray cluster.

Everything but hashing and computing is :func:`detector.features.extract.extract_features` (cache
lookup, the aligned matrix, recomputing an unreadable shard). Hashing here: CPU tasks read and hash the
files (:meth:`RayCompute.hash`). Computing: CPU tasks decode and
transform the missing images with the extractor's own transform (the local engine's dataset code),
a pool of actors that each build the extractor once encodes them and writes each Ray batch of
``shard_size`` rows as one cache shard, atomically, into the cache folder (which must be on a disk every
worker sees); the driver indexes a shard in the cache's SQLite index once it is complete. A shard whose
actor dies is never indexed (an orphan ``cache-info`` reports) and Ray retries the batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.features.cache import DEFAULT_SHARD_SIZE, FeatureCache, write_shard
from detector.features.extract import _no_progress
from detector.scoring.ray_engine import block_count


@dataclass(frozen=True)
class BackboneRecipe:
    """A picklable way to build a backbone on a worker."""

    name: str
    pretrained: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    state: dict | None = None  # weights to load: a randomly initialised backbone travels with its own

    def __call__(self):
        from detector.backbones import create_backbone

        kwargs = {} if self.pretrained is None else {"pretrained": self.pretrained}
        backbone = create_backbone(self.name, device=self.device, dtype=self.dtype, **kwargs)
        if self.state is not None:
            backbone.model.load_state_dict(self.state)
        return backbone

    def carrying_weights_of(self, extractor) -> BackboneRecipe:
        """This recipe, with ``extractor``'s weights when they are a random initialisation (which a
        worker could not rebuild: its features would not be the ones the cache namespace names)."""
        if not str(extractor.weights_id).startswith("random"):
            return self
        state = {k: v.detach().cpu() for k, v in extractor.model.state_dict().items()}
        return dataclasses.replace(self, state=state)


def transform_batch(batch: dict, transform, max_pixels: int | None = None) -> dict:
    """Decoded, transformed images (``N x 3 x H x W`` float32) of a batch of paths, or their errors."""
    from detector.corpus import Corpus, Record
    from detector.corpus.dataset import CorpusDataset
    from detector.io import DEFAULT_MAX_PIXELS

    paths = [str(p) for p in batch["path"]]
    corpus = Corpus([Record(path=p, label="real") for p in paths], Path("/"))
    dataset = CorpusDataset(corpus, transform=transform, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    samples = [dataset[i] for i in range(len(paths))]
    shape = next((tuple(s["image"].shape) for s in samples if "image" in s), (3, 1, 1))
    images = np.zeros((len(paths), *shape), dtype=np.float32)
    errors: list[str] = []
    for i, sample in enumerate(samples):
        if "image" in sample:
            images[i] = sample["image"].numpy()
            errors.append("")
        else:
            errors.append(sample["error"].partition(": ")[2] or sample["error"])
    return {"key": batch["key"], "path": paths, "image": images, "error": errors}


def hash_batch(batch: dict) -> dict:
    """Content hashes of a batch of paths (a CPU task): ``sha`` or the ``reason`` it failed."""
    from detector.features.extract import hash_file

    pairs = [hash_file(str(p)) for p in batch["path"]]
    return {"sha": [s or "" for s, _ in pairs], "reason": [r or "" for _, r in pairs]}


class EncodeActor:
    """Builds the extractor once; encodes a Ray batch and writes it as one (unindexed) cache shard."""

    def __init__(self, recipe: Callable, folder: str, batch_size: int, weights_id: str, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.extractor = recipe()
        if self.extractor.weights_id != weights_id:
            raise RuntimeError(
                f"the worker's extractor has weights {self.extractor.weights_id}, the driver's {weights_id}: "
                "its features would not belong in this cache namespace"
            )
        self.folder = folder
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        good = [i for i, error in enumerate(batch["error"]) if not error]
        failed = [
            (str(batch["path"][i]), str(batch["error"][i]))
            for i in range(len(batch["error"]))
            if i not in good
        ]
        shard, keys = "", []
        if good:
            parts = []
            for start in range(0, len(good), self.batch_size):
                rows = good[start : start + self.batch_size]
                images = torch.from_numpy(np.ascontiguousarray(batch["image"][rows]))
                parts.append(self.extractor.encode(images).float().cpu().numpy())
            shard = write_shard(self.folder, np.concatenate(parts, axis=0))
            keys = [str(batch["key"][i]) for i in good]
        return {
            "shard": [shard],
            "keys": [keys],
            "failed_paths": [[p for p, _ in failed]],
            "failed_reasons": [[r for _, r in failed]],
            "count": [len(batch["error"])],
        }


@dataclass
class RayCompute:
    """``compute_missing`` on Ray (pass as ``extract_features(..., compute=RayCompute(...))``)."""

    recipe: Callable
    workers: int = 1
    cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    decode_cpus: float = 0.25
    shard_size: int = 256
    address: str | None = None

    def _start(self):
        from detector.scoring.ray_engine import require_ray

        ray = require_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        return ray, started_here

    def hash(self, corpus, progress=None) -> tuple[list[str | None], list[tuple[str, str]]]:
        """:func:`~detector.features.extract.hash_records` with the files read by CPU tasks on the cluster
        (pass as ``extract_features(..., hasher=...)``): every file is read once, by a worker."""
        paths = [os.fspath(corpus.resolve(record)) for record in corpus.records]
        hashes: list[str | None] = []
        failed: list[tuple[str, str]] = []
        if not paths:
            return hashes, failed
        ray, started_here = self._start()
        try:
            dataset = ray.data.from_items(
                [{"path": p} for p in paths], override_num_blocks=block_count(len(paths), self.workers, 1024)
            ).map_batches(hash_batch, batch_size=256, num_cpus=self.decode_cpus)
            with (progress or _no_progress)("hashing (ray)", len(paths)) as advance:
                for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
                    for sha, reason in zip(batch["sha"], batch["reason"], strict=True):
                        path = paths[len(hashes)]
                        hashes.append(str(sha) or None)
                        if reason:
                            failed.append((path, str(reason)))
                    advance(len(batch["sha"]))
        finally:
            if started_here:
                ray.shutdown()
        if len(hashes) != len(paths):
            raise RuntimeError(f"Ray hashed {len(hashes)} of {len(paths)} files")
        return hashes, failed

    def __call__(
        self,
        corpus,
        indices: Sequence[int],
        hashes: Sequence[str | None],
        extractor,
        cache: FeatureCache,
        batch_size: int = 32,
        num_workers: int = 0,
        progress=None,
    ) -> list[tuple[str, str]]:
        from detector.scoring.ray_engine import check_resources

        failed: list[tuple[str, str]] = []
        if not indices:
            return failed
        ray, started_here = self._start()
        check_resources(ray, self.workers, self.cpus_per_worker, self.num_gpus_per_worker, self.decode_cpus)
        recipe = self.recipe
        if isinstance(recipe, BackboneRecipe):
            recipe = recipe.carrying_weights_of(extractor)
        rows = [{"key": hashes[i], "path": os.fspath(corpus.resolve(corpus.records[i]))} for i in indices]
        try:
            dataset = (
                ray.data.from_items(
                    rows, override_num_blocks=block_count(len(rows), self.workers, per_block=1024)
                )
                .map_batches(
                    transform_batch,
                    fn_kwargs={"transform": extractor.transform()},
                    batch_size=batch_size,
                    num_cpus=self.decode_cpus,
                )
                .map_batches(
                    EncodeActor,
                    fn_constructor_args=(
                        recipe,
                        str(cache.folder),
                        batch_size,
                        str(extractor.weights_id),
                        int(self.cpus_per_worker),
                    ),
                    batch_size=max(1, self.shard_size),
                    compute=ray.data.ActorPoolStrategy(size=self.workers),
                    num_cpus=self.cpus_per_worker,
                    num_gpus=self.num_gpus_per_worker,
                )
            )
            label = f"features ({extractor.name}, ray)"
            with (progress or _no_progress)(label, len(rows)) as advance:
                for row in dataset.iter_rows():
                    if row["shard"]:
                        cache.index_shard(str(row["shard"]), [str(k) for k in row["keys"]])
                    failed += list(
                        zip(map(str, row["failed_paths"]), map(str, row["failed_reasons"]), strict=True)
                    )
                    advance(int(row["count"]))
        finally:
            if started_here:
                ray.shutdown()
        return failed


__all__ = ["DEFAULT_SHARD_SIZE", "BackboneRecipe", "RayCompute"]
