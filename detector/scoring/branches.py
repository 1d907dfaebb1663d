"""Adapters that turn the project's models into pipeline branches (see :mod:`detector.scoring.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector.attribution import AttributionHead
from detector.result import AttributionEvidence
from detector.scoring.pipeline import AttributionBranch, Batch


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
