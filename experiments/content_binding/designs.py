"""Compare content-hash designs on the captured views: benign edits kept, unrelated images told apart.

A design is the hash's features (thumbnail DCT frequencies and their weighting), its bit count and
the Hamming tolerance the test accepts. For each, over ``--keys`` random keys (the hyperplanes come
from the key):

* ``keep``: of the marked crops whose mark the detector read after an attack, the share whose received
  hash (the closer of the two views) is within the tolerance of the mark's: the binding survives.
* ``collide``: of pairs of unrelated images (crops of different training photos; generated images of
  the corpus), the share within the tolerance: the chance that one copy attack from one marked source
  makes a clean photo read ``watermarked``. An attacker who can test forgeries on a detector (an
  oracle) and owns S marked images of different content succeeds with 1 - (1 - collide)^S.
* ``bonferroni_bits``: log2 of the hashes the ``watermarked`` test accepts (times the two views): what
  the binding costs the payload test (see detector.watermark.payload).

    python experiments/content_binding/designs.py            # reads capture.npz (capture.py)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from detector.evaluation.provenance import provenance
from detector.watermark.binding import _dct_matrix, _disc

HERE = Path(__file__).resolve().parent


def features(thumbs: np.ndarray, max_freq: int, gamma: float) -> np.ndarray:
    """(N, 64, 64) uint8 luma -> (N, F) unit features, the binding's recipe with its knobs exposed."""
    t = thumbs.astype(np.float64).reshape(len(thumbs), 32, 2, 32, 2).mean(axis=(2, 4)) / 255.0
    t = 0.5 * (t + t[:, :, ::-1])
    disc = _disc(32)  # the binding's own window and DCT: only the knobs below differ
    centre = (t * disc).sum(axis=(1, 2)) / disc.sum()
    t = centre[:, None, None] + (t - centre[:, None, None]) * disc
    d = _dct_matrix(32)
    coeffs = np.einsum("ij,njk,lk->nil", d, t, d)
    freqs = [(u, v) for u in range(max_freq + 1) for v in range(0, max_freq + 1, 2) if 1 <= u + v <= max_freq]
    f = np.stack([coeffs[:, u, v] * math.hypot(u, v) ** gamma for u, v in freqs], axis=1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)


def hashes(feats: np.ndarray, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits, doubtful): the SimHash, and which bits lie closest to their hyperplane."""
    proj = feats @ planes.T
    return (proj > 0).astype(np.uint8), np.abs(proj)


def accepted(mark: np.ndarray, received: np.ndarray, margin: np.ndarray, tol: int, pool: int | None):
    """Whether each mark hash (rows of ``mark``) is accepted against each received hash (rows): at most
    ``tol`` differing bits, and (``pool``) only among the received hash's ``pool`` least certain bits."""
    diff = mark[:, None, :] != received[None, :, :]
    ok = diff.sum(-1) <= tol
    if pool is not None:
        rank = np.argsort(np.argsort(margin, axis=1), axis=1)  # 0 = closest to its hyperplane
        ok &= ~(diff & (rank[None, :, :] >= pool)).any(-1)
    return ok


def evaluate(cap, design: dict, keys: int) -> dict:
    m, tol, pool = design["bits"], design["tolerance"], design.get("pool")
    feat = lambda x: features(x, design["max_freq"], design["gamma"])  # noqa: E731
    n, a = cap["found"].shape
    clean = feat(cap["clean"])
    seen = feat(cap["seen"].reshape(-1, 64, 64)).reshape(n, a, 2, -1)
    unrelated = feat(cap["unrelated"])
    generated = feat(cap["generated"]) if len(cap["generated"]) else None
    cross = cap["unrelated_photo"][:, None] != cap["unrelated_photo"][None, :]
    cross &= np.triu(np.ones_like(cross), 1).astype(bool)
    keep = np.zeros(a)
    coll_photo = coll_gen = 0.0
    rng = np.random.default_rng(11)
    for _ in range(keys):
        planes = rng.standard_normal((m, clean.shape[1]))
        hc, _ = hashes(clean, planes)
        hs, ms = hashes(seen.reshape(-1, seen.shape[-1]), planes)
        ok = np.zeros((n, a), bool)
        for view in range(2):  # either view may accept
            rows = np.arange(n * a * 2).reshape(n, a, 2)[:, :, view].ravel()
            pair = accepted(hc, hs[rows], ms[rows], tol, pool)  # (n, n*a)
            ok |= pair[np.repeat(np.arange(n), a), np.arange(n * a)].reshape(n, a)
        keep += (ok & cap["found"]).sum(0) / np.maximum(cap["found"].sum(0), 1)
        hu, mu = hashes(unrelated, planes)
        coll_photo += float(accepted(hu, hu, mu, tol, pool)[cross].mean())
        if generated is not None:
            hg, mg = hashes(generated, planes)
            coll_gen += float(accepted(hg, hg, mg, tol, pool)[np.triu_indices(len(hg), 1)].mean())
    span = pool if pool is not None else m
    accepted_hashes = 2 * sum(math.comb(span, i) for i in range(tol + 1))
    return {
        **design,
        "features": int(clean.shape[1]),
        "keep": {str(k): round(float(v / keys), 3) for k, v in zip(cap["attacks"], keep, strict=True)},
        "collide_training_crops": coll_photo / keys,
        "collide_generated": coll_gen / keys if generated is not None else None,
        "bonferroni_bits": round(math.log2(accepted_hashes), 2),
    }


