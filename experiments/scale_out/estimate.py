"""The 10 M-image estimate of RESULTS.md, computed from bench.py's measurements plus stated assumptions.

    python experiments/scale_out/estimate.py --results experiments/scale_out/results.json

Per image, a fleet of N GPU actors needs (a) a ViT-L/14 forward on the GPU and (b) the host work around it
(decode, resize, heads, fusion, the output line) on CPU cores. (b) is measured here: decoding and
resizing one image on one thread (heads, fusion and the output line are left out: small next to the
forward), scaled by ``--decode-scale`` for larger images. (a) is not measurable on this
machine (no GPU); it is the measured ViT-L/14 FLOPs divided by an assumed sustained GPU rate
(``--gpu-tflops`` x ``--mfu``), and, as a cross-check, the measured CPU forward of our backbone scaled by
the measured FLOP ratio (what ViT-L/14 would cost per CPU core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def driver_seconds_per_line(batch: int, n: int = 20_480) -> float:
    """What the Ray driver spends per result: parse the actor's JSON line, write it (one fsynced write
    per batch), count it. Measured with a line shaped like the bench bundle's (2 branches, top-3 attribution)."""
    import tempfile
    import time

    from detector.result import AttributionEvidence, ProvenanceResult, csv_columns
    from detector.scoring.stream import ScoreSummary, open_writer

    sample = ProvenanceResult(
        path="/data/collection/2024/05/17/IMG_000123.jpg",
        p_ai=0.8731,
        verdict="ai-generated",
        attribution=AttributionEvidence(
            top_k=[("gen_a", 0.71), ("gen_b", 0.2), ("gen_c", 0.09)], unknown_score=3.2
        ),
        branches={"detector": 0.91, "attribution_distance": 3.2},
        versions={"detector": "0.1.0", "passive": "sha256:0123456789abcdef"},
    ).to_json()
    with tempfile.TemporaryDirectory() as tmp:
        writer = open_writer(Path(tmp) / "out.jsonl", "jsonl", csv_columns())
        writer.open(False)
        summary = ScoreSummary()
        start = time.perf_counter()
        for _ in range(n // batch):
            results = [ProvenanceResult.from_json(sample) for _ in range(batch)]
            writer.write(results)
            for result in results:
                summary.add(result)
        seconds = (time.perf_counter() - start) / (n // batch * batch)
        writer.close(True)
    return seconds


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("experiments/scale_out/results.json"))
    parser.add_argument("--images", type=float, default=10e6)
    parser.add_argument("--gpu-tflops", type=float, default=312.0, help="Dense bf16 peak (A100: 312).")
    parser.add_argument("--mfu", type=float, default=0.4, help="Sustained share of that peak.")
    parser.add_argument("--cores-per-gpu", type=int, default=8, help="Host CPU cores per GPU actor.")
    parser.add_argument(
        "--decode-scale",
        type=float,
        default=4.0,
        help="Host cost of a collection image vs our 384 px JPEG crop (4: about 768 px on a side).",
    )
    parser.add_argument("--gpus", default="1,8,32,128")
    parser.add_argument("--batch-size", type=int, default=128, help="--batch-size of the GPU run.")
    args = parser.parse_args(argv)
    r = json.loads(args.results.read_text())
    flops_vit = r["flops"]["vit_l14_224"]
    ratio = r["flops"]["ratio_vit_l14_to_bundle"]
    local = r["images_per_s"]["local"]["marginal"]
    forward = r["per_image"]["forward_s"]
    prep = r["per_image"]["decode_s"] + r["per_image"]["resize_s"]
    host = prep * args.decode_scale  # CPU seconds per image a GPU actor's host spends before the forward
    gpu_rate = args.gpu_tflops * 1e12 * args.mfu / flops_vit
    host_rate = args.cores_per_gpu / host  # images/s the host cores of one GPU can prepare
    per_gpu = min(gpu_rate, host_rate)
    ray1 = r["images_per_s"]["ray, 1 actor"]["marginal"]
    driver = driver_seconds_per_line(args.batch_size)
    driver_rate = 1.0 / driver
    lines = [
        f"- ViT-L/14 at 224 px: {flops_vit / 1e9:.1f} GFLOPs per image (counted), {ratio:.0f}x our backbone's "
        f"{r['flops']['bundle_backbone'] / 1e9:.3f} GFLOPs at {r['flops']['bundle_input']} px.",
        f"- Our backbone forward: {forward * 1e3:.1f} ms per image on 1 CPU thread, so ViT-L/14 would take "
        f"about {forward * ratio:.1f} s per image per CPU core (FLOP-scaled): CPUs are out of the question.",
        f"- Host work per image (decode {r['per_image']['decode_s'] * 1e3:.1f} ms + resize "
        f"{r['per_image']['resize_s'] * 1e3:.1f} ms on one core for our 384 px JPEGs; heads, fusion and the "
        f"output line left out, small next to a ViT-L forward): x{args.decode_scale:g} for collection "
        f"images = {host * 1e3:.1f} ms. (Local engine end to end here: {local:.1f} images/s.)",
        f"- One GPU at {args.gpu_tflops:g} TFLOPS x {args.mfu:g} MFU: {gpu_rate:.0f} images/s; its "
        f"{args.cores_per_gpu} host cores prepare {host_rate:.0f} images/s; so {per_gpu:.0f} images/s per GPU "
        f"({'GPU' if gpu_rate <= host_rate else 'CPU'}-bound).",
        f"- Ray's own cost here: 1 actor {ray1:.1f} images/s marginal vs local {local:.1f} "
        f"({ray1 / local:.2f}x); a one-batch run takes {r['images_per_s']['ray, 1 actor']['one_batch_s']:.1f} s "
        "(actor start + bundle load), paid once per million-path window: negligible at 10 M images.",
        f"- The one driver writes every line: {driver * 1e6:.0f} us per line measured here (parse, write with "
        f"one fsync per batch of {args.batch_size}, count), so at most {driver_rate:,.0f} images/s per run, "
        "whatever the fleet.",
        "",
        "| GPUs | fleet images/s | one run (one driver) images/s | 10 M images, one run | 10 M images, split into enough runs |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in (int(x) for x in args.gpus.split(",")):
        fleet = n * per_gpu
        one = min(fleet, driver_rate)
        lines.append(
            f"| {n} | {fleet:,.0f} | {one:,.0f} | {args.images / one / 3600:.2f} h | "
            f"{args.images / fleet / 3600:.2f} h |"
        )
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
