"""The real photographs that ship inside installed packages: our offline source of "real".

No image data set can be downloaded on our machines, so the real class is built from the natural
photos bundled with scikit-image, scikit-learn and matplotlib, plus Debian's ``libjxl-testdata`` CC0
photos when that package is installed. Synthetic test patterns, text pages, binary masks and tiny
thumbnails are deliberately left out: only natural photographs belong to the real class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.io import ImageLoadError, load_image_array

LIBJXL_ROOT = Path(os.environ.get("DETECTOR_LIBJXL_TESTDATA", "/usr/share/libjxl-testdata"))

#: scikit-image colour photographs (name -> loader attribute); all offline in the wheel.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field")
#: scikit-image greyscale photographs; used only when ``include_greyscale`` is set.
SKIMAGE_GREY_PHOTOS = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock")
#: libjxl-testdata photographs (relative paths), each a distinct source photo at least 400 px on a side
#: (its raw.pixls and 64px folders hold thumbnails too small to crop).
LIBJXL_PHOTOS = (
    "jxl/flower/flower.png",
    "jxl/hdr_room.png",
    "external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",
    "external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",
    "external/wesaturate/500px/u76c0g_bliznaca_srgb8.png",
)


@dataclass(frozen=True)
class Photo:
    """A bundled photograph. ``name`` is unique and stable: it is the corpus ``group`` of its crops."""

    name: str
    source: str
    load: Callable[[], np.ndarray]


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs: the left view only (the right is the same scene)
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _sklearn(index: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return np.asarray(load_sample_images().images[index], dtype=np.uint8)


def _file(path: Path) -> np.ndarray:
    return load_image_array(path)


def bundled_photos(include_greyscale: bool = False, include_libjxl: bool = True) -> list[Photo]:
    """Every natural photo available offline on this machine, in a fixed order."""
    photos = [Photo(f"skimage-{n}", "scikit-image", lambda n=n: _skimage(n)) for n in SKIMAGE_PHOTOS]
    if include_greyscale:
        photos += [
            Photo(f"skimage-{n}", "scikit-image", lambda n=n: _skimage(n)) for n in SKIMAGE_GREY_PHOTOS
        ]
    photos += [
        Photo("sklearn-china", "scikit-learn", lambda: _sklearn(0)),
        Photo("sklearn-flower", "scikit-learn", lambda: _sklearn(1)),
    ]
    import matplotlib

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        photos.append(Photo("matplotlib-grace_hopper", "matplotlib", lambda: _file(hopper)))
    if include_libjxl and LIBJXL_ROOT.is_dir():
        for rel in LIBJXL_PHOTOS:
            path = LIBJXL_ROOT / rel
            if path.is_file():
                stem = Path(rel).stem.split("_srgb8")[0].replace(".", "_")
                photos.append(Photo(f"libjxl-{stem}", "libjxl-testdata (CC0)", lambda p=path: _file(p)))
    return photos


def load_photos(photos: list[Photo] | None = None) -> list[tuple[str, np.ndarray]]:
    """Load each photo as ``(name, H x W x 3 uint8)``; a photo that fails to load is skipped."""
    loaded = []
    for photo in photos if photos is not None else bundled_photos():
        try:
            loaded.append((photo.name, photo.load()))
        except (ImageLoadError, OSError, ValueError, ModuleNotFoundError):
            continue
    return loaded
