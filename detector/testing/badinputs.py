"""A corpus of broken, odd and hostile inputs: every kind of file a provenance tool meets in the wild.

``make_bad_inputs(folder)`` writes one file (or link, FIFO, folder) per kind into ``folder`` and returns
what each is and what a reader must do with it:

* ``ok``: a valid picture in an odd form (16-bit, CMYK, 500 frames, EXIF-rotated, a name with a newline
  or non-UTF-8 bytes...) that must be read and scored;
* ``error``: a file that must get one clear error naming it (truncated, a bomb, a FIFO, too small...);
* ``passed``: a file a folder scan must pass by and *name* (hidden, not an image extension);
* ``either``: depends on the platform (an unreadable file is readable by root).

Everything is small (the whole corpus is a few MB, written in about a second) so a test can run every
entry point over it. ``python -m detector.testing.badinputs DIR`` writes it for manual runs.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import detector.io  # noqa: F401 - registers the HEIC and JXL openers the real samples are written with


@dataclass(frozen=True)
class BadInput:
    kind: str
    path: str  # as os.walk / os.fsdecode spells it (may hold surrogates for non-UTF-8 names)
    expect: str  # ok | error | passed | either


def _rgb(size=(48, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_with_chunk(kind: bytes, data: bytes) -> bytes:
    """A valid small PNG with an extra ancillary chunk inserted after IHDR."""
    png = _encode(Image.fromarray(_rgb()), "PNG")
    ihdr_end = 8 + 25
    return png[:ihdr_end] + _png_chunk(kind, data) + png[ihdr_end:]


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _grey_filled_jpeg(side: int = 1200) -> bytes:
    """A JPEG whose data stops early but ends with an end marker: decodes to a mostly grey picture."""
    array = np.full((side, side, 3), 90, np.uint8)
    array[: side // 10] = _rgb((side, side // 10), seed=7)
    data = _encode(Image.fromarray(array), "JPEG", quality=90)
    return data[: len(data) // 8] + b"\xff\xd9"


def _frames(n: int, fmt: str, **options) -> bytes:
    frames = [Image.fromarray(_rgb((32, 32), seed=i)) for i in range(n)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def _exif_rotated() -> bytes:
    image = Image.fromarray(_rgb((48, 32)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return _encode(image, "JPEG", exif=exif.tobytes())


def _broken_exif() -> bytes:
    data = _encode(Image.fromarray(_rgb()), "JPEG")
    app1 = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 20  # IFD count 65535, no entries
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _optional(fmt: str, **options) -> Callable[[], bytes | None]:
    def make() -> bytes | None:
        try:
            return _encode(Image.fromarray(_rgb()), fmt, **options)
        except (KeyError, OSError, ValueError):  # the plugin is not installed: the kind is left out
            return None

    return make


def _image(mode: str, fmt: str = "PNG", **options) -> Callable[[], bytes]:
    def make() -> bytes:
        rgb = Image.fromarray(_rgb())
        if mode == "I;16":
            image = Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30)
        elif mode == "F":
            image = Image.fromarray(np.linspace(-5, 5, 48 * 40, dtype=np.float32).reshape(40, 48))
        elif mode == "PA":
            image = rgb.convert("P")
            image.info["transparency"] = 0
        else:
            image = rgb.convert(mode)
        return _encode(image, fmt, **options)

    return make


def _sized(width: int, height: int, fmt: str = "PNG") -> Callable[[], bytes]:
    return lambda: _encode(Image.new("RGB", (width, height), (120, 130, 140)), fmt)


def _png() -> bytes:
    return _encode(Image.fromarray(_rgb()), "PNG")


def _truncated(fmt: str, **options) -> Callable[[], bytes]:
    def make() -> bytes:
        data = _encode(Image.fromarray(_rgb((64, 64))), fmt, **options)
        return data[: len(data) // 2]

    return make


#: kind -> (file name, expectation, bytes maker). Files only; links, FIFOs and folders are added below.
FILE_KINDS: dict[str, tuple[str, str, Callable[[], bytes | None]]] = {
    "empty-png": ("empty.png", "error", lambda: b""),
    "empty-jpg": ("empty.jpg", "error", lambda: b""),
    "truncated-png": ("truncated.png", "error", _truncated("PNG")),
    "truncated-jpeg": ("truncated.jpg", "error", _truncated("JPEG")),
    "truncated-gif": ("truncated.gif", "error", _truncated("GIF")),
    "truncated-webp": ("truncated.webp", "error", _truncated("WEBP")),
    "truncated-tiff": ("truncated.tif", "error", _truncated("TIFF")),
    "jpeg-grey-filled": ("greyfill.jpg", "error", _grey_filled_jpeg),
    "png-bad-crc": ("badcrc.png", "error", lambda: _png()[:40] + b"\x00\x00" + _png()[42:]),
    "random-bytes-png": ("random.png", "error", lambda: os.urandom(2048)),
    "text-as-jpeg": ("text.jpg", "error", lambda: b"this is not a picture\n" * 20),
    "bomb-dimensions-png": ("bomb.png", "error", lambda: _png_header_only(100_000, 100_000)),
    "bomb-dimensions-gif": (
        "bomb.gif",
        "error",
        lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b"\x3b",
    ),
    "zlib-bomb-png": ("zlibbomb.png", "either", _sized(5000, 5000)),  # 25 MP of one colour, ~30 kB
    "iccp-bomb-png": (
        "iccpbomb.png",
        "either",
        lambda: _png_with_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * 8_000_000, 9)),
    ),
    "ztxt-bomb-png": (
        "ztxtbomb.png",
        "either",
        lambda: _png_with_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"A" * 8_000_000, 9)),
    ),
    "mode-16bit-png": ("mode16.png", "ok", _image("I;16")),
    "mode-float-tiff": ("modef.tif", "ok", _image("F", "TIFF")),
    "mode-cmyk-jpeg": ("cmyk.jpg", "ok", _image("CMYK", "JPEG")),
    "mode-palette-alpha-png": ("palette.png", "ok", _image("PA")),
    "mode-la-png": ("la.png", "ok", _image("LA")),
    "mode-1bit-png": ("onebit.png", "ok", _image("1")),
    "gif-500-frames": ("frames.gif", "ok", lambda: _frames(500, "GIF")),
    "tiff-300-pages": ("pages.tif", "ok", lambda: _frames(300, "TIFF")),
    "aspect-1x150000": ("thin.png", "error", _sized(1, 150_000)),
    "aspect-150000x1": ("wide.png", "error", _sized(150_000, 1)),
    "aspect-16x2000": ("strip.png", "error", _sized(16, 2000)),
    "tiny-1x1": ("one.png", "error", _sized(1, 1)),
    "tiny-15x15": ("fifteen.png", "error", _sized(15, 15)),
    "exif-rotated-jpeg": ("rotated.jpg", "ok", _exif_rotated),
    "exif-broken-jpeg": ("brokenexif.jpg", "ok", _broken_exif),
    "icc-broken-png": (
        "brokenicc.png",
        "ok",
        lambda: _encode(Image.fromarray(_rgb()), "PNG", icc_profile=b"not an icc profile"),
    ),
    "heic-real": ("real.heic", "ok", _optional("HEIF")),
    "heic-fake": ("fake.heic", "error", lambda: b"\x00\x00\x00\x18ftypheic" + os.urandom(500)),
    "avif-real": ("real.avif", "ok", _optional("AVIF")),
    "jxl-real": ("real.jxl", "ok", _optional("JXL")),
    "jxl-fake": ("fake.jxl", "error", lambda: b"\xff\x0a" + os.urandom(300)),
    "ico-real": ("icon.ico", "ok", lambda: _encode(Image.fromarray(_rgb((32, 32))), "ICO", sizes=[(32, 32)])),
    "png-named-jpg": ("actually-png.jpg", "ok", _png),
    "eps-named-png": (
        "postscript.png",
        "error",
        lambda: (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke\n%%EOF\n"
        ),
    ),
    "psd-named-png": (
        "photoshop.png",
        "error",
        lambda: _encode(Image.fromarray(_rgb()), "TGA")[:0] + b"8BPS" + b"\x00" * 40,
    ),
    "svg": (
        "vector.svg",
        "passed",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    ),
    "no-extension": ("noextension", "passed", _png),
    "hidden-file": (".hidden.png", "passed", _png),
    "name-newline": ("new\nline.png", "ok", _png),
    "name-carriage-return": ("carriage\rreturn.png", "ok", _png),
    "name-tab": ("tab\there.png", "ok", _png),
    "name-quotes-comma": ("quo\"te,comma's.png", "ok", _png),
    "name-rtl-mark": ("\u202egnp.exe.png", "ok", _png),
    "name-csv-formula": ('=HYPERLINK("http:__evil.example_x","click").png', "ok", _png),
    "name-csv-plus": ("+cmd.png", "ok", _png),
    "name-csv-minus": ("-2+3.png", "ok", _png),
    "name-csv-at": ("@SUM(A1).png", "ok", _png),
    "name-leading-space": (" spaced .png", "ok", _png),
    "name-rich-markup": ("[bold]markup[red .png", "ok", _png),
}


def make_bad_inputs(folder: str | os.PathLike) -> list[BadInput]:
    """Write every kind into ``folder`` (created); returns one :class:`BadInput` per kind written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[BadInput] = []
    for kind, (name, expect, maker) in FILE_KINDS.items():
        data = maker()
        if data is None:
            continue
        (folder / name).write_bytes(data)
        made.append(BadInput(kind, str(folder / name), expect))
    if sys.platform != "win32":
        raw = os.fsencode(folder) + b"/caf\xe9-latin1.png"  # not valid UTF-8
        with open(raw, "wb") as handle:
            handle.write(_png())
        made.append(BadInput("name-not-utf8", os.fsdecode(raw), "ok"))
        os.symlink("loop.png", folder / "loop.png")
        made.append(BadInput("symlink-loop", str(folder / "loop.png"), "error"))
        os.symlink("missing-target.png", folder / "dangling.png")
        made.append(BadInput("symlink-dangling", str(folder / "dangling.png"), "error"))
        if os.path.exists("/dev/zero"):
            os.symlink("/dev/zero", folder / "devzero.png")
            made.append(BadInput("symlink-to-device", str(folder / "devzero.png"), "error"))
        if hasattr(os, "mkfifo"):
            os.mkfifo(folder / "fifo.png")
            made.append(BadInput("fifo", str(folder / "fifo.png"), "error"))
        unreadable = folder / "unreadable.png"
        unreadable.write_bytes(_png())
        unreadable.chmod(0)
        made.append(BadInput("unreadable", str(unreadable), "either"))  # root reads it anyway
    (folder / "folder.png").mkdir(exist_ok=True)  # a folder named like an image: scanned, holds nothing
    return made


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m detector.testing.badinputs DIR", file=sys.stderr)
        return 2
    made = make_bad_inputs(argv[0])
    for item in made:
        print(f"{item.expect:7s} {item.kind:28s} {os.fsencode(item.path)!r}")
    print(f"{len(made)} kinds written to {argv[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
