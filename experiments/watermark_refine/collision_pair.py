"""Why one copy attack framed `skimage-astronaut` in the suite: the binding's decision on that pair.

The suite's copy rows put photo i's crop under the residual of attacker image i % 8; for photo 0
(`skimage-astronaut`) the copied mark was declared `watermarked` at 0.5x with refined marks and at 1x
with plain ones, `forged` at the other strengths. This script replays those copies (same key, payload,
crops and residual estimate as `experiments/watermark_attacks/run.py`) and prints, per mark and
strength, the API's status and where the received hash differs from the mark's: how many bits, and
each differing bit's rank among the received hash's bits by certainty (0 = least certain). The test
accepts at most 2 differing bits, all of rank < 5 (the 5 least certain).

    python experiments/watermark_refine/collision_pair.py     # writes collision_pair.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "watermark_attacks"
sys.path.insert(0, str(SUITE))

import attacks  # noqa: E402
from run import COPY_ALPHAS, PAYLOAD, crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.evaluation.provenance import provenance  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark import Watermarker, WatermarkKey  # noqa: E402
from detector.watermark.binding import content_hash, received_hashes  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON, unseen_photos  # noqa: E402


def differing(mark: np.ndarray, image: np.ndarray, key: WatermarkKey) -> dict:
    """Where the received hash (whole view) differs from the mark's, with each bit's certainty rank."""
    hashes, margins = received_hashes(image, key, len(mark))
    rank = np.argsort(np.argsort(margins[0], kind="stable"), kind="stable")
    differ = np.flatnonzero(mark != hashes[0])
    return {"bits": int(differ.size), "ranks": sorted(int(rank[i]) for i in differ)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,15", help="refine_steps of the attacker's marks")
    parser.add_argument("--out", type=Path, default=HERE / "collision_pair.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    key = WatermarkKey(hashlib.sha256(b"watermark-attack-suite").digest())  # the suite's key
    name, clean = crops(load_photos(unseen_photos()), len(unseen_photos()), 384, seed=0)[0]
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    source = crops(trained, 8, 384, 1)[0][1]  # the suite's attacker image 0
    mark = content_hash(source, key, 16)  # what the attacker's marks carry
    rows = [{"mark": "none (the clean photo)", "strength": 0.0, **differing(mark, clean, key)}]
    for steps in (int(s) for s in args.steps.split(",")):
        wm = Watermarker(key, refine_steps=steps)
        residual = attacks.residual(wm.embed_array(source, PAYLOAD))
        for alpha in COPY_ALPHAS:
            forged = attacks.add_estimate(clean, residual, alpha)
            result = wm.detect_array(forged)
            rows.append(
                {
                    "mark": f"refine_steps={steps}",
                    "strength": alpha,
                    "psnr": round(attacks.psnr(forged, clean), 2),
                    "status": result.status,
                    **differing(mark, forged, key),
                }
            )
            print(rows[-1], flush=True)
    report = {"provenance": provenance(), "photo": name, "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
