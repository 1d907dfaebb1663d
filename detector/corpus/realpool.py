"""The real-photo pool: many square crops of the bundled natural photos, at several scales.

Each crop is a square window of side ``size * scale`` (scale >= 1, so real images are only ever
downscaled, with antialiasing, never upsampled) at a seeded random position, resized to ``size``.
Photos get crops in proportion to the square root of their area (a 3 MP photo gets more than a
0.2 MP one, but does not swamp the pool). The ``group`` of a crop is its source photo, so splits
never put two crops of one photo on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detector.corpus.encoding import EncodingPolicy
from detector.corpus.manifest import CorpusError, Record

DEFAULT_SCALES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class CropSpec:
    """Where one crop comes from. ``key`` is its stable file name (without extension)."""

    index: int
    photo: str
    x: int
    y: int
    side: int

    @property
    def key(self) -> str:
        return f"{self.photo}_crop{self.index:05d}"


def allocate(areas: Sequence[float], n: int) -> list[int]:
    """Split ``n`` crops over photos proportionally to sqrt(area) (largest remainders, sums to n)."""
    weights = np.sqrt(np.asarray(areas, dtype=float))
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def plan_crops(
    photos: Sequence[tuple[str, np.ndarray]],
    n: int,
    size: int = 128,
    scales: Sequence[float] = DEFAULT_SCALES,
    seed: int = 0,
) -> list[CropSpec]:
    """A deterministic list of ``n`` crops over ``photos`` (``(name, H x W x 3)``, any order)."""
    photos = sorted(photos, key=lambda p: p[0])
    usable = [(name, img) for name, img in photos if min(img.shape[:2]) >= size]
    if not usable:
        raise CorpusError(f"no photo has both sides >= {size} px; cannot cut {size} px crops")
    counts = allocate([img.shape[0] * img.shape[1] for _, img in usable], n)
    rng = np.random.default_rng(seed)
    specs: list[CropSpec] = []
    for (name, img), count in zip(usable, counts, strict=True):
        h, w = img.shape[:2]
        sides = [int(round(size * s)) for s in scales if int(round(size * s)) <= min(h, w)] or [size]
        for _ in range(count):
            side = int(rng.choice(sides))
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            specs.append(CropSpec(len(specs), name, x, y, side))
    return specs


def render_crop(image: np.ndarray, spec: CropSpec, size: int) -> np.ndarray:
    """The ``size`` x ``size`` uint8 crop described by ``spec`` (Lanczos downscaling when needed)."""
    window = image[spec.y : spec.y + spec.side, spec.x : spec.x + spec.side]
    if spec.side == size:
        return np.ascontiguousarray(window)
    return np.asarray(Image.fromarray(window).resize((size, size), Image.LANCZOS))


def render_crops(
    photos: Sequence[tuple[str, np.ndarray]], specs: Sequence[CropSpec], size: int
) -> np.ndarray:
    """All crops as one N x size x size x 3 uint8 array, in ``specs`` order."""
    by_name = dict(photos)
    out = np.empty((len(specs), size, size, 3), dtype=np.uint8)
    for i, spec in enumerate(specs):
        out[i] = render_crop(by_name[spec.photo], spec, size)
    return out


def write_pool(
    out: Path,
    photos: Sequence[tuple[str, np.ndarray]],
    crops: Sequence[CropSpec],
    size: int,
    policy: EncodingPolicy,
    advance: Callable[[int], None] = lambda n=1: None,
) -> tuple[list[Record], int]:
    """Write every crop to ``out/real/<photo>/<key>.<ext>`` (skipping files already there).

    Returns the records (group = source photo) and how many files were written now."""
    by_name = dict(photos)
    records, written = [], 0
    for spec in crops:
        folder = Path(out) / "real" / spec.photo
        path = policy.path_for(folder, spec.key, "real", spec.index)
        if not path.is_file():
            policy.write(folder, spec.key, render_crop(by_name[spec.photo], spec, size), "real", spec.index)
            written += 1
        records.append(
            Record(
                path.relative_to(out).as_posix(),
                "real",
                group=spec.photo,
                width=size,
                height=size,
                format=policy.format_name(path),
            )
        )
        advance(1)
    return records, written
