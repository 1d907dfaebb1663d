"""Adapters that turn the project's models into pipeline branches (see :mod:`detector.scoring.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector.attribution import AttributionHead
from detector.result import AttributionEvidence
from detector.scoring.pipeline import AttributionBranch, Batch


def backbone_features(backbone, key: str | None = None) -> Callable[[Batch], np.ndarray]:
    """``batch -> N x feature_dim`` pooled features of a :class:`detector.backbones.Backbone`, memoised
    in the batch under ``key`` (default: the backbone's name and weights id), so every branch asking for
    the same backbone's features shares one forward pass."""
    import torch

    from detector.corpus.dataset import to_tensor

    transform = backbone.transform()
    key = key or f"features:{backbone.name}:{backbone.weights_id}"

    def compute(batch: Batch) -> np.ndarray:
        arrays = [transform(image=np.asarray(img, dtype=np.uint8))["image"] for img in batch.images]
        images = torch.stack([to_tensor(a) for a in arrays])
        return backbone.encode(images).cpu().numpy()

    return lambda batch: batch.memo(key, compute)


def attribution_branch(
    head: AttributionHead, features: Callable[[Batch], np.ndarray], top_k: int = 3
) -> AttributionBranch:
    """An attribution branch from a fitted head and a ``batch -> N x D`` feature function.

    Pass a feature function that goes through :meth:`Batch.memo` so the attribution head reuses the
    backbone forward the passive detector already ran on the batch."""

    def branch(batch: Batch) -> list[AttributionEvidence]:
        preds = head.predict(np.asarray(features(batch), dtype=np.float32))
        out = []
        for i in range(len(batch)):
            item = preds.item(i, k=top_k)
            out.append(
                AttributionEvidence(
                    top_k=item.top_k,
                    unknown_score=item.unknown_score,
                    is_unknown=item.is_unknown,
                    score_name=item.score_name,
                    threshold=item.threshold,
                )
            )
        return out

    return branch
