"""The perturbation grid of ``detector eval``: each a fixed, seeded albumentations transform applied to
the full-resolution image *before* the model's own resize, as happens to images in the wild."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector.errors import DetectorError


class EvaluationError(DetectorError, ValueError):
    """An evaluation cannot run: an unknown perturbation, an empty split."""


class CenterCropFraction:
    """Keep the central ``fraction`` of each side."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        ch, cw = max(1, round(h * self.fraction)), max(1, round(w * self.fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        return image[top : top + ch, left : left + cw]


def _albu(transform) -> Callable[[np.ndarray], np.ndarray]:
    import albumentations as A

    pipeline = A.Compose([transform], seed=1234)
    return lambda image: pipeline(image=image)["image"]


def _resize(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    import albumentations as A
    import cv2

    return _albu(A.RandomScale(scale_limit=(scale - 1.0, scale - 1.0), interpolation=cv2.INTER_AREA, p=1.0))


def _jpeg(quality: int):
    import albumentations as A

    return _albu(A.ImageCompression(quality_range=(quality, quality), p=1.0))


def _blur():
    import albumentations as A

    return _albu(A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(1.0, 1.0), p=1.0))


def _noise():
    import albumentations as A

    return _albu(A.GaussNoise(std_range=(0.04, 0.04), p=1.0))


def _brightness():
    import albumentations as A

    return _albu(A.RandomBrightnessContrast(brightness_limit=(0.2, 0.2), contrast_limit=(0.0, 0.0), p=1.0))


#: name -> (description, factory). "clean" is the identity.
GRID: dict[str, tuple[str, Callable[[], Callable[[np.ndarray], np.ndarray] | None]]] = {
    "clean": ("no perturbation", lambda: None),
    "jpeg95": ("JPEG quality 95", lambda: _jpeg(95)),
    "jpeg75": ("JPEG quality 75", lambda: _jpeg(75)),
    "jpeg50": ("JPEG quality 50", lambda: _jpeg(50)),
    "jpeg30": ("JPEG quality 30", lambda: _jpeg(30)),
    "resize0.75": ("downscale to 0.75x (area)", lambda: _resize(0.75)),
    "resize0.5": ("downscale to 0.5x (area)", lambda: _resize(0.5)),
    "crop0.5": ("centre crop, half of each side", lambda: CenterCropFraction(0.5)),
    "blur": ("Gaussian blur, kernel 5, sigma 1", _blur),
    "noise": ("Gaussian noise, std 0.04 of full range", _noise),
    "brightness": ("brightness +0.2", _brightness),
}


def perturbation(name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    if name not in GRID:
        raise EvaluationError(f"unknown perturbation {name!r}; known: {', '.join(GRID)}")
    return GRID[name][1]()


class PerturbationChain:
    """``perturb`` then ``base`` (an albumentations transform), callable as ``chain(image=array)``."""

    def __init__(self, perturb: Callable[[np.ndarray], np.ndarray] | None, base):
        self.perturb = perturb
        self.base = base

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if self.perturb is not None:
            image = np.ascontiguousarray(self.perturb(image))
        return self.base(image=image)
