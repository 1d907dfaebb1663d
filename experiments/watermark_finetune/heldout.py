"""Decoder fine-tuning, the choice set: held-out crops of the *training* photos, attacked, read by each
checkpoint's decoder.

The unseen photos of ``experiments/watermark_attacks`` are the test set, so nothing is chosen on them:
this compares checkpoints on the right band of each photo of ``CHECKPOINT_TRAINED_ON`` (``val_band`` of
its width, the same cut :func:`detector.watermark.train.band_split` makes; a fine-tuning run with that
``val_band`` never sees these pixels), in colour and in grey. Each crop is marked with the *shipped*
embedder (what a fine-tuned decoder has to read), attacked, and read by the decoder alone (native and
half grid, rotations, shifts: ``WatermarkModel.search_factors`` / ``search_angles``, no lattice sync),
except the ``(full search)`` rows (colour only): those go through the API's search, lattice sync included.
Figures: mean bit accuracy and the share of crops with >= 60 of 64 bits right (the bound test's
threshold for ``watermarked`` at FPR 1e-6).

    python experiments/watermark_finetune/heldout.py CHECKPOINT [CHECKPOINT ...] [--out FILE.json]
    python experiments/watermark_finetune/heldout.py --own-embedder CHECKPOINT ...  # jointly trained pairs
    python experiments/watermark_finetune/heldout.py --table FILE.json [FILE.json ...]  # markdown table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from detector.corpus.photos import catalogue, load_photos
from detector.io import atomic_write_text
from detector.watermark.distortions import from_uint8, jpeg_numpy, nlm_numpy, to_uint8, webp_numpy
from detector.watermark.model import WatermarkModel
from detector.watermark.payload import WatermarkKey
from detector.watermark.train import CHECKPOINT_TRAINED_ON, band_split, greyscale

#: The choice set's watermark key (the reading is key-independent; the keyed test is not).
KEY = WatermarkKey(b"heldout-choice-set-key-0123456789")
#: Bits of 64 the keyed test needs for ``watermarked`` at FPR 1e-6 with content binding (payload.py).
THRESHOLD = 60


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.LANCZOS))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.BICUBIC))


ATTACKS = {
    "none": lambda x: x,
    "jpeg50": lambda x: jpeg_numpy(x, 50),
    "jpeg30": lambda x: jpeg_numpy(x, 30),
    "webp50": lambda x: webp_numpy(x, 50),
    "nlm5": lambda x: nlm_numpy(x, 5.0),
    "resize0.5": lambda x: _resize(x, 0.5),
    "resize0.8": lambda x: _resize(x, 0.8),
    "rotate5": lambda x: _rotate(x, 5.0),
    "crop0.5": lambda x: x[: x.shape[0] * 7 // 10, : x.shape[1] * 7 // 10],
    "resize0.75+jpeg80": lambda x: jpeg_numpy(_resize(x, 0.75), 80),
}
#: Read through the API's full search (lattice sync, mirrors), colour crops only (slower): the resizes
#: the decoder's own 1x / 0.5x grids cannot read.
SYNC_ATTACKS = {
    "resize0.8 (full search)": lambda x: _resize(x, 0.8),
    "resize1.3 (full search)": lambda x: _resize(x, 1.3),
    "resize1.4 (full search)": lambda x: _resize(x, 1.4),
    # what platforms do: shrink, then recompress (the v6 mark reads 0 of 70 unseen photos after these)
    "resize0.75+jpeg80 (full search)": lambda x: jpeg_numpy(_resize(x, 0.75), 80),
    "resize0.5+jpeg80 (full search)": lambda x: jpeg_numpy(_resize(x, 0.5), 80),
}


def crops(band: float, size: int, per_photo: int, seed: int) -> list[np.ndarray]:
    photos = load_photos([p for p in catalogue() if p.name in CHECKPOINT_TRAINED_ON])
    _, held = band_split(photos, band, size)
    rng = np.random.default_rng(seed)
    out = []
    for _, image in held:
        h, w = image.shape[:2]
        for _ in range(per_photo):
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            out.append(np.ascontiguousarray(image[top : top + size, left : left + size]))
    return out


@torch.no_grad()
def carrier_energy(model: WatermarkModel, images=None) -> dict[str, float]:
    """Share of the mark's energy in luma and in each chroma channel (JPEG's YCbCr): JPEG and WebP
    subsample and coarsely quantise chroma, so a mark that lives in chroma is what they hit. Measured on
    the residual the embedder adds to ``images`` (the JND mask and any ``luma_share`` included), else on
    its raw carriers."""
    ycbcr = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    if images:
        gen = torch.Generator().manual_seed(0)
        x = torch.stack([from_uint8(image) for image in images])
        residual = model.embedder.residual(
            x, torch.randint(0, 2, (len(images), model.cfg.n_bits), generator=gen)
        )
        energy = torch.einsum("ij,bjhw->bihw", ycbcr, residual).pow(2).mean(dim=(0, 2, 3))
    else:
        energy = (
            torch.einsum("ij,njtu->nitu", ycbcr, model.embedder.carriers.detach()).pow(2).mean(dim=(0, 2, 3))
        )
    return {c: round(float(e), 4) for c, e in zip(("Y", "Cb", "Cr"), energy / energy.sum(), strict=True)}


@torch.no_grad()
def imperceptibility(embedder_model: WatermarkModel, images, seed: int) -> dict[str, float]:
    """Mean PSNR and SSIM of the marked crops against the clean ones (the PSNR is fixed by construction;
    SSIM shows where the mask puts the energy: flat regions show it most)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gen = torch.Generator().manual_seed(seed)
    psnrs, ssims = [], []
    for image in images:
        bits = torch.randint(0, 2, (1, 64), generator=gen)
        marked = to_uint8(embedder_model.embedder(from_uint8(image).unsqueeze(0), bits)[0])
        psnrs.append(peak_signal_noise_ratio(image, marked, data_range=255))
        ssims.append(structural_similarity(image, marked, channel_axis=2))
    return {"psnr": round(float(np.mean(psnrs)), 2), "ssim": round(float(np.mean(ssims)), 4)}


