"""Scoring bundles: the trained detector, attribution head, fusion and watermark reference as one model."""

from detector.bundle.cards import DEFAULT_MODEL, ModelCard, list_models, resolve_model
from detector.bundle.detector import (
    FORMAT,
    BundleError,
    ProvenanceDetector,
    load_watermarker,
)
from detector.bundle.fit import BundleConfig, build_bundle

__all__ = [
    "DEFAULT_MODEL",
    "FORMAT",
    "BundleConfig",
    "BundleError",
    "ModelCard",
    "ProvenanceDetector",
    "build_bundle",
    "list_models",
    "load_watermarker",
    "resolve_model",
]
