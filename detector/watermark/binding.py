"""Content binding: a keyed locality-sensitive hash of an image's coarse content, carried in the mark.

A keyed payload alone does not stop Kutter's copy attack: the residual of a marked image (or the mean
residual of many) added to a real photo carries a valid payload with it. So, as in SEAL, the embedder
also writes ``n_bits`` of a hash of the image it marks, and the detector recomputes that hash on the
image it receives: a mark whose hash disagrees with the content under it was moved there (``forged``).

**The hash.** Robust, cheap features: the luma of the image squeezed to a ``THUMB`` x ``THUMB``
thumbnail (so any resize or change of aspect ratio gives the same thumbnail), made mirror-symmetric
(the mean of it and its horizontal flip: a flipped image hashes the same), then its low 2-D DCT
frequencies without the DC term (``SCHEMES``), each scaled by its frequency radius (natural
images put most energy in the lowest few, which would otherwise decide every bit) and normalised to
unit length (brightness and contrast changes cancel). The hash bits are the signs of projections on
random hyperplanes drawn from the secret key (SimHash): two images agree on a bit with probability
``1 - angle / pi``, so small edits flip few bits and unrelated images about half. Keyed, so an
attacker cannot compute a photo's hash to pick a matching mark to copy.

**Which differences are tolerated.** An edit flips the bits whose projection was close to zero, and
the detector sees how close each of its received bits is (:func:`hash_margins`). So the test accepts
a mark's hash only where it differs from the received one in at most ``tolerance`` bits, all among
the received hash's ``doubtful`` least certain bits (the shipped 2 of 5: 16 hashes per view), not in
any 2 of 16 (137). Unrelated images rarely differ exactly where the received hash is unsure: on the
choice set (crops of the watermark's training photos, generated images of the corpus) a mark of one
image is accepted on an unrelated one in 0.06-0.10% of pairs, against 1.6-1.8% for v1 (15 features,
any 2 of 16 bits), while benign edits still keep the binding (``experiments/content_binding``).

**Borders.** A screenshot adds a frame and a title bar, which change the thumbnail: the detector also
hashes the picture inside any uniform border (:func:`trim_border`) and the test counts both views.

**What it does not survive.** Edits that change the coarse picture: crops that keep a small part
(10% of the area), large rotations, heavy recolouring. The binding then fails and the mark reads as
``forged``; ``experiments/watermark_attacks/`` measures how often.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from detector.watermark.payload import WatermarkKey

#: Hash schemes by name -> the highest DCT frequency they use: frequencies (u, v) with
#: 1 <= u + v <= max_freq feed the hash (u: vertical, v: horizontal; odd horizontal frequencies vanish
#: on a mirror-symmetric thumbnail and are left out). v1 (15 features) is kept to verify older marks.
SCHEMES = {"dct-simhash-v1": 6, "dct-simhash-v2": 14}
#: The scheme new marks carry; a verifier needs its name with the key.
SCHEME = "dct-simhash-v2"
THUMB = 32


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    mat = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    mat[0] /= math.sqrt(2)
    return mat


@lru_cache(maxsize=4)
def _disc(n: int) -> np.ndarray:
    """A soft disc window: 1 within 0.42 n of the centre, falling to 0 at 0.5 n."""
    yy, xx = np.mgrid[:n, :n] + 0.5 - n / 2
    r = np.hypot(yy, xx) / n
    return np.clip((0.5 - r) / 0.08, 0.0, 1.0)


@lru_cache(maxsize=4)
def _frequencies(scheme: str) -> list[tuple[int, int]]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown content-hash scheme {scheme!r} (known: {sorted(SCHEMES)})")
    top = SCHEMES[scheme]
    return [(u, v) for u in range(top + 1) for v in range(0, top + 1, 2) if 1 <= u + v <= top]


def content_features(image: np.ndarray, scheme: str = SCHEME) -> np.ndarray:
    """HxWx3 uint8 -> unit vector of frequency-weighted low DCT coefficients of the symmetric thumbnail."""
    rgb = np.asarray(image, dtype=np.uint8)
    luma = Image.fromarray(rgb[..., :3]).convert("L")
    thumb = np.asarray(luma.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float64) / 255.0
    thumb = 0.5 * (thumb + thumb[:, ::-1])
    disc = _disc(THUMB)  # corners left out: a rotation about the centre blackens them
    centre = float((thumb * disc).sum() / disc.sum())
    thumb = centre + (thumb - centre) * disc
    dct = _dct_matrix(THUMB)
    coeffs = dct @ thumb @ dct.T
    feats = np.array([coeffs[u, v] * math.hypot(u, v) for u, v in _frequencies(scheme)])
    norm = np.linalg.norm(feats)
    return feats / norm if norm > 1e-9 else feats


def hyperplanes(key: WatermarkKey, n_bits: int, scheme: str = SCHEME) -> np.ndarray:
    """(n_bits, n_features) Gaussian hyperplanes drawn from the key (deterministic)."""
    n_feats = len(_frequencies(scheme))
    seed = int.from_bytes(key.stream("content-lsh", 16), "big")
    return np.random.default_rng(seed).standard_normal((n_bits, n_feats))


def hash_margins(
    image: np.ndarray, key: WatermarkKey, n_bits: int, scheme: str = SCHEME
) -> tuple[np.ndarray, np.ndarray]:
    """``(hash, margins)``: the keyed ``n_bits`` SimHash of the image's content (uint8 0/1) and how far
    each bit's projection is from flipping (the smaller, the likelier an edit flipped it)."""
    proj = hyperplanes(key, n_bits, scheme) @ content_features(image, scheme)
    return (proj > 0).astype(np.uint8), np.abs(proj)


