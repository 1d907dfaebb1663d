"""Training augmentation: by default no resampling, so a generator's pixel-level traces reach the model."""

import numpy as np

from detector.training.augment import train_transform
from detector.training.config import AugmentConfig

#: Every photometric augmentation off, so only the geometry is left to check.
GEOMETRY_ONLY = dict(jpeg_p=0.0, blur_p=0.0, color_jitter_p=0.0, noise_p=0.0)


def _windows(image: np.ndarray, size: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    return [image[y : y + size, x : x + size] for y in range(h - size + 1) for x in range(w - size + 1)]


def test_default_crop_moves_but_never_rescales():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)  # shorter side already the input size
    transform = train_transform(AugmentConfig(**GEOMETRY_ONLY), size=64, seed=0)
    windows = _windows(image, 64) + _windows(image[:, ::-1], 64)
    for _ in range(20):
        out = transform(image=image)["image"]
        assert out.shape == (64, 64, 3)
        # every output is a window of the input (or of its mirror), pixel for pixel
        assert any(np.array_equal(out, w) for w in windows)


def test_resample_opt_in_changes_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    config = AugmentConfig(**GEOMETRY_ONLY, resample=True, crop_scale_min=0.3, resize_p=1.0)
    transform = train_transform(config, size=64, seed=0)
    outs = [transform(image=image)["image"] for _ in range(5)]
    assert all(o.shape == (64, 64, 3) for o in outs)
    assert not any(np.array_equal(o, image) or np.array_equal(o, image[:, ::-1]) for o in outs)