def _full_search(model: WatermarkModel):
    """The API's full search as a function image -> logits (the key plays no part in the reading)."""
    from detector.watermark.api import Watermarker

    wm = Watermarker(KEY, model=model)
    return lambda image: torch.from_numpy(wm.search_image(image)[0]).unsqueeze(0)


@torch.no_grad()
def evaluate(
    decoder_model: WatermarkModel, embedder_model: WatermarkModel, images, seed: int, sync: bool = False
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    marked, truth = [], []
    for image in images:
        bits = torch.randint(0, 2, (1, 64), generator=gen)
        x = from_uint8(image).unsqueeze(0)
        marked.append(to_uint8(embedder_model.embedder(x, bits)[0]))
        truth.append(bits[0].numpy())
    full = _full_search(decoder_model) if sync else None
    for name, attack in (ATTACKS | SYNC_ATTACKS if sync else ATTACKS).items():
        accs = []
        for m, t in zip(marked, truth, strict=True):
            if name in SYNC_ATTACKS:
                logits = full(attack(m))
            else:
                logits = decoder_model.decoder(
                    from_uint8(attack(m)).unsqueeze(0),
                    decoder_model.search_factors,
                    angles=decoder_model.search_angles,
                    stop_confidence=decoder_model.cfg.stop_confidence,
                )
            accs.append(float(((logits[0] > 0).long().numpy() == t).mean()))
        accs = np.array(accs)
        out[name] = {
            "bit_accuracy": round(float(accs.mean()), 4),
            "share_ge_60": round(float((accs * 64 >= THRESHOLD - 1e-9).mean()), 4),
        }
    return out


#: End to end through the API (embed with binding, attack, full search, keyed test at FPR 1e-6).
DETECT_ATTACKS = {name: ATTACKS[name] for name in ("none", "jpeg50", "jpeg30", "webp50", "nlm5")} | {
    name: SYNC_ATTACKS[name] for name in ("resize1.4 (full search)", "resize0.75+jpeg80 (full search)")
}


def detection(model: WatermarkModel, images, seed: int) -> dict:
    """Share of marked crops the API declares ``watermarked`` with the right payload, per attack, and
    the claims (any status but ``absent``) it makes on the clean crops."""
    from detector.watermark.api import Watermarker

    wm = Watermarker(KEY, model=model)
    rng = np.random.default_rng(seed)
    payloads = [int(rng.integers(0, wm.codec.max_payload + 1)) for _ in images]
    marked = [wm.embed_array(image, p) for image, p in zip(images, payloads, strict=True)]
    out = {"clean_claims": sum(wm.detect_array(image).status != "absent" for image in images)}
    for name, attack in DETECT_ATTACKS.items():
        hits = [
            (r := wm.detect_array(attack(m))).status == "watermarked" and r.payload == p
            for m, p in zip(marked, payloads, strict=True)
        ]
        out[name] = round(float(np.mean(hits)), 4)
    return out


def detection_table(result: dict) -> str:
    ckpts = [k for k, v in result.items() if isinstance(v, dict) and "detected" in v]
    names = [f"`{Path(c).parent.name}/{Path(c).name}`" for c in ckpts]
    lines = [f"| attack | {' | '.join(names)} |", "| --- |" + " --- |" * len(ckpts)]
    for attack in result[ckpts[0]]["detected"]:
        lines.append(f"| {attack} | " + " | ".join(str(result[c]["detected"][attack]) for c in ckpts) + " |")
    return "\n".join(lines)


def table(result: dict) -> str:
    """Markdown: one row per (crops, attack), bit accuracy and share >= 60 bits for each checkpoint."""
    ckpts = [k for k, v in result.items() if isinstance(v, dict) and "colour" in v]
    head = " | ".join(f"`{Path(c).parent.name}/{Path(c).name}` acc | >= 60" for c in ckpts)
    lines = [f"| crops | attack | {head} |", "| --- | --- |" + " --- | --- |" * len(ckpts)]
    for kind in ("colour", "grey"):
        for attack in result[ckpts[0]][kind]:  # the full-search rows: colour only
            cells = " | ".join(
                f"{result[c][kind][attack]['bit_accuracy']:.3f} | {result[c][kind][attack]['share_ge_60']:.3f}"
                for c in ckpts
            )
            lines.append(f"| {kind} | {attack} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument(
        "--table", nargs="+", default=[], help="print the markdown table of result JSONs (merged) and stop"
    )
    parser.add_argument("--embedder", default="checkpoints/watermark/model.safetensors")
    parser.add_argument(
        "--own-embedder",
        action="store_true",
        help="mark with each checkpoint's own embedder (jointly trained pairs) instead of --embedder",
    )
    parser.add_argument("--band", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--per-photo", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mask-floor",
        type=float,
        default=None,
        help="embed with this JND floor instead of the checkpoint's (more mark in flat regions, same PSNR)",
    )
    parser.add_argument(
        "--detect",
        action="store_true",
        help="also detect end to end through the API (each checkpoint embeds its own marks)",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.table:
        merged = {}
        for path in args.table:
            merged |= json.loads(Path(path).read_text())
        print(table(merged))
        if any(isinstance(v, dict) and "detected" in v for v in merged.values()):
            print()
            print(detection_table(merged))
        return
    torch.set_num_threads(1)
    embedder = WatermarkModel.load(args.embedder)
    if args.mask_floor is not None:
        embedder.cfg.mask_floor = args.mask_floor
    colour = crops(args.band, args.size, args.per_photo, args.seed)
    grey = [greyscale(x) for x in colour]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    result = {
        "commit": commit.strip() or "unknown",
        "band": args.band,
        "size": args.size,
        "crops": len(colour),
        "embedder": args.embedder,
        "carrier_energy_share": carrier_energy(embedder, colour),
        "mask_floor": embedder.cfg.mask_floor,
        "imperceptibility": imperceptibility(embedder, colour, args.seed),
    }
    for ckpt in args.checkpoints:
        model = WatermarkModel.load(ckpt)
        marker = model if args.own_embedder else embedder
        result[ckpt] = {
            "colour": evaluate(model, marker, colour, args.seed, sync=True),
            "grey": evaluate(model, marker, grey, args.seed),
        }
        if args.detect:
            result[ckpt]["detected"] = detection(model, colour, args.seed)
            print(f"  detected (API, colour): {result[ckpt]['detected']}", file=sys.stderr)
        if args.own_embedder:
            result[ckpt]["carrier_energy_share"] = carrier_energy(model, colour)
            result[ckpt]["imperceptibility"] = imperceptibility(model, colour, args.seed)
        print(ckpt, file=sys.stderr)
        for kind in ("colour", "grey"):
            for attack, r in result[ckpt][kind].items():
                print(f"  {kind:6s} {attack:18s} acc {r['bit_accuracy']:.3f}  >=60: {r['share_ge_60']:.3f}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
