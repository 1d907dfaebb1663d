"""Training augmentations (albumentations), the same pipeline for real and fake images.

A corruption applied to one class only becomes a label shortcut (the classic JPEG-vs-PNG bias), so
every image, whatever its label, goes through one pipeline: shorter side to the input size, random
crop, flip, blur, colour jitter, noise, and JPEG re-encoding last (so its artefacts sit on the final
pixels, on both classes). Resampling (random resized crop, down-and-up resize) is opt-in
(``resample``): it hides generator traces (experiments/unseen_photos).
"""

from __future__ import annotations

from detector.data import resize_transform
from detector.training.config import AugmentConfig


def train_transform(config: AugmentConfig, size: int, seed: int | None = None):
    """The training pipeline for ``size x size`` inputs; plain resize + centre crop when disabled.
    ``seed`` fixes the augmentations' own random generator (albumentations does not follow numpy's or
    torch's seed), so one training seed gives one run."""
    if not config.enabled:
        return resize_transform(size)
    import albumentations as A
    import cv2

    if config.resample:
        crop = A.RandomResizedCrop(
            size=(size, size), scale=(config.crop_scale_min, 1.0), ratio=(0.8, 1.25), p=1.0
        )
    else:  # after the data path's one resize, a crop that moves but never rescales
        crop = A.RandomCrop(height=size, width=size, p=1.0)
    geometry = [
        A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
        crop,
        A.HorizontalFlip(p=config.flip_p),
    ]
    if config.resample:
        geometry.append(
            A.Downscale(
                scale_range=(config.resize_scale_min, 0.95),
                interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
                p=config.resize_p,
            )
        )
    return A.Compose(
        [
            *geometry,
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.5), p=config.blur_p),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=config.color_jitter_p),
            A.GaussNoise(std_range=(0.01, 0.05), p=config.noise_p),
            A.ImageCompression(
                quality_range=(config.jpeg_quality_min, config.jpeg_quality_max), p=config.jpeg_p
            ),
        ],
        seed=seed,
    )


def eval_transform(size: int):
    """Evaluation: :func:`detector.data.resize_transform`, the pixels bundling and scoring see too."""
    return resize_transform(size)
