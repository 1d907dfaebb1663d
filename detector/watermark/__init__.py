"""The invisible watermark: learned embedder/decoder, distortion layer, keyed payload, registry, file API."""

from detector.watermark.api import (
    DEFAULT_FPR,
    Watermarker,
    WatermarkError,
    WatermarkResult,
    default_checkpoint,
    load_model,
)
from detector.watermark.model import WatermarkModel, WatermarkModelConfig
from detector.watermark.payload import KeyFileError, PayloadCodec, WatermarkKey, generate_key, load_key
from detector.watermark.registry import PayloadRecord, PayloadRegistry, RegistryError

__all__ = [
    "DEFAULT_FPR",
    "KeyFileError",
    "PayloadCodec",
    "PayloadRecord",
    "PayloadRegistry",
    "RegistryError",
    "WatermarkError",
    "WatermarkKey",
    "WatermarkModel",
    "WatermarkModelConfig",
    "WatermarkResult",
    "Watermarker",
    "default_checkpoint",
    "generate_key",
    "load_key",
    "load_model",
]
