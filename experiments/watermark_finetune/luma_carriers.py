"""The luma test of the chroma diagnosis: the shipped checkpoint with every carrier replaced by its luma.

83% of the shipped carriers' energy is chroma, which JPEG and WebP subsample and quantise hardest. This
writes a checkpoint whose carriers are grey (each carrier's ITU-R 601 luma in all three channels; the
embedder still rescales the residual to the target PSNR, so the strength is unchanged) and the shipped
decoder (or a fresh one), as the ``--init-from`` of a decoder-only run (``--set decoder_curriculum=true``: the decoder has
to find new carriers). A new embedder: marks made with the shipped checkpoint do not decode with it.

    python experiments/watermark_finetune/luma_carriers.py OUT.safetensors
"""

from __future__ import annotations

import argparse

import torch

from detector.watermark.model import WatermarkModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default="checkpoints/watermark/model.safetensors")
    parser.add_argument("--fresh-decoder", action="store_true", help="a randomly initialised decoder")
    parser.add_argument("--keep-carriers", action="store_true", help="the control: carriers as they are")
    args = parser.parse_args()
    model = WatermarkModel.load(args.checkpoint)
    if args.fresh_decoder:
        torch.manual_seed(0)
        model.decoder = type(model.decoder)(model.cfg)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    with torch.no_grad():
        if args.keep_carriers:
            model.save(args.out, extra={"derived_from": args.checkpoint, "carriers": "unchanged (control)"})
            return
        luma = (model.embedder.carriers * weights).sum(dim=1, keepdim=True)
        model.embedder.carriers.copy_(luma.expand_as(model.embedder.carriers))
    model.save(args.out, extra={"derived_from": args.checkpoint, "carriers": "luma only (luma_carriers.py)"})


if __name__ == "__main__":
    main()
