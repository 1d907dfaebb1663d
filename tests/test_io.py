"""The safe loader: every bad input gives ImageLoadError with a clear reason; good odd inputs become RGB."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import write_rgb
from PIL import Image

from detector.io import (
    ImageLoadError,
    atomic_write_text,
    iter_image_files,
    load_image,
    load_image_array,
    probe_image,
)


def _reason(path, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kw)
    assert info.value.path == str(path)
    return info.value.reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in _reason(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    assert "not an image" in _reason(path)


def test_jpeg_cut_in_half(tmp_path):
    full = write_rgb(tmp_path / "full.jpg", size=(256, 256))
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in _reason(cut)


def test_png_cut_in_half(tmp_path):
    full = write_rgb(tmp_path / "full.png", size=(128, 128))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    reason = _reason(cut)
    assert "truncated" in reason or "corrupt" in reason


def test_corrupt_body(tmp_path):
    full = write_rgb(tmp_path / "full.png", size=(64, 64))
    data = bytearray(full.read_bytes())
    data[60:400] = b"\x00" * 340  # keep the signature and IHDR, destroy the compressed data
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError):
        load_image(bad)


def test_missing_and_directory_and_unreadable(tmp_path):
    assert "not found" in _reason(tmp_path / "nope.png")
    assert "directory" in _reason(tmp_path)
    path = write_rgb(tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):  # root can read anything; the check is meaningless then
            pytest.skip("running as root: permission bits are not enforced")
        assert "permission" in _reason(path)
    finally:
        os.chmod(path, 0o644)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but that holds almost no data (a decompression bomb header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_huge_header_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    reason = _reason(path)
    assert "too large" in reason


def test_pixel_limit_is_configurable(tmp_path):
    path = write_rgb(tmp_path / "img.png", size=(100, 100))
    assert "too large" in _reason(path, max_pixels=5000)
    assert load_image(path, max_pixels=10000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="too large"):
        probe_image(path, max_pixels=5000)


def test_one_by_one_image_loads(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    array = load_image_array(path)
    assert array.shape == (1, 1, 3) and array.dtype == np.uint8
    assert tuple(array[0, 0]) == (10, 20, 30)
    assert "too small" in _reason(path, min_side=16)


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_image_array(path)
    assert loaded.shape[:2] == (40, 20)  # portrait after orientation
    assert loaded[2, 10, 2] > 200 and loaded[2, 10, 0] < 60  # stripe moved to the top


@pytest.mark.parametrize(
    "mode,value",
    [("L", 128), ("P", None), ("CMYK", (0, 0, 0, 0)), ("1", 1), ("I;16", 65535), ("I", 1000), ("F", 0.5)],
)
def test_modes_become_rgb8(tmp_path, mode, value):
    if mode == "P":
        image = Image.new("RGB", (8, 8), (200, 100, 50)).convert("P")
    else:
        image = Image.new(mode, (8, 8), value)
    suffix = ".tif" if mode in ("CMYK", "I", "F", "I;16") else ".png"
    path = tmp_path / f"img_{mode.replace(';', '')}{suffix}"
    image.save(path)
    array = load_image_array(path)
    assert array.shape == (8, 8, 3) and array.dtype == np.uint8


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    array16 = np.full((4, 4), 32768, dtype=np.uint16)
    path = tmp_path / "half.png"
    Image.fromarray(array16).save(path)
    out = load_image_array(path)
    assert 120 <= int(out[0, 0, 0]) <= 135  # mid grey, not saturated white


def test_cmyk_white_maps_to_white(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)
    assert load_image_array(path).min() > 240


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(tmp_path, mode):
    image = Image.new(mode, (4, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    path = tmp_path / f"alpha_{mode}.png"
    image.save(path)
    assert (load_image_array(path) == 255).all()


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    path = tmp_path / "ptrans.png"
    image.save(path, transparency=0)
    assert (load_image_array(path) == 255).all()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(
        path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True
    )
    assert probe_image(path).n_frames == 3
    pixel = load_image_array(path)[8, 8]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_bytes_and_filelike_sources(tmp_path):
    path = write_rgb(tmp_path / "a.png", size=(10, 12))
    data = path.read_bytes()
    assert load_image(data).size == (10, 12)
    assert load_image(io.BytesIO(data)).size == (10, 12)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"garbage bytes here")


def test_probe_reads_header(tmp_path):
    path = write_rgb(tmp_path / "a.jpg", size=(30, 20))
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (30, 20, "JPEG")


def test_error_is_picklable():
    import pickle

    err = pickle.loads(pickle.dumps(ImageLoadError("x.png", "corrupt")))
    assert err.path == "x.png" and err.reason == "corrupt"


def test_iter_image_files_sorted_and_filtered(tmp_path):
    write_rgb(tmp_path / "b.png")
    write_rgb(tmp_path / "sub" / "a.jpg")
    (tmp_path / "readme.txt").write_text("x")
    write_rgb(tmp_path / ".hidden" / "c.png")
    names = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert names == ["b.png", "sub/a.jpg"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    from detector.io import atomic_writer

    with pytest.raises(RuntimeError):
        with atomic_writer(path) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    from detector.io.atomic import _UMASK

    atomic_write_text(tmp_path / "out.txt", "x")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not mkstemp's 0600
