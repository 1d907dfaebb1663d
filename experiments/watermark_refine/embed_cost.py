"""Embedding time of the plain and the refined mark, side by side, by image size (one torch thread).

Images: one bundled photo resized to each side; every configuration timed ``--rounds`` times in turn
(plain and refined interleaved), medians reported, so a busy machine slows both alike.

    python experiments/watermark_refine/embed_cost.py     # writes embed_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.corpus.photos import bundled_photos, load_photos
from detector.evaluation.provenance import provenance
from detector.io import atomic_write_text
from detector.watermark import Watermarker, WatermarkKey

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="384,512,1024")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "embed_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    [(name, photo)] = load_photos([p for p in bundled_photos() if p.name == "skimage-astronaut"])
    wm = Watermarker(WatermarkKey(b"embed-cost-check-key-0123456789a"))
    wm.embed_array(np.ascontiguousarray(photo[:128, :128]), 1, refine_steps=args.steps)  # warm-up
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        image = np.asarray(Image.fromarray(photo).resize((side, side), Image.Resampling.LANCZOS))
        seconds = {0: [], args.steps: []}
        for _ in range(args.rounds):
            for steps in seconds:
                start = time.perf_counter()
                wm.embed_array(image, 7, refine_steps=steps)
                seconds[steps].append(time.perf_counter() - start)
        plain, refined = (float(np.median(seconds[s])) for s in seconds)
        rows.append({"side": side, "plain_s": round(plain, 3), "refined_s": round(refined, 3)})
        print(rows[-1], flush=True)
    report = {"provenance": provenance(), "photo": name, "refine_steps": args.steps, "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
