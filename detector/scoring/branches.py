"""The adapters that turn the project's models into pipeline branches (see :mod:`detector.scoring.pipeline`).

One set, used by every scorer (:class:`detector.bundle.ProvenanceDetector`, bundle fitting,
``detector attribute``, hand-built pipelines). A backbone's pixels and features are computed once per
batch through :meth:`Batch.memo` (:class:`BackboneFeatures`): the detector head, the attribution head and
RIGID all read the same forward pass. Pixels come from :mod:`detector.data` (the one resize rule).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from detector.attribution import AttributionHead
from detector.data import image_batch
from detector.result import AttributionEvidence, WatermarkEvidence
from detector.scoring.pipeline import AttributionBranch, Batch, PassiveBranch, WatermarkBranch

#: Passive branch names (a fusion model is fitted on exactly these, and results report them).
DETECTOR_BRANCH = "detector"
DISTANCE_BRANCH = "attribution_distance"
RIGID_BRANCH = "rigid"
INVERSION_BRANCH = "inversion"


class BackboneFeatures:
    """``batch -> N x feature_dim`` pooled features of a :class:`detector.backbones.Backbone` at input side
    ``size`` (default: the backbone's own), memoised in the batch, so every branch asking for the same
    backbone's features shares one forward pass. :meth:`inputs` is the resized pixel batch it encoded."""

    def __init__(self, backbone, size: int | None = None, key: str | None = None):
        self.backbone = backbone
        self.size = int(size or backbone.preprocess.image_size)
        self.key = key or f"features:{backbone.name}:{id(backbone)}:{self.size}"

    def inputs(self, batch: Batch) -> torch.Tensor:
        """The batch resized to ``N x 3 x size x size`` in [0, 1] (shared by every backbone of this size)."""
        return batch.memo(f"inputs:{self.size}", lambda b: image_batch(b.images, self.size))

    def _compute(self, batch: Batch) -> np.ndarray:
        return self.backbone.encode(self.inputs(batch)).cpu().numpy()

    def __call__(self, batch: Batch) -> np.ndarray:
        return batch.memo(self.key, self._compute)


def backbone_features(backbone, size: int | None = None, key: str | None = None) -> BackboneFeatures:
    """The memoised feature function of ``backbone`` at ``size`` (see :class:`BackboneFeatures`)."""
    return BackboneFeatures(backbone, size, key)


def detector_branch(
    head: torch.nn.Module, calibrator, features: Callable[[Batch], np.ndarray]
) -> PassiveBranch:
    """The trained detector head's calibrated P(fake) per image, on the shared backbone features."""

    @torch.inference_mode()
    def branch(batch: Batch) -> list[float]:
        device = next(head.parameters()).device
        feats = torch.from_numpy(np.asarray(features(batch))).to(device)
        logits = head(feats.float()).squeeze(-1).double().cpu().numpy()
        return [float(p) for p in np.atleast_1d(calibrator(logits))]

    return branch


def distance_branch(head: AttributionHead, features: Callable[[Batch], np.ndarray]) -> PassiveBranch:
    """The attribution head's unknown score: how far an image is from every known generator."""

    def branch(batch: Batch) -> list[float]:
        preds = head.predict(np.asarray(features(batch), dtype=np.float32))
        return [float(v) for v in preds.unknown_score]

    return branch


def rigid_branch(features: BackboneFeatures, config=None) -> PassiveBranch:
    """RIGID's ``1 - similarity`` under fixed noise (:mod:`detector.features.rigid`; higher = more likely
    generated), reusing the clean features: ``config.draws`` extra forwards per batch."""
    from detector.features.rigid import RigidConfig, rigid_score

    config = config or RigidConfig()

    def branch(batch: Batch) -> list[float]:
        clean = torch.from_numpy(features(batch))
        scores = rigid_score(features.backbone, features.inputs(batch), config, clean=clean)
        return [float(s) for s in scores.cpu().numpy()]

    return branch


def inversion_branch(inversion) -> PassiveBranch:
    """A fitted inversion branch's (:class:`detector.bundle.inversion.InversionBranch`) log-odds of
    "generated"."""
    return lambda batch: inversion.scores(batch.images)


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
