"""Batched inference of a :class:`~detector.training.model.RealFakeModel` over a DataLoader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from detector.corpus.dataset import CorpusDataset, collate_skip_errors


@dataclass
class LogitPredictions:
    """Raw logits per image that loaded, with targets, generator indices and dataset indices."""

    logits: np.ndarray
    targets: np.ndarray
    generators: np.ndarray
    indices: np.ndarray
    errors: list[tuple[int, str]] = field(default_factory=list)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when enabled; full precision on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_loader(
    dataset: CorpusDataset, batch_size: int, workers: int, sampler=None, shuffle=False, drop_last=False
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=workers,
        collate_fn=collate_skip_errors,
        persistent_workers=False,
        drop_last=drop_last,
    )


@torch.no_grad()
def predict(
    detector: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = True,
    advance: Callable[[int], None] | None = None,
) -> LogitPredictions:
    """Logits for every loadable image of ``loader`` (eval mode; bad files listed in ``errors``)."""
    was_training = detector.training
    detector.eval()
    logits, targets, gens, indices, errors = [], [], [], [], []
    try:
        for batch in loader:
            errors.extend(batch["errors"])
            if "image" in batch:
                with autocast(device, amp):
                    out = detector(batch["image"].to(device, non_blocking=True))
                logits.append(out["logit"].float().cpu())
                targets.append(batch["target"])
                gens.append(batch["generator"])
                indices.append(batch["index"])
            if advance is not None:
                advance(len(batch.get("index", [])) + len(batch["errors"]))
    finally:
        detector.train(was_training)

    def cat(parts, dtype):
        return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return LogitPredictions(
        cat(logits, np.float64), cat(targets, np.int64), cat(gens, np.int64), cat(indices, np.int64), errors
    )
