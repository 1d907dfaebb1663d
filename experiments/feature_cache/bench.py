"""Feature-cache benchmark: first pass (compute) vs second pass (lookup) on the same corpus, one run.

Builds a corpus of 256x256 crops of the real photos that ship in packages, then times
``extract_features`` twice with the same backbone and cache folder and prints both rates and their
ratio. The second pass still hashes every file (the cache is keyed by content), so the ratio is honest.

    python experiments/feature_cache/bench.py --images 128 --backbone effnet-lite0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.backbones import create_backbone
from detector.corpus.photos import load_photos
from detector.features import ExtractionReport, extract_features


def build_corpus(root: Path, count: int, size: int = 256, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [array for _, array in load_photos() if min(array.shape[:2]) >= size]
    for i in range(count):
        array = photos[i % len(photos)]
        y = rng.integers(0, array.shape[0] - size + 1)
        x = rng.integers(0, array.shape[1] - size + 1)
        path = root / "real" / f"crop{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[y : y + size, x : x + size]).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = create_backbone(args.backbone, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        build_corpus(root, args.images)
        timings, reports, matrices = [], [], []
        for _ in range(2):
            report = ExtractionReport()
            start = time.perf_counter()
            matrix, valid, failed = extract_features(
                root, backbone, Path(tmp) / "cache", batch_size=args.batch_size, report=report
            )
            timings.append(time.perf_counter() - start)
            reports.append(report)
            matrices.append(matrix)
        assert np.array_equal(matrices[0], matrices[1]) and not failed
    first, second = timings
    print(
        f"backbone {args.backbone} ({backbone.feature_dim}-d), {args.images} images 256x256 PNG, "
        f"device {args.device}, {args.threads} torch threads"
    )
    print("| pass | computed | from cache | seconds | images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t, r in (
        ("first (cold cache)", first, reports[0]),
        ("second (warm cache)", second, reports[1]),
    ):
        print(f"| {name} | {r.computed} | {r.cached} | {t:.2f} | {args.images / t:.1f} |")
    print(f"speed-up of the second pass: {first / second:.1f}x (identical features: yes)")


if __name__ == "__main__":
    main()
