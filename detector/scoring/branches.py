"""Adapters that turn the project's models into pipeline branches (see :mod:`detector.scoring.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector.attribution import AttributionHead
from detector.result import AttributionEvidence, WatermarkEvidence
from detector.scoring.pipeline import AttributionBranch, Batch, WatermarkBranch


def backbone_features(backbone, key: str | None = None) -> Callable[[Batch], np.ndarray]:
    """``batch -> N x feature_dim`` pooled features of a :class:`detector.backbones.Backbone`, memoised
    in the batch under ``key`` (default: the backbone's name and weights id), so every branch asking for
    the same backbone's features shares one forward pass."""
    from detector.corpus.dataset import stack_images

    transform = backbone.transform()
    key = key or f"features:{backbone.name}:{backbone.weights_id}"

    def compute(batch: Batch) -> np.ndarray:
        return backbone.encode(stack_images(batch.images, transform)).cpu().numpy()

    return lambda batch: batch.memo(key, compute)


def attribution_branch(
    head: AttributionHead, features: Callable[[Batch], np.ndarray], top_k: int = 3
) -> AttributionBranch:
    """An attribution branch from a fitted head and a ``batch -> N x D`` feature function.

    Pass a feature function that goes through :meth:`Batch.memo` so the attribution head reuses the
    backbone forward the passive detector already ran on the batch."""

    def branch(batch: Batch) -> list[AttributionEvidence]:
        return attribution_evidence(head, features(batch), top_k)

    return branch


def attribution_evidence(
    head: AttributionHead, features: np.ndarray, top_k: int = 3
) -> list[AttributionEvidence]:
    """The head's top-k generators and unknown score for each row of ``features``."""
    preds = head.predict(np.asarray(features, dtype=np.float32))
    out = []
    for i in range(len(preds.unknown_score)):
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


STATUS_NOTES = {
    "forged": "a mark of this key made for other content (copied, or the picture changed beyond the content "
    "hash's tolerance): tampering, not evidence that the image is AI-generated",
    "inverted": "the complement of a mark of this key (what subtracting a mark leaves): a removal attempt, "
    "not evidence either way",
}


def watermark_evidence(result) -> WatermarkEvidence:
    """A watermark decoder's result (``detector.watermark.WatermarkResult`` or anything with its fields:
    ``watermarked, p_value, bit_accuracy, bits, payload, record``) as the evidence a result carries."""
    record = getattr(result, "record", None)
    payload = getattr(result, "payload", None)
    p_value = getattr(result, "p_value", None)
    bit_accuracy = getattr(result, "bit_accuracy", None)
    status = getattr(result, "status", None)
    return WatermarkEvidence(
        detected=bool(result.watermarked),
        p_value=None if p_value is None else float(p_value),
        bit_accuracy=None if bit_accuracy is None else float(bit_accuracy),
        bits=getattr(result, "bits", None),
        payload=None if payload is None else str(payload),
        generator=(record or {}).get("generator"),
        record=dict(record) if record else None,
        status=status,
        note=STATUS_NOTES.get(status),
    )


def watermark_branch(watermarker) -> WatermarkBranch:
    """A watermark branch from a decoder with ``detect_array(H x W x 3 uint8, path=...)`` (the project's
    ``Watermarker``). Give the fusion the decoder's FPR (``FusionConfig.watermark_fpr``): the fusion
    decides what counts as found, from the p-value."""

    def branch(batch: Batch) -> list[WatermarkEvidence]:
        return [
            watermark_evidence(watermarker.detect_array(np.asarray(image, dtype=np.uint8), path=path))
            for path, image in zip(batch.paths, batch.images, strict=True)
        ]

    return branch