def content_hash(image: np.ndarray, key: WatermarkKey, n_bits: int, scheme: str = SCHEME) -> np.ndarray:
    """The keyed ``n_bits`` SimHash of the image's content (uint8 0/1)."""
    return hash_margins(image, key, n_bits, scheme)[0]


#: A border row or column: its luma spread (2nd to 98th percentile, 0..255) at most this much (the
#: percentiles ignore the few pixels at its ends that a resampling blends with the outside).
BORDER_SPREAD = 3
#: Trimming never keeps less than this share of a side (a flat picture is not a border).
MIN_KEPT = 0.5
#: Lines at each edge that may be blended with the outside and are skipped when a border follows.
EDGE = 2


def _spread(luma: np.ndarray, axis: int) -> np.ndarray:
    low, high = np.percentile(luma, (2, 98), axis=axis)
    return high - low


def _uniform(luma: np.ndarray, axis: int) -> np.ndarray:
    """Which lines (rows: axis=1) are uniform; the outermost ``EDGE`` on each side count as uniform (a
    resampling blends them with the outside), which only matters when a real border follows them."""
    flat = _spread(luma, axis) <= BORDER_SPREAD
    flat[:EDGE] = flat[-EDGE:] = True
    return flat


def _span(flat: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """``[start, stop)`` shrunk past the uniform lines at both ends; ends with only edge lines stay."""
    lo, hi = start, stop
    while lo < hi and flat[lo]:
        lo += 1
    while hi > lo and flat[hi - 1]:
        hi -= 1
    return (start if lo - start <= EDGE else lo), (stop if stop - hi <= EDGE else hi)


def trim_border(image: np.ndarray) -> np.ndarray:
    """The image without uniform rows and columns along its edges (a screenshot's frame and title bar,
    a letterbox): the content hash of the picture inside. Unchanged when nothing or too much would go."""
    rgb = np.asarray(image, dtype=np.uint8)[..., :3]
    luma = rgb.astype(np.int16) @ np.array([2, 5, 1], dtype=np.int16) // 8
    top, bottom, left, right = 0, luma.shape[0], 0, luma.shape[1]
    if min(luma.shape) < 4 * EDGE:
        return image
    for _ in range(3):  # rows then columns, again: a title bar spans the frame's columns
        if bottom - top < 4 * EDGE or right - left < 4 * EDGE:  # (almost) all of it uniform: no border
            return image
        before = (top, bottom, left, right)
        rows = np.zeros(luma.shape[0], bool)
        rows[top:bottom] = _uniform(luma[top:bottom, left:right], axis=1)
        top, bottom = _span(rows, top, bottom)
        cols = np.zeros(luma.shape[1], bool)
        if bottom - top >= 4 * EDGE:
            cols[left:right] = _uniform(luma[top:bottom, left:right], axis=0)
            left, right = _span(cols, left, right)
        if (top, bottom, left, right) == before:
            break
    if (top, bottom, left, right) == (0, luma.shape[0], 0, luma.shape[1]):
        return image
    if bottom - top < MIN_KEPT * luma.shape[0] or right - left < MIN_KEPT * luma.shape[1]:
        return image
    return np.ascontiguousarray(image[top:bottom, left:right])


def received_hashes(
    image: np.ndarray, key: WatermarkKey, n_bits: int, scheme: str = SCHEME
) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, margins)`` the detector compares a mark's hash with (rows): the image as read, and the
    picture inside its uniform border (the same twice when it has none). Two views: the test counts both."""
    views = [hash_margins(x, key, n_bits, scheme) for x in (image, trim_border(image))]
    return np.stack([h for h, _ in views]), np.stack([m for _, m in views])


def hash_to_int(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2) if len(bits) else 0


def int_to_hash(value: int, n_bits: int) -> np.ndarray:
    return np.array([(value >> (n_bits - 1 - i)) & 1 for i in range(n_bits)], dtype=np.uint8)


def unrotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned back about its centre, same canvas. ``degrees`` is the decoder's chosen angle
    (it names the turn of the feature map that undoes the image's rotation; PIL's sign agrees)."""
    if not degrees:
        return image
    turned = Image.fromarray(np.asarray(image, dtype=np.uint8)[..., :3])
    return np.asarray(turned.rotate(degrees, resample=Image.Resampling.BILINEAR))
