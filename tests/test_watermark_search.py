"""The staged (coarse, then fine) search, the border-insensitive content hash and its two-view test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.watermark import PayloadCodec, Watermarker, WatermarkKey, WatermarkModel, default_checkpoint
from detector.watermark.binding import content_hash, hash_to_int, received_hashes, trim_border

KEY = WatermarkKey(bytes(range(32)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 256x256 crop of a photo the checkpoint never saw."""
    from detector.corpus.photos import bundled_photos, load_photos

    (_, image), *_ = load_photos([p for p in bundled_photos() if p.name == "skimage-coffee"])
    return np.ascontiguousarray(image[100:356, 200:456])


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker(KEY, model=WatermarkModel.load(default_checkpoint()))


def _screenshot(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    canvas = np.full((h + 40, w + 16, 3), 236, dtype=np.uint8)
    canvas[:28] = (60, 63, 65)
    canvas[32 : 32 + h, 8 : 8 + w] = image
    return canvas


def test_staged_search_reads_what_the_exhaustive_one_reads(wm, photo):
    marked = wm.embed_array(photo, 777)
    shrunk = np.asarray(Image.fromarray(marked).resize((166, 166), Image.Resampling.LANCZOS))  # 0.65x
    exhaustive = Watermarker(KEY, model=wm.model, search="exhaustive")
    for image in (marked, shrunk, np.ascontiguousarray(shrunk[:, ::-1])):
        found = wm.detect_array(image)
        assert found.status == "watermarked" and found.payload == 777 and "coarse_confidence" in found.extra
        assert exhaustive.detect_array(image).payload == 777
    noise = np.random.default_rng(0).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    assert wm.detect_array(noise).status == "absent"


def test_trim_border_finds_the_picture_inside_a_frame(photo):
    shot = _screenshot(photo)
    inner = trim_border(shot)
    assert inner.shape == photo.shape and np.array_equal(inner, photo)
    assert trim_border(photo) is photo  # no border: unchanged
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert trim_border(flat) is flat  # a flat picture is not all border
    for shape in ((64, 64), (9, 9), (5, 300), (300, 5)):  # all uniform, or too small: nothing to trim
        uniform = np.full((*shape, 3), 100, np.uint8)
        assert trim_border(uniform) is uniform
    lines = np.full((100, 100, 3), 100, np.uint8)
    lines[:, 50] = 0  # one dark column: the rest uniform, but a border must not take the whole image
    assert trim_border(lines) is lines
    hashes, margins = received_hashes(shot, KEY, 16)
    assert margins.shape == hashes.shape and (margins >= 0).all()
    assert np.array_equal(hashes[1], content_hash(photo, KEY, 16))
    assert not np.array_equal(hashes[0], hashes[1])


def test_two_view_binding_test_counts_both_views():
    one = PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2)
    two = PayloadCodec(KEY, 64, 16, content_bits=16, tolerance=2, content_views=2)
    assert two.multiplicity() == 2 * one.multiplicity() and two.threshold(1e-6) == 60
    h = np.random.default_rng(3).integers(0, 2, 16).astype(np.uint8)
    other = 1 - h
    word = two.encode(99, hash_to_int(h))
    assert two.decode(word, content_hash=np.stack([other, h])).watermarked  # the closest view counts
    assert two.decode(word, content_hash=other).forged
    with pytest.raises(ValueError, match="allows 1"):
        one.decode(word, content_hash=np.stack([other, h]))


def test_screenshot_of_a_marked_image_is_watermarked_not_forged(wm, photo):
    assert wm.binding["views"] == 2 == wm.codec.content_views  # what a verifier must know
    marked = wm.embed_array(photo, 4242)
    small = np.asarray(Image.fromarray(marked).resize((179, 179), Image.Resampling.LANCZOS))  # 0.7x
    result = wm.detect_array(_screenshot(small))
    assert result.status == "watermarked" and result.payload == 4242


def _synthetic_corr(
    basis: np.ndarray, spurious: list[tuple[int, int]], size: int = 270, blob: float = 1.0
) -> np.ndarray:
    """An autocorrelation with weak blobs on the lattice of ``basis`` (noise between) and a few strong
    isolated peaks (what a textured photo adds), zero lag centred, symmetric as autocorrelations are."""
    rng = np.random.default_rng(0)
    centre = size // 2
    yy, xx = np.mgrid[:size, :size] - centre
    corr = rng.normal(0, 0.3, (size, size))
    k = np.arange(-8, 9)
    for k1 in k:
        for k2 in k:
            r, c = k1 * basis[:, 0] + k2 * basis[:, 1]
            if 0 < np.hypot(r, c) < centre:
                corr += blob * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 1.0)
    for r, c in spurious:
        for s in (1, -1):
            corr += 4.0 * np.exp(-((yy - s * r) ** 2 + (xx - s * c) ** 2) / 1.0)
    return (corr + corr[::-1, ::-1]) / 2


def test_sync_prefers_the_whole_lattice_to_strong_single_peaks_and_to_its_sublattices():
    from detector.watermark import sync

    turn = np.deg2rad(7.0)
    true = 22.4 * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    corr = _synthetic_corr(true, spurious=[(30, 3), (12, -25), (27, 27)])
    first = sync.lattice_candidates(corr)[0]
    expected = sync._upright(true[:, 0], true[:, 1])
    assert np.abs(first - expected).max() < 0.3, (first, expected)
    # Twice the period lands on lattice peaks too, but its half-period coset does as well.
    white = sync._scores(corr)[0]
    fits = sync.lattice_fit(white, np.stack([expected, 2 * expected, expected @ np.array([[1, 1], [-1, 1]])]))
    assert fits[0] > fits[1] + 0.3 and fits[0] > fits[2] + 0.3, fits


def test_sync_scans_upright_lattices_when_single_peaks_all_belong_to_the_photo(monkeypatch):
    """A plain resize of a small image: the lattice is upright but weak, and the photo's own peaks
    fill the pool of single-peak proposals. The scan of upright periods still proposes it; without
    the scan it is not among the candidates."""
    from detector.watermark import sync

    true = 15.3 * np.eye(2)
    rng = np.random.default_rng(3)
    spurious = [tuple(int(v) for v in rng.integers(-34, 35, 2)) for _ in range(30)]
    spurious = [(r, c) for r, c in spurious if 9 <= np.hypot(r, c) <= 36][:20]
    corr = _synthetic_corr(true, spurious=spurious, blob=0.4)

    def found(candidates):
        return any(np.abs(c - true).max() < 0.5 for c in candidates)

    assert found(sync.lattice_candidates(corr))
    monkeypatch.setattr(sync, "SCANNED", 0)
    assert not found(sync.lattice_candidates(corr))
