"""The one image loader used everywhere.

Every image that enters the project passes through :func:`load_image`, so every module sees the same
thing: an 8-bit RGB picture, EXIF orientation applied, alpha composited on a fixed background, the first
frame of an animation. Anything that cannot be turned into that is refused with one typed error,
:class:`ImageLoadError`, naming the file and the reason, so a batch job can report it and go on.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from detector.errors import DetectorError
from detector.io.paths import printable

# Truncated files must fail loudly, never decode as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _register_plugins() -> None:
    """HEIC/HEIF (pillow-heif) and JPEG XL (pillow-jxl-plugin) openers: both are core dependencies."""
    import pillow_heif
    import pillow_jxl  # noqa: F401 - registers the JXL plugin on import

    pillow_heif.register_heif_opener()


_register_plugins()

#: Pixel budget above which an image is refused before decoding (64 MP, e.g. 8000x8000).
DEFAULT_MAX_PIXELS = 64_000_000
#: Longest side over shortest side above which an image is refused before decoding: every branch scales
#: the shorter side to its input size, so a 1 x 150,000 strip would become a 224 x 33.6 M picture.
MAX_ASPECT = 64
#: The smallest side a scoring branch reads meaningfully (a 224-px backbone input upscaled 14x from it,
#: a watermark search grid of 8 px); smaller images get a clear error instead of a verdict.
MIN_SCORE_SIDE = 16
#: Pixels a decoded image keeps in a scoring batch: larger pictures are reduced right after decoding
#: (JPEG in draft mode, i.e. decoded at 1/2, 1/4 or 1/8 scale), so a batch holds at most
#: ``batch_size x KEEP_PIXELS`` pixels whatever the files' sizes (12.5 MP: a 4032 x 3024 phone photo
#: is untouched; Pillow stores 4 bytes a pixel, so a batch of 16 holds at most 800 MB).
KEEP_PIXELS = 12_500_000
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
        ".heic",
        ".heif",
        ".ico",
    }
)
#: The decoders a file may reach, whatever its name says: the raster formats above (JPEG covers the
#: multi-picture MPO files phones write). Everything else
#: Pillow could open is refused by content sniffing, notably EPS (decoded by running Ghostscript),
#: PSD, FITS, WMF and the other rarely used parsers, which are attack surface and no photo format.
ALLOWED_FORMATS = (
    "JPEG",
    "PNG",
    "WEBP",
    "BMP",
    "DIB",
    "GIF",
    "TIFF",
    "PPM",
    "JXL",
    "AVIF",
    "HEIF",
    "ICO",
)
#: Reasons a folder scan passes a file by, reported (counted and named) instead of dropped silently.
SKIP_HIDDEN = "hidden file or folder (name starts with '.')"
SKIP_EXTENSION = "not an image file extension"
SKIP_LINKED_DIR = "symbolic link to a folder (not followed)"

ImageSource = str | os.PathLike | bytes | BinaryIO


class ImageLoadError(DetectorError):
    """An image could not be loaded. ``path`` names the file, ``reason`` says why in plain words."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {reason}")

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


def _formats() -> list[str]:
    """The allowed formats this installation can open (an optional plugin may be missing)."""
    Image.init()
    return [name for name in ALLOWED_FORMATS if name in Image.OPEN]


def _file_kind(mode: int) -> str | None:
    """Why a non-regular file is not an image (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file; refused without reading"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file; refused without reading"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def _open_file(name: str, path: Path) -> BinaryIO:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        reason = (
            "dangling symbolic link (its target does not exist)" if path.is_symlink() else "file not found"
        )
        raise ImageLoadError(name, reason) from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(name, "symbolic link loop (too many levels of symbolic links)") from None
        raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    kind = _file_kind(info.st_mode)
    if kind is not None:
        raise ImageLoadError(name, kind)
    if info.st_size == 0:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, opening must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
    kind = _file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise ImageLoadError(name, kind)
    return os.fdopen(fd, "rb")


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


def _open(
    source: ImageSource, max_pixels: int | None, max_aspect: float | None = MAX_ASPECT
) -> tuple[Image.Image, str | None]:
    """Open lazily (header only) and enforce the pixel and aspect budgets before any decoding."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)) and _is_member(source):
        source = _member_bytes(source)
    if isinstance(source, (str, os.PathLike)):
        handle: BinaryIO = _open_file(name, Path(source))
    elif isinstance(source, bytes):
        if not source:
            raise ImageLoadError(name, "empty input (0 bytes)")
        handle = io.BytesIO(source)
    else:
        handle = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=_formats())
    except Image.DecompressionBombError as exc:
        handle.close()
        raise ImageLoadError(name, f"too large: {exc}; refused before decoding") from None
    except UnidentifiedImageError:
        handle.close()
        raise ImageLoadError(
            name, "not an image (unrecognised or corrupt header, or a format we do not read)"
        ) from None
    except Exception as exc:  # plugins (HEIF, JXL) raise their own types for corrupt headers
        handle.close()
        raise ImageLoadError(name, f"corrupt image header ({type(exc).__name__}: {exc})") from None
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
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        image.close()
        raise ImageLoadError(
            name,
            f"extreme aspect ratio: {width}x{height} (more than {max_aspect:g}:1); refused before decoding",
        )
    return image, name