DESIGNS = [
    {"name": "v1 (was shipped)", "max_freq": 6, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": None},
    {"name": "v1, tolerance 1", "max_freq": 6, "gamma": 1.0, "bits": 16, "tolerance": 1, "pool": None},
    {"name": "v1, tolerance 0", "max_freq": 6, "gamma": 1.0, "bits": 16, "tolerance": 0, "pool": None},
    {"name": "f6 p5t2", "max_freq": 6, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 5},
    {"name": "f10 t2", "max_freq": 10, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": None},
    {"name": "f14 t2", "max_freq": 14, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": None},
    {"name": "f10 t1", "max_freq": 10, "gamma": 1.0, "bits": 16, "tolerance": 1, "pool": None},
    {"name": "f10 p3t1", "max_freq": 10, "gamma": 1.0, "bits": 16, "tolerance": 1, "pool": 3},
    {"name": "f10 p4t2", "max_freq": 10, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 4},
    {"name": "f14 p4t2", "max_freq": 14, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 4},
    {"name": "v2: f14 p5t2 (shipped)", "max_freq": 14, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 5},
    {"name": "f14 p6t2", "max_freq": 14, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 6},
    {"name": "f14 p6t3", "max_freq": 14, "gamma": 1.0, "bits": 16, "tolerance": 3, "pool": 6},
    {"name": "f18 p5t2", "max_freq": 18, "gamma": 1.0, "bits": 16, "tolerance": 2, "pool": 5},
    {"name": "f14 gamma0.5 p5t2", "max_freq": 14, "gamma": 0.5, "bits": 16, "tolerance": 2, "pool": 5},
    {"name": "f14 gamma1.5 p5t2", "max_freq": 14, "gamma": 1.5, "bits": 16, "tolerance": 2, "pool": 5},
    {"name": "24 bits t3", "max_freq": 6, "gamma": 1.0, "bits": 24, "tolerance": 3, "pool": None},
    {"name": "f10 24 bits t3", "max_freq": 10, "gamma": 1.0, "bits": 24, "tolerance": 3, "pool": None},
    {"name": "f10 32 bits t4", "max_freq": 10, "gamma": 1.0, "bits": 32, "tolerance": 4, "pool": None},
]

SHOWN = (
    "none",
    "jpeg50",
    "webp50",
    "nlm",
    "resize0.3",
    "resize2.0",
    "aspect512x384",
    "rotate15",
    "rotate30",
    "hflip",
    "screenshot",
    "crop10%",
    "brightness1.3",
    "saturation0.5",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capture", default=str(HERE / "capture.npz"))
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "designs.json"))
    args = parser.parse_args()
    cap = dict(np.load(args.capture))
    results = [evaluate(cap, d, args.keys) for d in DESIGNS]
    read = cap["found"].sum(0) >= 5  # edits after which the mark itself was read in most crops
    geo = [k for k, r in zip(cap["attacks"], read, strict=True) if r and k != "crop10%"]
    print(
        "| design | feats | bits/tol (of pool) | Bonferroni bits | collide (crops) | collide (generated) | "
        "min keep (edits but crop10%) | " + " | ".join(SHOWN) + " |"
    )
    print("| --- " * (7 + len(SHOWN)) + "|")
    of = lambda pool: "" if pool is None else f" of {pool}"  # noqa: E731
    for r in results:
        worst = min(r["keep"][k] for k in geo)
        print(
            f"| {r['name']} | {r['features']} | {r['bits']}/{r['tolerance']}{of(r['pool'])} | "
            f"{r['bonferroni_bits']} | "
            f"{r['collide_training_crops']:.4f} | {r['collide_generated'] or 0:.4f} | {worst:.2f} | "
            + " | ".join(f"{r['keep'][k]:.2f}" for k in SHOWN)
            + " |"
        )
    stamp = provenance()
    stamp["capture"] = {"path": str(Path(args.capture).name), "made_by": "capture.py (see RESULTS.md)"}
    Path(args.out).write_text(json.dumps({"provenance": stamp, "designs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
