"""Throughput: the raw backbone forward vs. the streaming `score` pipeline on the same images, same run.

Raw: ``backbone.encode`` on already-decoded, already-resized tensors (the ceiling). Pipeline:
:func:`detector.scoring.score_stream` from the files on disk: decode (optionally on worker threads),
resize, one shared backbone forward, a passive linear head, the attribution head (four unknown scores),
fusion into a ProvenanceResult, and a fsynced JSONL write per batch.

The heads here are fitted on the benchmark's own features with arbitrary labels: they cost what a
trained head costs (same shapes) but their *scores mean nothing*; this script measures speed only.
Branches that are not in this build yet (Effort-tuned detector, watermark decoder, inversion) are not in
the pipeline measured here; their names are printed so the table cannot be mistaken for the full one.

    python experiments/throughput/bench_score.py --backbone effnet-lite0 --images 96 --batch-size 16

Runs raw and pipeline alternately ``--rounds`` times and reports the median images/s of each and their
ratio (pipeline / raw). The machine is shared, so the medians of interleaved rounds are what to compare.
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

from detector.attribution import AttributionHead
from detector.backbones import create_backbone
from detector.corpus.dataset import to_tensor
from detector.corpus.photos import load_photos
from detector.fusion import FusionConfig
from detector.io import atomic_write_text, load_image
from detector.scoring import Batch, Pipeline, attribution_branch, backbone_features, score_stream

MISSING_BRANCHES = (
    "effort detector head (issue 5)",
    "watermark decoder (issue 6)",
    "diffusion inversion (issue 4)",
)


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


def raw_rate(backbone, tensors: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        backbone.encode(tensors[i : i + batch_size])
    return len(tensors) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--side", type=int, default=384, help="Side of the JPEG crops on disk.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="Decode threads for the pipeline.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the numbers as JSON here.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    backbone = create_backbone(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_images(folder, args.images, args.side, seed=0)
        transform = backbone.transform()
        tensors = torch.stack(
            [to_tensor(transform(image=np.asarray(load_image(p)))["image"]) for p in paths]
        )  # decoded and resized up front: the raw forward sees none of that cost

        features = backbone_features(backbone)
        feats = backbone.encode(tensors).numpy()
        rng = np.random.default_rng(0)
        labels = [f"gen_{k}" for k in rng.integers(0, 4, len(feats))]  # arbitrary: timing only
        head = AttributionHead().fit(feats, labels)
        head.fit_thresholds(feats, labels)
        weights = rng.normal(0, 1 / np.sqrt(feats.shape[1]), feats.shape[1])

        def passive(batch: Batch):
            logits = features(batch) @ weights
            return list(1 / (1 + np.exp(-logits)))

        pipeline = Pipeline(
            passive={"linear_head": passive},
            attribution=attribution_branch(head, features),
            config=FusionConfig(),
            versions={"backbone": backbone.weights_id},
        )
        raw_rate(backbone, tensors[: args.batch_size], args.batch_size)  # warm-up
        raws, pipes = [], []
        for r in range(args.rounds):
            raws.append(raw_rate(backbone, tensors, args.batch_size))
            out = Path(tmp) / f"scores{r}.jsonl"
            start = time.perf_counter()
            summary = score_stream([folder], pipeline, out, batch_size=args.batch_size, workers=args.workers)
            pipes.append(summary.scored / (time.perf_counter() - start))
            assert summary.errors == 0 and summary.scored == args.images
    raw, pipe = statistics.median(raws), statistics.median(pipes)
    result = {
        "backbone": args.backbone,
        "images": args.images,
        "side": args.side,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "raw_images_per_s": round(raw, 2),
        "pipeline_images_per_s": round(pipe, 2),
        "ratio": round(pipe / raw, 3),
        "rounds_raw": [round(x, 2) for x in raws],
        "rounds_pipeline": [round(x, 2) for x in pipes],
    }
    print(
        f"backbone {args.backbone}, {args.images} JPEGs of {args.side}px, batch {args.batch_size}, "
        f"{args.workers} decode thread(s), {torch.get_num_threads()} torch threads, median of {args.rounds} rounds"
    )
    print("| measured | images/s |")
    print("| --- | ---: |")
    print(f"| raw backbone forward (pre-decoded tensors) | {raw:.1f} |")
    print(f"| score pipeline (decode + forward + linear head + attribution + fusion + JSONL) | {pipe:.1f} |")
    print(f"| ratio pipeline / raw | {pipe / raw:.2f} |")
    print(f"rounds raw {result['rounds_raw']}, pipeline {result['rounds_pipeline']}")
    print(f"not in this pipeline yet: {', '.join(MISSING_BRANCHES)}")
    if args.out:
        result["missing_branches"] = list(MISSING_BRANCHES)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
