"""Empirical false-positive rate of the keyed detector: clean crops, and crops marked with another key.

Thousands of images cannot show a rate of 1e-6 directly (0 hits in N gives a 95% upper bound of about
3/N), so we also check the test's calibration where it *can* be seen: under H0 the corrected p-value
must be conservative, i.e. the fraction of images with p <= alpha stays at or below alpha for every alpha
(that is what makes the 1e-6 threshold trustworthy). Crops: random windows (64..512 px, random aspect)
of every bundled photo, half of them re-encoded as JPEG at a random quality, flipped at random.

    python experiments/watermark_fpr/run.py --clean 3000 --other-key 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detector.corpus.photos import load_photos
from detector.watermark.api import Watermarker, default_checkpoint
from detector.watermark.distortions import jpeg_numpy
from detector.watermark.model import WatermarkModel
from detector.watermark.payload import WatermarkKey

HERE = Path(__file__).resolve().parent
ALPHAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 0.5)


def crops(photos, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        _, image = photos[rng.integers(len(photos))]
        h, w = image.shape[:2]
        ch = int(rng.integers(64, min(512, h) + 1))
        cw = int(np.clip(ch * rng.uniform(0.6, 1.6), 64, min(512, w)))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = np.ascontiguousarray(image[top : top + ch, left : left + cw])
        if rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
        if rng.random() < 0.5:
            crop = jpeg_numpy(crop, int(rng.integers(40, 96)))
        yield crop


def clopper_pearson_upper(k: int, n: int, conf: float = 0.95) -> float:
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


def summarise(p_values: list[float], hits: int) -> dict:
    p = np.array(p_values)
    n = len(p)
    return {
        "n": n,
        "declared_watermarked": hits,
        "empirical_fpr": hits / n,
        "fpr_95_upper_bound": clopper_pearson_upper(hits, n),
        "fraction_p_le_alpha": {str(a): float((p <= a).mean()) for a in ALPHAS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    parser.add_argument("--clean", type=int, default=3000)
    parser.add_argument("--other-key", type=int, default=1000)
    parser.add_argument("--self-check", type=int, default=100, help="Own-key images that must be detected.")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = WatermarkModel.load(args.checkpoint)
    key_a = WatermarkKey(b"fpr-check-key-A-0123456789abcdef")
    key_b = WatermarkKey(b"fpr-check-key-B-0123456789abcdef")
    detector, other = Watermarker(key_a, model=model), Watermarker(key_b, model=model)
    photos = load_photos()
    t0 = time.time()
    report = {
        "checkpoint": str(args.checkpoint),
        "fpr": detector.fpr,
        "threshold_matches": detector.codec.threshold(),
    }

    p_clean, hits = [], 0
    for i, crop in enumerate(crops(photos, args.clean, seed=1)):
        result = detector.detect_array(crop)
        p_clean.append(result.p_value)
        hits += result.watermarked
        if (i + 1) % 500 == 0:
            print(f"clean {i + 1}/{args.clean}", file=sys.stderr, flush=True)
    report["clean"] = summarise(p_clean, hits)

    p_other, hits, rng = [], 0, np.random.default_rng(2)
    for i, crop in enumerate(crops(photos, args.other_key, seed=3)):
        marked = other.embed_array(crop, int(rng.integers(0, other.codec.max_payload + 1)))
        result = detector.detect_array(marked)
        p_other.append(result.p_value)
        hits += result.watermarked
        if (i + 1) % 250 == 0:
            print(f"other key {i + 1}/{args.other_key}", file=sys.stderr, flush=True)
    report["other_key"] = summarise(p_other, hits)
    # Sanity: the other key's own detector does find its marks (so the check is not vacuous).
    found = sum(
        other.detect_array(other.embed_array(c, 1234)).watermarked
        for c in crops(photos, args.self_check, seed=5)
    )
    report["own_key_detection_rate"] = {"n": args.self_check, "rate": found / max(1, args.self_check)}
    report["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
