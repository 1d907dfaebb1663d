"""The attacks of the watermark attack suite: each maps an H x W x 3 uint8 image to an attacked one.

Benign-but-hostile transformations (resize, aspect, rotation, flip, screenshot, crop, compression,
denoising) are plain functions of one image. The key-free *estimation* attacks (copy, subtraction) need
marked images the attacker collected: :func:`residual` is what they can estimate of a mark from one
marked image (the image minus a denoised copy of it), :func:`averaged_residual` its mean over many
(content averages away, a mark shared by all of them adds up).
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.uint8))


def resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return np.asarray(_pil(image).resize(size, Image.Resampling.LANCZOS))


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A change of aspect ratio: the whole picture squeezed to ``width x height``."""
    return np.asarray(_pil(image).resize((width, height), Image.Resampling.LANCZOS))


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation about the centre, same canvas, the uncovered corners black."""
    if not degrees:
        return image
    return np.asarray(_pil(image).rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))


def hflip(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def crop_area(image: np.ndarray, area: float, seed: int = 0) -> np.ndarray:
    """A crop keeping ``area`` of the picture (same aspect), at a seeded random position."""
    h, w = image.shape[:2]
    ch, cw = max(8, round(h * math.sqrt(area))), max(8, round(w * math.sqrt(area)))
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(image[top : top + ch, left : left + cw])


def compress(image: np.ndarray, fmt: str, quality: int, subsampling: int | None = None) -> np.ndarray:
    """A codec round trip; ``subsampling`` (JPEG, PIL's numbering: 0 = 4:4:4, 2 = 4:2:0) else PIL's default."""
    buf = io.BytesIO()
    extra = {} if subsampling is None else {"subsampling": subsampling}
    _pil(image).save(buf, format=fmt, quality=quality, **extra)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def screenshot(image: np.ndarray) -> np.ndarray:
    """A screenshot-like chain: shown at 0.7x, captured with a UI border (title bar and frame)."""
    small = resize(image, 0.7)
    h, w = small.shape[:2]
    canvas = np.full((h + 40, w + 16, 3), 236, dtype=np.uint8)
    canvas[:28] = (60, 63, 65)  # title bar
    canvas[32 : 32 + h, 8 : 8 + w] = small
    return canvas


def nlm(image: np.ndarray, strength: float = 5.0) -> np.ndarray:
    """Non-local-means denoising (OpenCV, colour)."""
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image), None, strength, strength, 7, 21)


def chain_rotate_resize_jpeg_crop(image: np.ndarray) -> np.ndarray:
    """The issue's chain: rotate 3 degrees, resize 0.6x, JPEG 60, crop to 70% of the area."""
    return crop_area(compress(resize(rotate(image, 3.0), 0.6), "JPEG", 60), 0.7, seed=1)


def residual(marked: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """What an attacker can estimate of the mark in one image: the image minus a denoised copy (float)."""
    x = marked.astype(np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), sigma)


def averaged_residual(marked_images: list[np.ndarray], sigma: float = 2.0) -> np.ndarray:
    """The mean residual over marked images of one size (a mark they share survives the mean)."""
    return np.mean([residual(m, sigma) for m in marked_images], axis=0)


def add_estimate(image: np.ndarray, estimate: np.ndarray, alpha: float) -> np.ndarray:
    """``image + alpha * estimate`` (alpha < 0 subtracts), the estimate cropped/tiled from the top-left."""
    h, w = image.shape[:2]
    eh, ew = estimate.shape[:2]
    est = np.tile(estimate, (-(-h // eh), -(-w // ew), 1))[:h, :w]
    return np.clip(image.astype(np.float32) + alpha * est + 0.5, 0, 255).astype(np.uint8)


#: name -> function of one image (the single-image transformations of the suite).
TRANSFORMS: dict[str, callable] = {
    "none": lambda x: x,
    **{f"resize{f:.1f}": (lambda x, f=f: resize(x, f)) for f in np.round(np.arange(0.3, 2.01, 0.1), 1)},
    "aspect512x384": lambda x: resize_to(x, 512, 384),
    **{f"rotate{d}": (lambda x, d=d: rotate(x, d)) for d in range(5, 31, 5)},
    "hflip": hflip,
    "screenshot": screenshot,
    "crop10%": lambda x: crop_area(x, 0.1, seed=2),
    "jpeg50": lambda x: compress(x, "JPEG", 50),
    "webp50": lambda x: compress(x, "WEBP", 50),
    "nlm": nlm,
    "chain(rot3,resize0.6,jpeg60,crop70%)": chain_rotate_resize_jpeg_crop,
    # How images travel: shrunk, then recompressed.
    "resize0.75+jpeg80": lambda x: compress(resize(x, 0.75), "JPEG", 80),
    "resize0.5+jpeg80": lambda x: compress(resize(x, 0.5), "JPEG", 80),
}
#: Edits a photographer makes to an image they own: the content binding should survive these.
BENIGN_EXTRA: dict[str, callable] = {
    "brightness1.3": lambda x: np.clip(x.astype(np.float32) * 1.3, 0, 255).astype(np.uint8),
    "saturation0.5": lambda x: np.asarray(Image.blend(_pil(x).convert("L").convert("RGB"), _pil(x), 0.5)),
}
