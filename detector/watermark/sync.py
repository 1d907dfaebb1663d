"""Geometric synchronisation from the mark's own lattice: undo any resize, aspect change and rotation.

The carrier repeats every ``tile`` cells of the working grid (64 px of the marked image by default), so
the decoder's feature map of a marked image is periodic on a lattice, and its autocorrelation peaks at
the lattice vectors, wherever a resize, a squeeze or a rotation has moved them. We read the two basis
vectors off those peaks (sub-cell precise, refined on their harmonics), map the image back so that
the lattice is upright with its native period again, and let the usual decoder read it. Which
candidates are read is decided by the whole lattice, not by single peaks: a textured photo puts peaks
of its own among the lattice's, and a weak lattice's own peaks sit a cell or a few degrees off, so each
candidate basis is scored by the correlation at all its lattice points minus that at its best coset
(fractions i/n of it, n <= 5), so the true lattice beats its own sublattices (twice its period, or
longer vectors turned), and polished in rotation and scale (:func:`lattice_fit`). A horizontal
flip leaves the lattice as it was (a square lattice is its own mirror image), so each candidate is also
read mirrored.

Everything here is a function of the image alone, never of the key: the reading the decoder finally
keeps (the most confident) stays key-independent, so the keyed test needs no correction for the
search (see :mod:`detector.watermark.payload`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from scipy.ndimage import map_coordinates

#: Lattice vectors are looked for between these lengths (in grid cells of the features' factor).
MIN_LAG, MAX_LAG = 9.0, 36.0
#: Candidate bases read per feature map (the views the decoder then tries).
PEAKS_PER_MAP = 3
#: Bases proposed from the strongest single peaks, of which the ``POLISHED`` best by lattice fit are
#: polished and ranked again.
PEAK_POOL, POLISHED = 12, 4
#: Lattice points a basis is scored on: multiples (k1, k2) with |k| <= this, one of each +- pair.
FIT_REACH = 6
#: Polishing: rotations (degrees) and scales tried about the basis, coarse then fine, first for
#: both vectors at once, then for each alone (aspect changes, shear).
POLISH_STEPS = (
    (np.arange(-4.0, 4.01, 1.0), np.arange(0.94, 1.061, 0.02)),
    (np.arange(-1.0, 1.01, 0.25), np.arange(0.985, 1.0151, 0.005)),
)
#: Candidate views whose mappings differ by less than this (every entry) are read once.
SAME_VIEW = 0.005
#: Images at most this small (px) are also searched on a fine grid (lattices of marks shrunk to 0.3x).
SMALL_SIDE = 200
#: The second lattice vector is looked for at these lengths relative to the first (aspect changes up to
#: 4:3 either way, with a margin; wider, the search picks harmonics of a square lattice, e.g. at 1.4x).
ASPECT_LOW, ASPECT_HIGH = 0.72, 1.36
#: Spectral whitening: the power spectrum relative to its average over about this many bins.
WHITEN_SIGMA = 3.0


def _autocorrelation(feats: torch.Tensor) -> np.ndarray:
    """(1, C, h, w) features -> the autocorrelation of their spectrally whitened sum, zero lag centred.

    The power spectrum is divided by its local average first: a periodic mark puts sharp lines in it,
    image content a smooth spread, so after whitening the lattice dominates the autocorrelation."""
    f = feats[0].detach().numpy().astype(np.float64)
    f = f - f.mean(axis=(1, 2), keepdims=True)
    h, w = f.shape[1:]
    win = np.outer(np.hanning(h), np.hanning(w))
    half = (np.abs(np.fft.rfft2(f * win, s=(2 * h, 2 * w))) ** 2).sum(0)  # (2h, w + 1): real input
    power = np.empty((2 * h, 2 * w))
    power[:, : w + 1] = half
    power[:, w + 1 :] = half[(-np.arange(2 * h)) % (2 * h), w - 1 : 0 : -1]  # P(-k) = P(k)
    power = np.fft.fftshift(power)
    local = cv2.GaussianBlur(power.astype(np.float32), (0, 0), WHITEN_SIGMA).astype(np.float64)
    white = np.fft.ifftshift(np.minimum(power / (local + 1e-9 * power.mean()), 50.0))
    return np.fft.fftshift(np.real(np.fft.ifft2(white)))


def _subcell_peak(corr: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Parabolic refinement of a local maximum at (r, c)."""

    def offset(m, z, p):
        d = m - 2 * z + p
        return 0.0 if d >= 0 else 0.5 * (m - p) / d

    dr = offset(corr[r - 1, c], corr[r, c], corr[r + 1, c]) if 0 < r < corr.shape[0] - 1 else 0.0
    dc = offset(corr[r, c - 1], corr[r, c], corr[r, c + 1]) if 0 < c < corr.shape[1] - 1 else 0.0
    return r + dr, c + dc