def probe_image(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_aspect: float | None = MAX_ASPECT
) -> ImageInfo:
    """Read the header only: size, format, mode, frame count. Raises :class:`ImageLoadError`."""
    image, _ = _open(source, max_pixels, max_aspect)
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


def _reduced_size(size: tuple[int, int], keep_pixels: int) -> tuple[int, int]:
    width, height = size
    scale = (keep_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def _grey_filled(image: Image.Image) -> bool:
    """True when a JPEG's bottom quarter is exactly the grey libjpeg fills missing data with: the
    signature of a stream cut short (an early end marker), which Pillow decodes without an error."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or image.size[1] < 16:
        return False
    width, height = image.size
    if np.any(np.asarray(image.crop((0, height - 1, width, height))) != 128):
        return False  # cheap test on the last row first
    bottom = np.asarray(image.crop((0, height - max(8, height // 4), width, height)))
    return bool(np.all(bottom == 128))


def load_image(
    source: ImageSource,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    keep_pixels: int | None = None,
    max_aspect: float | None = MAX_ASPECT,
) -> Image.Image:
    """Load ``source`` (a path, bytes or a binary file) as an 8-bit RGB ``PIL.Image``.

    Applies EXIF orientation, takes the first frame of animations, composites alpha on white, maps
    16-bit, greyscale, palette and CMYK images to RGB. Refuses images above ``max_pixels`` or more
    elongated than ``max_aspect`` before decoding, and below ``min_side`` on either side. With
    ``keep_pixels`` a larger picture is reduced (JPEG: decoded at reduced scale) to about that many
    pixels, aspect kept. Every failure is an :class:`ImageLoadError`.
    """
    image, name = _open(source, max_pixels, max_aspect)
    try:
        if min(image.size) < min_side:
            raise ImageLoadError(
                name, f"too small: {image.size[0]}x{image.size[1]} (minimum side {min_side})"
            )
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        target = None
        if keep_pixels is not None and image.size[0] * image.size[1] > keep_pixels:
            target = _reduced_size(image.size, keep_pixels)
            if image.format == "JPEG":
                image.draft("RGB" if image.mode == "RGB" else image.mode, target)
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(name, f"too large: {exc}") from None
        except Exception as exc:  # Pillow and its plugins raise many types for corrupt data
            text = str(exc)
            reason = "truncated file" if "truncated" in text.lower() else "corrupt image data"
            raise ImageLoadError(name, f"{reason} ({type(exc).__name__}: {text})") from None
        if _grey_filled(image):
            raise ImageLoadError(
                name, "truncated or corrupt JPEG: its image data ends early (the rest decodes as flat grey)"
            )
        try:
            oriented = ImageOps.exif_transpose(image) or image
        except Exception:  # a broken EXIF block must not lose an otherwise good picture
            oriented = image
        rgb = _to_rgb8(oriented)
        if target is not None and rgb.size[0] * rgb.size[1] > keep_pixels:
            rgb = rgb.resize(
                _reduced_size(rgb.size, keep_pixels), Image.Resampling.BILINEAR, reducing_gap=2.0
            )
        if rgb is image:
            rgb = image.copy()  # detach from the file handle we are about to close
        return rgb
    finally:
        image.close()


def load_image_array(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 1, **kwargs
) -> np.ndarray:
    """:func:`load_image` as an ``H x W x 3`` ``uint8`` array (what albumentations expects)."""
    return np.asarray(load_image(source, max_pixels=max_pixels, min_side=min_side, **kwargs), dtype=np.uint8)


def iter_image_files(
    root: str | os.PathLike,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Files under ``root`` with an image extension, sorted. Hidden files and folders, other extensions
    and symlinked folders are passed by; ``on_skip(path, reason)`` hears of each (so a scan can count
    and name what it did not read instead of dropping it silently)."""
    root = Path(root)
    if not root.is_dir():
        yield root
        return

    def skip(path: Path, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)

    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                skip(base / d, SKIP_HIDDEN)
            elif (base / d).is_symlink():
                skip(base / d, SKIP_LINKED_DIR)
            else:
                kept.append(d)
        dirnames[:] = kept
        for filename in sorted(filenames):
            path = base / filename
            if filename.startswith("."):
                skip(path, SKIP_HIDDEN)
            elif Path(filename).suffix.lower() in extensions:
                yield path
            else:
                skip(path, SKIP_EXTENSION)


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
