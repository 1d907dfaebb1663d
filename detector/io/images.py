"""The one image loader used everywhere.

Every image that enters the project passes through :func:`load_image`, so every module sees the same
thing: an 8-bit RGB picture, EXIF orientation applied, alpha composited on a fixed background, the first
frame of an animation. Anything that cannot be turned into that is refused with one typed error,
:class:`ImageLoadError`, naming the file and the reason, so a batch job can report it and go on.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Truncated files must fail loudly, never decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Pixel budget above which an image is refused before decoding (64 MP, e.g. 8000x8000).
DEFAULT_MAX_PIXELS = 64_000_000
#: Fixed background that transparent pixels are composited on (white, as a browser shows them).
ALPHA_BACKGROUND = (255, 255, 255)
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jxl",
        ".avif",
    }
)

ImageSource = str | os.PathLike | bytes | BinaryIO


class ImageLoadError(Exception):
    """An image could not be loaded. ``path`` names the file, ``reason`` says why in plain words."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # survives pickling across DataLoader worker processes
        return (ImageLoadError, (self.path, self.reason))


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says, read without decoding the pixels."""

    width: int
    height: int
    format: str
    mode: str
    n_frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _describe(source: ImageSource) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None)


def _is_member(path: str | os.PathLike) -> bool:
    """A path into a sharded corpus (``DIR/shard-00000.parquet::KEY``) rather than a file."""
    text = os.fspath(path)
    return ".parquet::" in text and not os.path.exists(text)


def _member_bytes(path: str | os.PathLike) -> bytes:
    from detector.corpus.shards import read_member

    name = os.fspath(path)
    try:
        data = read_member(path)
    except KeyError:
        raise ImageLoadError(name, "file not found (no such image in its shard)") from None
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found (its shard is missing)") from None
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read file ({exc})") from None
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    return data


def _open(source: ImageSource, max_pixels: int | None) -> tuple[Image.Image, str | None]:
    """Open lazily (header only) and enforce the pixel budget before any decoding."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)) and _is_member(source):
        source = _member_bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if path.is_dir():
                raise ImageLoadError(name, "is a directory, not an image file")
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError(name, "file not found") from None
        except PermissionError:
            raise ImageLoadError(name, "permission denied") from None
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
        if size == 0:
            raise ImageLoadError(name, "empty file (0 bytes)")
        try:
            handle: BinaryIO = open(path, "rb")  # noqa: SIM115 - PIL keeps it until load()
        except PermissionError:
            raise ImageLoadError(name, "permission denied") from None
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    elif isinstance(source, bytes):
        if not source:
            raise ImageLoadError(name, "empty input (0 bytes)")
        handle = io.BytesIO(source)
    else:
        handle = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except Image.DecompressionBombError as exc:
        handle.close()
        raise ImageLoadError(name, f"too large: {exc}; refused before decoding") from None
    except UnidentifiedImageError:
        handle.close()
        raise ImageLoadError(name, "not an image (unrecognised or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        handle.close()
        raise ImageLoadError(name, f"corrupt image header ({exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageLoadError(name, f"invalid dimensions {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageLoadError(
            name,
            f"too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,}; refused before decoding",
        )
    return image, name


def probe_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: size, format, mode, frame count. Raises :class:`ImageLoadError`."""
    image, _ = _open(source, max_pixels)
    with image:
        return ImageInfo(
            width=image.size[0],
            height=image.size[1],
            format=(image.format or "UNKNOWN").upper(),
            mode=image.mode,
            n_frames=int(getattr(image, "n_frames", 1) or 1),
        )


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB with one documented rule per mode family."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:  # 32-bit int or float: stretch the observed range (no universal white point)
            lo, hi = float(array.min()), float(array.max())
            array = array - lo
            scale = max(hi - lo, 1e-12)
        array8 = np.clip(np.round(array / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array8, mode="L").convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    # L, CMYK, YCbCr, LAB, HSV and the rest have a direct conversion.
    return image.convert("RGB")


def load_image(
    source: ImageSource,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> Image.Image:
    """Load ``source`` (a path, bytes or a binary file) as an 8-bit RGB ``PIL.Image``.

    Applies EXIF orientation, takes the first frame of animations, composites alpha on white, maps
    16-bit, greyscale, palette and CMYK images to RGB. Refuses images above ``max_pixels`` before
    decoding and below ``min_side`` on either side. Every failure is an :class:`ImageLoadError`.
    """
    image, name = _open(source, max_pixels)
    try:
        if min(image.size) < min_side:
            raise ImageLoadError(
                name, f"too small: {image.size[0]}x{image.size[1]} (minimum side {min_side})"
            )
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(name, f"too large: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            text = str(exc)
            reason = "truncated file" if "truncated" in text.lower() else "corrupt image data"
            raise ImageLoadError(name, f"{reason} ({text})") from None
        try:
            oriented = ImageOps.exif_transpose(image) or image
        except Exception:  # a broken EXIF block must not lose an otherwise good picture
            oriented = image
        rgb = _to_rgb8(oriented)
        if rgb is image:
            rgb = image.copy()  # detach from the file handle we are about to close
        return rgb
    finally:
        image.close()


def load_image_array(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 1
) -> np.ndarray:
    """:func:`load_image` as an ``H x W x 3`` ``uint8`` array (what albumentations expects)."""
    return np.asarray(load_image(source, max_pixels=max_pixels, min_side=min_side), dtype=np.uint8)


def iter_image_files(
    root: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS
) -> Iterator[Path]:
    """Files under ``root`` with an image extension, sorted, hidden files and folders skipped."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            if Path(filename).suffix.lower() in extensions:
                yield Path(dirpath) / filename


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Content hash of a file: identifies an image independent of its name or location."""
    digest = hashlib.sha256()
    if _is_member(path):  # a member of a sharded corpus: hash the stored bytes
        from detector.corpus.shards import read_member

        try:
            digest.update(read_member(path))
        except KeyError:
            raise FileNotFoundError(os.fspath(path)) from None
        return digest.hexdigest()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
