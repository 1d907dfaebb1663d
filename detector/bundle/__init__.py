"""Scoring bundles: the trained detector, attribution head, fusion and watermark reference as one model."""

from detector.bundle.detector import (
    FORMAT,
    BundleError,
    ProvenanceDetector,
    load_watermarker,
)
from detector.bundle.fit import BundleConfig, build_bundle

__all__ = ["FORMAT", "BundleConfig", "BundleError", "ProvenanceDetector", "build_bundle", "load_watermarker"]
