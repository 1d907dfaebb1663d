"""Capture what the content hash sees, once, so that hash designs can be compared without the decoder.

For marked crops of the watermark's *training* photos (the choice set; the 70 unseen photos stay the
test of ``experiments/watermark_attacks``), every single-image attack of the suite is applied and the
detector's own search is run; the image as its chosen reading saw it (geometry undone) and that
image inside its uniform border are the two views the binding test hashes. Stored as 64 x 64 luma
thumbnails (box filter), with the clean crop's, in ``capture.npz``; plus thumbnails of unrelated
images for collision rates: more crops of the training photos and generated images of the corpus.

    DETECTOR_PHOTO_STORE=/path/to/photos python experiments/content_binding/capture.py \
        --corpus data/demo/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "watermark_attacks"))

import attacks  # noqa: E402
from run import crops  # noqa: E402

from detector.corpus.photos import catalogue, load_photos  # noqa: E402
from detector.io import load_image_array  # noqa: E402
from detector.watermark.api import Watermarker  # noqa: E402
from detector.watermark.binding import trim_border  # noqa: E402
from detector.watermark.payload import WatermarkKey  # noqa: E402
from detector.watermark.train import CHECKPOINT_TRAINED_ON  # noqa: E402

SIDE = 64


def thumb(image: np.ndarray) -> np.ndarray:
    luma = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L")
    return np.asarray(luma.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)


def generated_rows(manifest: str | Path, n: int) -> list[dict]:
    """``n`` generated (fake) rows of a corpus manifest, drawn once with a fixed seed: the generated
    images every script of this folder uses (capture, oracle attack, probe guard)."""
    with open(manifest, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "fake"]
    pick = np.random.default_rng(7).choice(len(rows), min(n, len(rows)), replace=False)
    return [rows[k] for k in sorted(pick)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=45, help="marked crops of the training photos")
    parser.add_argument("--unrelated", type=int, default=270, help="more crops for collision rates")
    parser.add_argument("--corpus", default=None, help="a corpus manifest: its generated images too")
    parser.add_argument("--generated", type=int, default=1500)
    parser.add_argument("--out", default=str(HERE / "capture.npz"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wm = Watermarker(WatermarkKey(hashlib.sha256(b"content-binding-capture").digest()))
    trained = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    marked_crops = crops(trained, args.n, 384, seed=5)
    names = list(attacks.TRANSFORMS) + list(attacks.BENIGN_EXTRA)
    transforms = attacks.TRANSFORMS | attacks.BENIGN_EXTRA
    seen = np.zeros((len(marked_crops), len(names), 2, SIDE, SIDE), np.uint8)
    found = np.zeros((len(marked_crops), len(names)), bool)
    clean = np.zeros((len(marked_crops), SIDE, SIDE), np.uint8)
    for i, (name, x) in enumerate(marked_crops):
        clean[i] = thumb(x)
        marked = wm.embed_array(x, 77)
        for j, attack in enumerate(names):
            logits, view, _ = wm.search_image(transforms[attack](marked))
            seen[i, j, 0], seen[i, j, 1] = thumb(view), thumb(trim_border(view))
            r = wm._result(logits, view, None, {})  # the API's verdict on that reading
            found[i, j] = r.payload == 77 and r.status in ("watermarked", "forged")
        print(f"[{i + 1}/{len(marked_crops)}] {name}", file=sys.stderr, flush=True)
    more = crops(trained, args.unrelated, 384, seed=6)
    unrelated = np.stack([thumb(x) for _, x in more])
    unrelated_photo = np.array([n.split("#")[0] for n, _ in more])
    generated = np.zeros((0, SIDE, SIDE), np.uint8)
    if args.corpus:
        root = Path(args.corpus).parent
        rows = generated_rows(args.corpus, args.generated)
        generated = np.stack([thumb(load_image_array(root / r["path"])) for r in rows])
    np.savez_compressed(
        args.out,
        seen=seen,
        found=found,
        clean=clean,
        attacks=np.array(names),
        crop_photo=np.array([n.split("#")[0] for n, _ in marked_crops]),
        unrelated=unrelated,
        unrelated_photo=unrelated_photo,
        generated=generated,
    )
    print(args.out)


if __name__ == "__main__":
    main()
