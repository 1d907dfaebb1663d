"""Choose the attack-aware embedding on the choice set: crops of the watermark's training photos.

The 70 unseen photos are the suite's (experiments/watermark_attacks); nothing here reads them. The
choice set is crops of the nine photos the checkpoint was trained on, as they are and made hard the
way the unseen photos that fail are hard: grey (no colour to carry the mark's chroma) and dark
(x0.35: a weak JND mask). Each crop is marked with ``refine_steps`` 0 (the embedder's plain mark)
and each candidate, then attacked and detected with the shipped detector (full search, FPR 1e-6).

    python experiments/watermark_refine/choice.py --crops 8 --steps 0,15,30,60   # writes choice.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "watermark_attacks"))

import attacks  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark import Watermarker, WatermarkKey, load_model  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON  # noqa: E402

PAYLOAD = 4242
ATTACKS = ("none", "jpeg50", "webp50", "nlm", "resize0.3", "resize0.4", "resize1.4", "rotate25")
VARIANTS = {
    "as is": lambda x: x,
    "grey": lambda x: np.asarray(Image.fromarray(x).convert("L").convert("RGB")),
    "dark": lambda x: (x.astype(np.float32) * 0.35).astype(np.uint8),
}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=8, help="crops of the training photos (x3 variants)")
    parser.add_argument("--steps", default="0,15,30,60", help="refine_steps to compare (0: the plain mark)")
    parser.add_argument("--out", default=str(HERE / "choice.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    steps = [int(s) for s in args.steps.split(",")]
    wm = Watermarker(WatermarkKey(hashlib.sha256(b"watermark-refine-choice").digest()), model=load_model())
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    images = [
        (f"{name}/{v}", fn(x))
        for name, x in crops(trained, args.crops, 384, seed=5)
        for v, fn in VARIANTS.items()
    ]
    rows = []
    for i, (name, clean) in enumerate(images):
        for n in steps:
            start = time.perf_counter()
            marked = wm.embed_array(clean, PAYLOAD, refine_steps=n)
            row = {
                "image": name,
                "variant": name.split("/")[-1],
                "steps": n,
                "embed_seconds": round(time.perf_counter() - start, 2),
                "psnr": round(attacks.psnr(marked, clean), 2),
                "ssim": round(ssim(marked, clean), 4),
            }
            for attack in ATTACKS:
                result = wm.detect_array(attacks.TRANSFORMS[attack](marked))
                row[attack] = result.status == "watermarked" and result.payload == PAYLOAD
            rows.append(row)
        print(f"[{i + 1}/{len(images)}] {name}", file=sys.stderr, flush=True)

    summary = {}
    for n in steps:
        mine = [r for r in rows if r["steps"] == n]
        summary[n] = {
            "images": len(mine),
            "psnr": round(float(np.mean([r["psnr"] for r in mine])), 2),
            "ssim": round(float(np.mean([r["ssim"] for r in mine])), 4),
            "embed_seconds": round(float(np.median([r["embed_seconds"] for r in mine])), 2),
            **{f"{a} {v}": sum(r[a] for r in mine if r["variant"] == v) for a in ATTACKS for v in VARIANTS},
        }
    header = ["steps", "PSNR", "SSIM", "s/image"] + [f"{a}" for a in ATTACKS]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    per = len(images) // len(VARIANTS)
    for n, s in summary.items():
        cells = ["/".join(str(s[f"{a} {v}"]) for v in VARIANTS) for a in ATTACKS]
        print(f"| {n} | {s['psnr']} | {s['ssim']} | {s['embed_seconds']} | " + " | ".join(cells) + " |")
    print(f"(cells: watermarked with the right payload, of {per} crops each as is / grey / dark)")
    out = {"provenance": provenance(), "attacks": ATTACKS, "summary": summary, "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