def _local_max(corr: np.ndarray, centre: np.ndarray, at: np.ndarray, radius: int = 2) -> np.ndarray | None:
    r0, c0 = int(round(centre[0] + at[0])), int(round(centre[1] + at[1]))
    if not (radius <= r0 < corr.shape[0] - radius and radius <= c0 < corr.shape[1] - radius):
        return None
    patch = corr[r0 - radius : r0 + radius + 1, c0 - radius : c0 + radius + 1]
    dr, dc = np.unravel_index(int(np.argmax(patch)), patch.shape)
    r, c = _subcell_peak(corr, r0 - radius + int(dr), c0 - radius + int(dc))
    return np.array([r - centre[0], c - centre[1]])


def _refine(corr: np.ndarray, centre: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A lattice vector re-estimated from its harmonics (2v, 3v): longer lags pin the period down."""
    estimates = [v]
    for k in (2, 3):
        found = _local_max(corr, centre, k * v)
        if found is not None:
            estimates.append(found / k)
            v = np.mean(estimates, axis=0)
    return v


def _whiten(corr: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Each lag relative to its ring (median and median absolute deviation over lags of the same
    length): image content makes a smooth decay, the lattice isolated peaks. Robust statistics, because
    a short ring holds few lags, and a mean and standard deviation there would count the lattice's own
    peaks as spread and mute them, favouring twice the period."""
    ring = np.rint(rr).astype(int).ravel()
    counts = np.bincount(ring)
    starts = np.r_[0, np.cumsum(counts)[:-1]]

    def ring_median(values: np.ndarray) -> np.ndarray:
        # One sort for every ring: the key orders by ring, then by value within it.
        span = max(float(values.max() - values.min()), 1e-300)
        ordered = values[np.argsort(ring + 0.5 * (values - values.min()) / span)]
        return 0.5 * (ordered[starts + (counts - 1) // 2] + ordered[starts + counts // 2])

    values = corr.ravel()
    middle = ring_median(values)
    spread = np.maximum(1.4826 * ring_median(np.abs(values - middle[ring])), 1e-12)
    return ((values - middle[ring]) / spread[ring]).reshape(corr.shape)


def _scores(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(whitened corr, score of each lag as a lattice vector, that score on the searched ring else -inf)."""
    centre = np.array(corr.shape) // 2
    yy, xx = np.mgrid[: corr.shape[0], : corr.shape[1]] - centre[:, None, None]
    rr = np.hypot(yy, xx)
    corr = _whiten(corr, rr)
    # A lattice vector's harmonic (2v) peaks too; content rarely does: score v by both.
    r2 = np.clip(centre[0] + 2 * yy, 0, corr.shape[0] - 1)
    c2 = np.clip(centre[1] + 2 * xx, 0, corr.shape[1] - 1)
    score = corr + corr[r2, c2]
    ring = (rr >= MIN_LAG) & (rr <= MAX_LAG) & ((yy > 0) | ((yy == 0) & (xx > 0)))  # one of each +-pair
    return corr, score, np.where(ring, score, -np.inf)


def _peak_bases(corr: np.ndarray, score: np.ndarray, masked: np.ndarray, n_peaks: int) -> list[np.ndarray]:
    """Bases proposed by the ``n_peaks`` strongest lags, each with its best perpendicular partner
    (``corr``, ``score``, ``masked``: what :func:`_scores` returns)."""
    centre = np.array(corr.shape) // 2
    masked = masked.copy()
    bases = []
    for _ in range(n_peaks):
        idx = np.unravel_index(int(np.argmax(masked)), masked.shape)
        if not np.isfinite(masked[idx]):
            break
        masked[max(0, idx[0] - 2) : idx[0] + 3, max(0, idx[1] - 2) : idx[1] + 3] = -np.inf
        v1 = _refine(corr, centre, np.array(_subcell_peak(corr, *idx)) - centre)
        # The second basis vector: near v1 turned by 90 degrees, its length within the aspect range.
        perp = np.array([-v1[1], v1[0]])
        best, best_val = None, -np.inf
        for ratio in np.arange(ASPECT_LOW, ASPECT_HIGH + 1e-9, 0.04):  # 1.0 on the grid
            guess = perp * ratio
            r, c = int(round(centre[0] + guess[0])), int(round(centre[1] + guess[1]))
            if 0 <= r < corr.shape[0] and 0 <= c < corr.shape[1] and score[r, c] > best_val:
                best_val, best = score[r, c], guess
        v2 = _local_max(corr, centre, best) if best is not None else None
        if v2 is None:
            continue
        v2 = _refine(corr, centre, v2)
        bases.append(_upright(v1, v2))
    return bases


def _half_plane_multiples(reach: int) -> np.ndarray:
    """(M, 2) integer multiples (k1, k2) with |k| <= reach, one of each +- pair, (0, 0) left out."""
    k = np.stack(np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1)), -1).reshape(-1, 2)
    return k[(k[:, 0] > 0) | ((k[:, 0] == 0) & (k[:, 1] > 0))].astype(np.float64)


_K = _half_plane_multiples(FIT_REACH)
#: A basis of index ``n`` in the true lattice (twice its period, or (2, -1), (1, 2) of it: turned and
#: longer) also lands every point on a lattice peak, but then so does one of its cosets at a fraction
#: (i/n, j/n) of it: the fit subtracts the best of these, for every index up to ``SUBLATTICE_INDEX``.
SUBLATTICE_INDEX = 5


def _coset_fractions(indices) -> np.ndarray:
    """(C, 2) fractions (i/n, j/n) of a basis for every index n given, (0, 0) left out, sorted."""
    return np.array(
        sorted({(i / n, j / n) for n in indices for i in range(n) for j in range(n)} - {(0.0, 0.0)})
    )


_COSETS = _coset_fractions(range(2, SUBLATTICE_INDEX + 1))


def _mean_at(white: np.ndarray, bases: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """(N, 2, 2) bases -> (N,) mean of ``white`` (zero lag centred) at the lags ``ks @ basis.T`` that
    lie between 5 cells and the map's edge (bilinear). ``ks`` (M, 2), or (S, M, 2) for S sets of
    multiples at once (then (S, N): one resampling call for all of them)."""
    centre = np.array(white.shape) // 2
    lags = ks[..., None, :, :] @ bases.transpose(0, 2, 1)  # (N, M, 2) or (S, N, M, 2)
    radius = np.hypot(lags[..., 0], lags[..., 1])
    inside = (radius >= 5) & (radius <= min(centre) - 2)
    values = map_coordinates(white, (lags[..., 0] + centre[0], lags[..., 1] + centre[1]), order=1)
    count = inside.sum(axis=-1)
    return np.where(count > 0, (values * inside).sum(axis=-1) / np.maximum(count, 1), -np.inf)


def lattice_fit(white: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """How well each basis (N, 2, 2) explains a whitened autocorrelation: the mean at its lattice
    points minus the mean at its best coset (``_COSETS``; when positive), and -inf for a sublattice
    (a coset at least half as strong as its own points: the true lattice's cosets are noise)."""
    own, cosets = _own_and_cosets(white, bases)
    return np.where(cosets < own / 2, own - np.maximum(cosets, 0.0), -np.inf)


def _own_and_cosets(
    white: np.ndarray, bases: np.ndarray, cosets: np.ndarray = _COSETS
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) means at each basis' lattice points, and at its best coset (of ``cosets``)."""
    own = _mean_at(white, bases, _K)
    return own, _mean_at(white, bases, _K + cosets[:, None, :]).max(axis=0)


def _turns(degrees: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(len(degrees) * len(scales), 2, 2) rotation-and-scale matrices."""
    t = np.deg2rad(degrees)[:, None]
    c, s = np.cos(t) * scales, np.sin(t) * scales
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2).reshape(-1, 2, 2)


def _polish(white: np.ndarray, basis: np.ndarray) -> tuple[float, np.ndarray]:
    """``(fit, basis)``: the basis turned and scaled (both vectors, then each) to where its lattice
    points' mean correlation is highest (steps this small cannot reach a sublattice, so the cosets are
    left out until the final fit)."""
    for degrees, scales in POLISH_STEPS:
        turns = _turns(degrees, scales)
        for column in (None, 0, 1):
            if column is None:
                tried = turns @ basis
            else:
                tried = np.repeat(basis[None], len(turns), axis=0)
                tried[:, :, column] = turns @ basis[:, column]
            basis = tried[int(np.argmax(_mean_at(white, tried, _K)))]
    return float(lattice_fit(white, basis[None])[0]), basis


#: Upright square lattices at these periods (cells) are proposed too, the ``SCANNED`` best by lattice
#: fit polished: a plain resize turns nothing, and on a small image the lattice's own peaks may not be
#: among the strongest single peaks.
SCAN_PERIODS = np.geomspace(MIN_LAG, MAX_LAG, 40)
SCANNED = 2
_SCAN = np.stack([np.eye(2) * p for p in SCAN_PERIODS])
#: An upright square that lands on an upright lattice's points is k times its period: its cosets at
#: i/2 and i/3 tell k = 2, 3 (and multiples) apart, enough to rank the scan before polishing.
_SCAN_COSETS = _coset_fractions((2, 3))


def lattice_candidates(corr: np.ndarray, n_peaks: int = PEAKS_PER_MAP) -> list[np.ndarray]:
    """Candidate lattice bases (2x2, columns = the vertical-ish and horizontal-ish vector, in cells),
    best lattice fit first: proposed by single peaks, the most promising polished against the fit."""
    white, score, masked = _scores(corr)
    proposed = _peak_bases(white, score, masked, PEAK_POOL)
    chosen = []
    if proposed:
        first = lattice_fit(white, np.stack(proposed))
        chosen = [proposed[i] for i in np.argsort(-first, kind="stable")[:POLISHED]]
    if SCANNED:  # ranked without the sublattice rule: unpolished, a true but weak lattice may fail it
        own, cosets = _own_and_cosets(white, _SCAN, _SCAN_COSETS)
        chosen += [_SCAN[i] for i in np.argsort(-(own - np.maximum(cosets, 0.0)), kind="stable")[:SCANNED]]
    ranked = []
    for start in chosen:
        fit, basis = _polish(white, start)
        basis = _upright(basis[:, 0], basis[:, 1])
        # A fit <= 0: a sublattice, or nothing on its points.
        if fit > 0 and not any(np.abs(basis - other).max() < 1.0 for _, other in ranked):
            ranked.append((fit, basis))
    ranked.sort(key=lambda r: -r[0])
    return [basis for _, basis in ranked[:n_peaks]]


def _upright(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Order and sign two lattice vectors as (vertical-ish pointing down, horizontal-ish pointing right)."""
    a, b = (v1, v2) if abs(v1[0]) >= abs(v1[1]) else (v2, v1)
    a = a if a[0] >= 0 else -a
    b = b if b[1] >= 0 else -b
    return np.stack([a, b], axis=1)


def canonical_views(
    image: np.ndarray,
    decoder,
    scale: int,
    factors: tuple[float, ...] = (4.0, 2.0),
    cache: dict | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(view, basis)``: the image mapped back to an upright lattice of the native period, once per
    candidate basis.

    Each view is cropped to where the received canvas maps (about the marked image's own frame: what
    its content hash was computed on).

    ``factors``: grids the lattice is looked for on (4: the image at about its marked size or larger;
    2: down to 0.3x). Candidates that are the identity (already handled by the plain search) are dropped.

    ``cache``: the decoder's feature maps of ``image`` by ``(factor, dy, dx)`` (see ``Decoder.forward``).
    """
    period = decoder.cfg.tile * scale  # px of the marked image
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    views, seen = [], []
    if min(image.shape[:2]) <= SMALL_SIDE:  # a strong downscale: look on a finer grid too
        factors = (*factors, 1.25)
    with torch.no_grad():
        for factor in factors:
            feats = None if cache is None else cache.get((float(factor), 0, 0))
            corr = _autocorrelation(decoder.grid_features(x, factor) if feats is None else feats)
            for basis in lattice_candidates(corr):
                m = basis * factor / period  # received px per marked px (columns: row, col directions)
                det = abs(np.linalg.det(m))
                if not 0.2 < math.sqrt(det) < 2.6:
                    continue
                # Views closer than SAME_VIEW are read once; the same lattice found on two grids a
                # little apart is read twice (a 1% error in scale already misaligns the fold).
                if np.allclose(m, np.eye(2), atol=0.03) or any(
                    np.allclose(m, s, atol=SAME_VIEW) for s in seen
                ):
                    continue
                seen.append(m)
                views.append((view_of(image, m), m))
    return views


def view_of(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``image`` mapped back by the lattice basis ``m``, cropped to where the received canvas maps."""
    view = _warp(image, m)
    h, w = image.shape[:2]
    ch = min(view.shape[0], round(h / np.linalg.norm(m[:, 0])))
    cw = min(view.shape[1], round(w / np.linalg.norm(m[:, 1])))
    top, left = (view.shape[0] - ch) // 2, (view.shape[1] - cw) // 2
    return np.ascontiguousarray(view[top : top + ch, left : left + cw])


def _warp(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Resample ``image`` so that received = m @ canonical (row, col), about the image centre."""
    h, w = image.shape[:2]
    inv = np.linalg.inv(m)
    corners = np.array([[0, 0], [h, 0], [0, w], [h, w]], dtype=np.float64) - [h / 2, w / 2]
    mapped = corners @ inv.T
    out_h = int(min(4096, math.ceil(np.ptp(mapped[:, 0]))))
    out_w = int(min(4096, math.ceil(np.ptp(mapped[:, 1]))))
    # cv2 works in (x, y) = (col, row): received (x, y) = M' (x', y') + t, with M' the (col, row) version.
    mxy = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    t = np.array([w / 2, h / 2]) - mxy @ np.array([out_w / 2, out_h / 2])
    affine = np.hstack([mxy, t[:, None]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(np.ascontiguousarray(image), affine, (out_w, out_h), flags=flags)
