"""Throughput of `detector score`: the local engine vs the Ray engine with 1 and 2 scoring actors, same
images, same bundle, on this machine; plus the per-image costs and FLOP counts the 10 M-image estimate
in RESULTS.md is computed from.

    python experiments/scale_out/bench.py --images 192 --out experiments/scale_out/results.json

Bundle: a linear probe on the pretrained EfficientNet-Lite0 at 128 px (the backbone of
experiments/throughput), trained one epoch on crops of the bundled photos (labels are arbitrary: only the
cost matters), attribution head and fusion fitted by ``build_bundle``; scored with its core branches
(no watermark decoder, RIGID or inversion). Images: JPEG crops (``--side`` px) of the bundled photos.

Each engine runs ``--rounds`` times, interleaved, each time twice: on one batch (``one_batch_s``: what
a run costs besides its images; for Ray, starting the actors and loading the bundle in each) and on all
images. Rates: ``overall`` (images / wall time of the full run) and ``marginal`` (the images beyond the
first batch / the time the full run took beyond the one-batch run: the rate a long run approaches). The
Ray cluster is started once, before, and its start time is reported apart. Torch uses 1 thread everywhere; Ray actors reserve 0.75 CPU each and decode tasks 0.25, so
that two actors leave room for decoding on the 2-CPU cluster (with 1 CPU each, two actors take both
CPUs and no decoding task can ever be scheduled: ``score_ray`` warns about that).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "throughput"))
from bench_score import make_images  # noqa: E402 - the same JPEG crops as experiments/throughput

from detector.bundle import ProvenanceDetector  # noqa: E402
from detector.evaluation.provenance import provenance
from detector.io import atomic_write_text, load_image  # noqa: E402
from detector.scoring import score_stream  # noqa: E402
from detector.scoring.ray_engine import BundleScorer, score_ray  # noqa: E402

LOAD = dict(watermark=False, rigid=False, inversion=False)
VIT_L14 = "vit_large_patch14_clip_224"  # timm's ViT-L/14 at 224 px (the CLIP image tower's shape)


def build_bundle(root: Path, images: list[Path], size: int) -> Path:
    """A real-backbone bundle on a throwaway corpus: half the crops "real", the rest 2 "generators"."""
    from detector.bundle import BundleConfig, build_bundle
    from detector.config import load_config
    from detector.corpus import Record, SplitConfig, assign_splits, write_manifest
    from detector.training import TrainConfig, train

    records = []
    for i, path in enumerate(images):
        kind = i % 4
        label, generator = ("real", "real") if kind < 2 else ("fake", f"gen_{kind}")
        records.append(Record(str(path), label, generator=generator, group=f"g{i}"))
    assign_splits(records, SplitConfig(seed=0, train=0.5, val=0.3, test=0.2))
    manifest = write_manifest(records, root / "manifest.csv")
    train(
        load_config(
            TrainConfig,
            None,
            [
                f"data.corpus={manifest}",
                f"out={root / 'run'}",
                "method.name=linear-probe",
                "model.backbone=effnet-lite0",
                f"data.image_size={size}",
                "data.batch_size=16",
                "optim.epochs=1",
                "wandb.mode=disabled",
            ],
        )
    )
    config = load_config(
        BundleConfig, None, [f"checkpoint={root / 'run'}", f"corpus={manifest}", "fusion.min_rows=5"]
    )
    build_bundle(config, root / "bundle")
    return root / "bundle"


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs (multiply and add counted apart) of one ``3 x size x size`` image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def per_image_costs(det: ProvenanceDetector, paths: list[Path], batch_size: int, repeats: int = 3) -> dict:
    """Seconds per image on 1 thread, best of ``repeats`` (the least disturbed on a shared machine):
    decoding, resizing to the bundle's input (the host work of a GPU actor), the backbone forward."""
    from detector.data import image_batch

    best = {"decode_s": float("inf"), "resize_s": float("inf"), "forward_s": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        decoded = [load_image(p) for p in paths]
        best["decode_s"] = min(best["decode_s"], (time.perf_counter() - start) / len(paths))
        start = time.perf_counter()
        tensors = image_batch(decoded, det.image_size)
        best["resize_s"] = min(best["resize_s"], (time.perf_counter() - start) / len(paths))
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(tensors), batch_size):
                det.model.backbone.encode(tensors[i : i + batch_size])
        best["forward_s"] = min(best["forward_s"], (time.perf_counter() - start) / len(paths))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--side", type=int, default=384, help="Side of the JPEG crops on disk.")
    parser.add_argument("--size", type=int, default=128, help="The bundle's input size.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=0.75,
        help="CPUs each actor reserves (2 x 0.75 + decoding <= 2).",
    )
    parser.add_argument("--bundle", type=Path, default=None, help="Use this bundle instead of building one.")
    parser.add_argument("--out", type=Path, default=Path("experiments/scale_out/results.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import ray

    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, args.side, seed=0)
        bundle = args.bundle or build_bundle(tmp / "bench", paths[:64], args.size)
        det = ProvenanceDetector.load(bundle, **LOAD)
        results["per_image"] = per_image_costs(det, paths[:64], args.batch_size)
        results["flops"] = {
            "bundle_backbone": flops_per_image(det.model.backbone.model, det.image_size),
            "bundle_input": det.image_size,
        }
        import timm

        results["flops"]["vit_l14_224"] = flops_per_image(timm.create_model(VIT_L14, pretrained=False), 224)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results["ray_cluster_start_s"] = time.perf_counter() - start
        names = ("local", "ray, 1 actor", "ray, 2 actors")
        runs: dict[str, list[dict]] = {name: [] for name in names}
        outputs = {}
        scorer = BundleScorer(str(bundle), **LOAD)
        (tmp / "probe").mkdir()
        for path in paths[: args.batch_size]:  # one batch: what a run costs besides its images
            (tmp / "probe" / path.name).write_bytes(path.read_bytes())

        def run(name: str, folder: Path, out: Path) -> float:
            start = time.perf_counter()
            if name == "local":
                score_stream([folder], det.pipeline, out, batch_size=args.batch_size, workers=1)
            else:
                score_ray(
                    [folder],
                    scorer,
                    out,
                    batch_size=args.batch_size,
                    workers=int(name.split(",")[1].split()[0]),
                    cpus_per_worker=args.cpus_per_worker,
                    decode_cpus=0.25,
                )
            return time.perf_counter() - start

        for round_ in range(args.rounds):
            for name in names:
                tag = f"{name.replace(' ', '').replace(',', '-')}-{round_}"
                probe = run(name, tmp / "probe", tmp / f"{tag}-probe.jsonl")
                full = run(name, tmp / "images", tmp / f"{tag}.jsonl")
                runs[name].append(
                    {
                        "overall": args.images / full,
                        "marginal": (args.images - args.batch_size) / (full - probe),
                        "one_batch_s": probe,
                    }
                )
                outputs[name] = (tmp / f"{tag}.jsonl").read_text()
                print(f"round {round_}: {name}: {runs[name][-1]}", flush=True)
        ray.shutdown()
        results["identical_output"] = len(set(outputs.values())) == 1
    results["images_per_s"] = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in runs.items()
    }
    results["rounds"] = runs
    results["flops"]["ratio_vit_l14_to_bundle"] = (
        results["flops"]["vit_l14_224"] / results["flops"]["bundle_backbone"]
    )
    results["torch_threads"] = torch.get_num_threads()
    results["load_average"] = list(np.round(__import__("os").getloadavg(), 2))
    results["provenance"] = provenance()
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
