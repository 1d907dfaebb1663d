"""detector: image provenance (AI-generated or not, watermark, source generator)."""

__version__ = "0.1.0"
