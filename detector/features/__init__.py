"""Features for the passive detector: backbone embeddings (cached), diffusion inversion, RIGID."""

from detector.features.cache import CacheError, FeatureCache
from detector.features.extract import ExtractionReport, extract_features

__all__ = ["CacheError", "ExtractionReport", "FeatureCache", "extract_features"]
