"""One encoding policy for both classes, so that file format carries no label.

Every image of a built corpus, real or fake, gets its format from the same rule: JPEG (quality drawn
uniformly from a range) for a ``jpeg_share`` of each stream of images, else PNG.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detector.io import atomic_write_bytes

#: Golden-ratio step of the low-discrepancy sequence that assigns formats within a stream.
_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class EncodingPolicy:
    """Format and JPEG quality per image. Within each stream (the real pool, or one generator) the
    JPEG share is met almost exactly (a golden-ratio sequence over the image index, offset by a seeded
    hash of the stream), so the real and fake format mixes match even in a tiny corpus; the quality
    is an independent seeded draw. Nothing depends on the label."""

    jpeg_share: float = 0.5
    jpeg_quality_min: int = 75
    jpeg_quality_max: int = 95
    seed: int = 0

    def choose(self, stream: str, index: int) -> tuple[str, int]:
        """``(extension, jpeg quality)`` for image ``index`` of ``stream`` (quality 0 for PNG)."""
        offset = zlib.crc32(f"{self.seed}|{stream}".encode()) / 2**32
        if (offset + index * _GOLDEN) % 1.0 < self.jpeg_share:
            rng = np.random.default_rng([self.seed, zlib.crc32(stream.encode()), index])
            return "jpg", int(rng.integers(self.jpeg_quality_min, self.jpeg_quality_max + 1))
        return "png", 0

    def path_for(self, folder: Path, key: str, stream: str, index: int) -> Path:
        return Path(folder) / f"{key}.{self.choose(stream, index)[0]}"

    @staticmethod
    def format_name(path: Path) -> str:
        """The manifest's ``format`` value for a file this policy wrote."""
        return "JPEG" if Path(path).suffix == ".jpg" else "PNG"

    def write(self, folder: Path, key: str, image: np.ndarray, stream: str, index: int) -> Path:
        """Encode an H x W x 3 uint8 image and write it atomically as ``folder/key.<ext>``."""
        ext, quality = self.choose(stream, index)
        buffer = io.BytesIO()
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
        if ext == "jpg":
            picture.save(buffer, "JPEG", quality=quality, subsampling=2 if quality < 90 else 0)
        else:
            picture.save(buffer, "PNG", compress_level=1)
        path = Path(folder) / f"{key}.{ext}"
        atomic_write_bytes(path, buffer.getvalue())
        return path
