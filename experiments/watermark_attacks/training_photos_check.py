"""The geometric rows on crops of the watermark's *training* photos: where changes to the search are
debugged and checked, so that the 70 unseen photos of ``run.py`` stay the test.

    DETECTOR_PHOTO_STORE=/path/to/photos python experiments/watermark_attacks/training_photos_check.py

Prints how many of ``--n`` marked ``--size`` px crops (of ``CHECKPOINT_TRAINED_ON``, other windows than the
attack suite's attacker images) the API declares ``watermarked`` with the right payload after each
attack. Run it on two commits to compare a change.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attacks  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.watermark.api import Watermarker  # noqa: E402
from detector.watermark.payload import WatermarkKey  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON  # noqa: E402

ATTACKS = {
    f"resize{f}": (lambda x, f=f: attacks.resize(x, f)) for f in (0.3, 0.4, 0.8, 1.3, 1.4, 1.5, 2.0)
} | {
    "aspect512x384": lambda x: attacks.resize_to(x, 512, 384),
    "aspect384x512": lambda x: attacks.resize_to(x, 384, 512),
    "rotate25": lambda x: attacks.rotate(x, 25.0),
    "screenshot": attacks.screenshot,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=27)
    parser.add_argument("--size", type=int, default=384, help="crop side (px) before the attack")
    parser.add_argument("--seed", type=int, default=3, help="which crops (another seed: other windows)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    args = parser.parse_args()
    rows = {k: v for k, v in ATTACKS.items() if not args.only or k in args.only.split(",")}
    torch.set_num_threads(1)
    wm = Watermarker(
        WatermarkKey(hashlib.sha256(b"training-photos-check").digest()), checkpoint=args.checkpoint
    )
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    marked = [wm.embed_array(x, 77) for _, x in crops(trained, args.n, args.size, seed=args.seed)]
    print("| attack | found |\n| --- | --- |")
    total = 0
    for name, attack in rows.items():
        found = sum(
            (r := wm.detect_array(attack(m))).status == "watermarked" and r.payload == 77 for m in marked
        )
        total += found
        print(f"| {name} | {found} / {len(marked)} |", flush=True)
    print(f"| all | {total} / {len(marked) * len(rows)} |")


if __name__ == "__main__":
    main()
