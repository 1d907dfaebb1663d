"""Fusion: branch scores and watermark evidence into one calibrated p_ai, a verdict and a ProvenanceResult."""

from detector.fusion.model import FusionConfig, FusionError, FusionModel, watermark_log_lr
from detector.fusion.verdict import decide, fuse, watermark_found

__all__ = [
    "FusionConfig",
    "FusionError",
    "FusionModel",
    "decide",
    "fuse",
    "watermark_found",
    "watermark_log_lr",
]
