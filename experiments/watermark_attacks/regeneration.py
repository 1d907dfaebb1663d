"""Regeneration attacks on the watermark: pass marked images through the zoo's generators.

Issue #12 asks for "regeneration through the zoo's autoencoders and the zoo's diffusion model": an
attacker who owns a generative model re-renders a marked image with it and hopes the mark does not
survive. Attacks, on the same images as the attack suite (one crop of each photo the checkpoint never
saw, marked with the suite's key and payload):

* ``ae-kl``, ``ae-tiny``: a round trip through the benchmark's two autoencoders (the zoo models
  ``detector corpus build`` trains; they are convolutional, so the whole image goes through at once);
* ``sdedit-t300``, ``sdedit-t600``: img2img through the zoo's DDPM, tile by tile at its 128 px crop
  size (noise to t, denoise with DDIM at the DDPM's 32 px working size, keep each tile's detail band
  above that: the corpus's ``sdedit`` generators exactly).

Reported like the suite: the API's status at FPR 1e-6, TPR (watermarked with the right payload), bit
accuracy, and the PSNR of the regenerated image against the marked one (how much the attack damaged).
Needs the zoo cache of a full build (``data/zoo-cache/full``) and the photo store.

    export DETECTOR_PHOTO_STORE=/path/to/photos
    python experiments/watermark_attacks/regeneration.py --cache data/zoo-cache/full
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from attacks import psnr  # noqa: E402
from run import PAYLOAD, crops  # noqa: E402

from detector.corpus.photos import load_photos  # noqa: E402
from detector.evaluation.provenance import git_commit  # noqa: E402
from detector.io import atomic_write_text  # noqa: E402
from detector.watermark import Watermarker, WatermarkKey, load_model  # noqa: E402
from detector.watermark.train import unseen_photos  # noqa: E402

ATTACKS = ("ae-kl", "ae-tiny", "sdedit-t300", "sdedit-t600")
#: The zoo's crop size: the DDPM img2img works on tiles of this side.
TILE = 128


def regenerators(cache: Path):
    """``{attack: fn(uint8 image, seed) -> uint8 image}`` over the cached zoo models."""
    from detector.corpus.manifest import CorpusError
    from detector.corpus.zoo import ensure_model, generate, get_generator
    from detector.corpus.zoo import load_model as load_zoo
    from detector.corpus.zoo.base import to_tensor, to_uint8

    loaded: dict[str, object] = {}

    def model_for(name: str):
        spec = get_generator(name)
        if spec.model not in loaded:
            try:  # no pool: a model missing from the cache is an error, not a training run
                folder, _ = ensure_model(spec.model, cache, None)
            except CorpusError as exc:
                raise SystemExit(f"{exc}; run `detector corpus build` first") from None
            loaded[spec.model] = load_zoo(spec.model, folder)
        return loaded[spec.model]

    def whole(name: str):
        def attack(image: np.ndarray, seed: int) -> np.ndarray:
            with torch.no_grad():
                x = to_tensor(image[None])
                return to_uint8(generate(name, model_for(name), 1, x, (seed, name), image.shape[0]))[0]

        return attack

    def tiled(name: str):
        def attack(image: np.ndarray, seed: int) -> np.ndarray:
            h, w = image.shape[:2]
            out = image.copy()
            tiles = [(t, left) for t in range(0, h - TILE + 1, TILE) for left in range(0, w - TILE + 1, TILE)]
            x = to_tensor(np.stack([image[t : t + TILE, left : left + TILE] for t, left in tiles]))
            with torch.no_grad():
                y = to_uint8(generate(name, model_for(name), len(tiles), x, (seed, name), TILE))
            for (t, left), tile in zip(tiles, y, strict=True):
                out[t : t + TILE, left : left + TILE] = tile
            return out

        return attack

    return {"ae-kl": whole("ae-kl"), "ae-tiny": whole("ae-tiny"), **{n: tiled(n) for n in ATTACKS[2:]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/zoo-cache/full"))
    parser.add_argument("--checkpoint", default=None, help="watermark checkpoint (default: the shipped one)")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--n", type=int, default=None, help="images (default: one per unseen photo)")
    parser.add_argument("--out", type=Path, default=HERE / "regeneration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    key = WatermarkKey(hashlib.sha256(b"watermark-attack-suite").digest())  # the suite's key
    wm = Watermarker(key, model=load_model(args.checkpoint))
    held = load_photos(unseen_photos())
    images = crops(held, args.n or len(held), args.size, seed=0)  # the suite's images
    attack_fns = regenerators(args.cache)
    rows = []
    for i, (name, clean) in enumerate(images):
        truth = wm.codec.encode(PAYLOAD, wm.content_of(clean))
        marked = wm.embed_array(clean, PAYLOAD)
        for attack, fn in attack_fns.items():
            attacked = fn(marked, i)
            start = time.perf_counter()
            result = wm.detect_array(attacked)
            bits = np.frombuffer(result.bits.encode(), np.uint8) - ord("0")
            rows.append(
                {
                    "attack": attack,
                    "image": name,
                    "status": result.status,
                    "payload_ok": result.payload == PAYLOAD,
                    "bit_accuracy": round(float((bits == truth).mean()), 4),
                    "psnr_vs_marked": round(psnr(attacked, marked), 2),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
        print(f"{i + 1}/{len(images)} {name}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Watermark regeneration attacks (zoo autoencoders and DDPM img2img)",
        "",
        f"Command: `python experiments/watermark_attacks/regeneration.py --cache {args.cache}`  ",
        f"Commit: `{git_commit()}`; images: one {args.size} px crop of each of the {len(images)} catalogued "
        "photos the watermark checkpoint never saw (the attack suite's images, key and payload); checkpoint "
        f"`{args.checkpoint or 'checkpoints/watermark (shipped)'}`, default strength, FPR 1e-6.",
        "",
        "| attack | n | TPR (watermarked, right payload) | forged | inverted | absent | bit accuracy | PSNR vs marked (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for attack in ATTACKS:
        sub = [r for r in rows if r["attack"] == attack]
        share = {s: np.mean([r["status"] == s for r in sub]) for s in ("forged", "inverted", "absent")}
        tpr = np.mean([r["status"] == "watermarked" and r["payload_ok"] for r in sub])
        lines.append(
            f"| {attack} | {len(sub)} | {tpr:.3f} | {share['forged']:.3f} | {share['inverted']:.3f} | "
            f"{share['absent']:.3f} | {np.mean([r['bit_accuracy'] for r in sub]):.3f} | "
            f"{np.mean([r['psnr_vs_marked'] for r in sub]):.2f} |"
        )
    atomic_write_text(args.out / "RESULTS.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
