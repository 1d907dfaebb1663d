"""Throughput: the raw backbone forward vs. the whole `detector score` pipeline, same images, same run.

Raw: the bundle's backbone ``encode`` on already-decoded, already-resized tensors (the ceiling: no
decode, no resize, no heads, no output). Pipeline: :meth:`ProvenanceDetector.score_files` (what
``detector score`` runs) from the JPEG files on disk: decode, resize, one shared backbone forward, the
trained head, the attribution head (top-k + unknown score), fusion into a ProvenanceResult and a fsynced
JSONL write per batch, in four configurations, each loaded from the same bundle:

* ``core``: head + attribution distance + attribution + fusion (``--no-watermark --no-rigid --no-inversion``)
* ``+ watermark``: the watermark decoder too (``--no-rigid --no-inversion``), with its fast search
  (``--watermark-search fast``: native grid only), its full one (the default: plain, mirrored and
  lattice-synchronised readings, coarse then fine) and the exhaustive one (the same readings, every one
  at every sub-cell phase: what the full search did before; library only)
* ``+ watermark + RIGID``: RIGID costs ``draws`` extra backbone forwards by design (``--no-inversion``)
* ``all``: + diffusion inversion (the default ``detector score``)

    detector demo                       # writes runs/demo/bundle (watermark key + inversion model)
    python experiments/throughput/bench_score.py --bundle runs/demo/bundle --images 64 --rounds 3 --threads 1

Runs raw and every configuration alternately ``--rounds`` times and reports median images/s and the
ratio to raw. The machine may be shared, so only the interleaved medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.bundle import ProvenanceDetector
from detector.corpus.photos import load_photos
from detector.data import resize_transform, stack_images
from detector.evaluation.provenance import provenance
from detector.io import atomic_write_text, load_image

CONFIGS = {
    "core (head + attribution + fusion)": dict(watermark=False, rigid=False, inversion=False),
    "+ watermark, fast search": dict(watermark=True, watermark_search="fast", rigid=False, inversion=False),
    "+ watermark, full search": dict(watermark=True, watermark_search="full", rigid=False, inversion=False),
    "+ watermark, exhaustive search (the full search before issue 12)": dict(
        watermark=True, watermark_search="exhaustive", rigid=False, inversion=False
    ),
    "+ watermark (full) + inversion, no RIGID": dict(
        watermark=True, watermark_search="full", rigid=False, inversion=True
    ),
    "+ watermark (full) + RIGID": dict(watermark=True, watermark_search="full", rigid=True, inversion=False),
    "all (+ inversion)": dict(watermark=True, watermark_search="full", rigid=True, inversion=True),
}


def make_images(folder: Path, n: int, side: int, seed: int) -> list[Path]:
    """``n`` JPEG crops (``side`` px) of the bundled real photos: realistic decode cost, offline."""
    rng = np.random.default_rng(seed)
    photos = [array for _, array in load_photos() if min(array.shape[:2]) >= side]
    paths = []
    for i in range(n):
        array = photos[i % len(photos)]
        top = rng.integers(0, array.shape[0] - side + 1)
        left = rng.integers(0, array.shape[1] - side + 1)
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(array[top : top + side, left : left + side]).save(path, quality=90)
        paths.append(path)
    return paths


@torch.inference_mode()
def raw_rate(backbone, tensors: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        backbone.encode(tensors[i : i + batch_size])
    return len(tensors) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle", type=Path, required=True, help="A bundle (detector demo / detector bundle)."
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--side", type=int, default=384, help="Side of the JPEG crops on disk.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="Decode threads for the pipeline.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the numbers as JSON here.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    detectors = {name: ProvenanceDetector.load(args.bundle, **flags) for name, flags in CONFIGS.items()}
    for name, det in list(detectors.items()):  # a bundle without a part makes its configurations moot
        flags = CONFIGS[name]
        missing = [
            part
            for part, present in (
                ("watermark", det.watermarker is not None),
                ("rigid", det.rigid is not None),
                ("inversion", det.inversion is not None),
            )
            if flags[part] and not present
        ]
        if missing:
            print(f"skipped {name!r}: {args.bundle} has no {', '.join(missing)} branch", file=sys.stderr)
            del detectors[name]
    base = detectors["core (head + attribution + fusion)"]
    backbone = base.model.backbone
    rates: dict[str, list[float]] = {"raw backbone": []} | {name: [] for name in detectors}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_images(folder, args.images, args.side, seed=0)
        transform = resize_transform(base.image_size)  # the bundle's own preprocessing, done up front
        tensors = stack_images([load_image(p) for p in paths], transform)
        raw_rate(backbone, tensors[: args.batch_size], args.batch_size)  # warm-up
        for r in range(args.rounds):
            rates["raw backbone"].append(raw_rate(backbone, tensors, args.batch_size))
            for name, det in detectors.items():
                out = Path(tmp) / f"scores-{r}-{len(rates[name])}.jsonl"
                start = time.perf_counter()
                summary = det.score_files([folder], out, batch_size=args.batch_size, workers=args.workers)
                rates[name].append(summary.scored / (time.perf_counter() - start))
                assert summary.errors == 0 and summary.scored == args.images, summary.to_dict()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    raw = medians["raw backbone"]
    result = {
        "bundle": str(args.bundle),
        "backbone": base.card.get("backbone"),
        "image_size": base.image_size,
        "rigid_draws": next((d.rigid.draws for d in detectors.values() if d.rigid is not None), None),
        "images": args.images,
        "side": args.side,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "images_per_s": {k: round(v, 2) for k, v in medians.items()},
        "ratio_to_raw": {k: round(v / raw, 3) for k, v in medians.items()},
        "rounds": {k: [round(x, 2) for x in v] for k, v in rates.items()},
    }
    print(
        f"bundle {args.bundle}: {result['backbone']} at {base.image_size}px; {args.images} JPEGs of "
        f"{args.side}px, batch {args.batch_size}, {args.workers} decode thread(s), "
        f"{torch.get_num_threads()} torch thread(s), median of {args.rounds} interleaved rounds"
    )
    print("| measured | images/s | ratio to raw |")
    print("| --- | ---: | ---: |")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / raw:.2f} |")
    print(f"rounds: {result['rounds']}")
    if args.out:
        result["provenance"] = provenance()
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
