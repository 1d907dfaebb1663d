"""Attack-aware embedding: the mark of one image optimised to survive compression, at the same PSNR.

The embedder's mark is one carrier for every image, shaped by a local-contrast mask. Most of its
energy is colour, which JPEG subsamples and quantises hardest, so on grey, dark or smooth photos a
JPEG 50 round trip leaves too little of it. :func:`refine_residual` starts from that mark and adjusts
it, cell by cell on the decoder's working grid, so that the *unchanged* decoder still reads the
image's word after a differentiable JPEG (:func:`jpeg_proxy`), a blur (what denoisers take) and a
downscale, as well as untouched. After every step the residual is reshaped by the same mask and
rescaled to the exact target PSNR, so visibility is held by construction as in the embedder.

Only embedding changes: the decoder, the keyed test and its false-positive accounting are the same,
and marks made either way read alike. Real codecs are not used in the loop: passing gradients
straight through them (as training does) made the marks *weaker* on the choice set
(experiments/watermark_refine/RESULTS.md), because the gradient cannot see what the codec discards.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from detector.watermark.distortions import Blur, Resize
from detector.watermark.model import WatermarkModel, jnd_mask, working_size

#: Optimisation steps chosen on the choice set (experiments/watermark_refine); embedding is refined
#: only when asked (``Watermarker(..., refine_steps=DEFAULT_STEPS)``, ``--refine-steps 15``).
DEFAULT_STEPS = 15
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA_CORNER = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))


def _quant_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The JPEG standard's luma and chroma tables scaled to ``quality`` (the IJG rule)."""
    luma = torch.tensor(_JPEG_LUMA, dtype=torch.float32)
    chroma = torch.full((8, 8), 99.0)
    chroma[:4, :4] = torch.tensor(_JPEG_CHROMA_CORNER, dtype=torch.float32)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return tuple(((t * scale + 50) // 100).clamp(1, 255) for t in (luma, chroma))


def _dct8() -> torch.Tensor:
    return torch.tensor(
        [
            [
                (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)) * math.cos((2 * n + 1) * k * math.pi / 16)
                for n in range(8)
            ]
            for k in range(8)
        ]
    )


def _quantise_blocks(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """8x8 block DCT, quantise with ``table``, back: (B, H, W) with H, W multiples of 8. Rounding is
    the cubic approximation round(q) + (q - round(q))^3: close to rounding, with a useful gradient."""
    d = _dct8().to(plane)
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    q = (d @ blocks @ d.T) / table
    q = torch.round(q) + (q - torch.round(q)) ** 3
    blocks = d.T @ (q * table) @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, h, w)


def jpeg_proxy(x: torch.Tensor, quality: int = 50) -> torch.Tensor:
    """A differentiable JPEG round trip of (B, 3, H, W) in [0, 1]: YCbCr, 4:2:0 chroma, the standard
    tables at ``quality``. About 1.3 grey levels RMS from PIL's JPEG 50 on a photo (which itself moves
    it 5.5): close enough that optimising through it improves the real codec."""
    _, _, height, width = x.shape
    x = F.pad(x, (0, (-width) % 16, 0, (-height) % 16), mode="replicate") * 255
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b - 128
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    luma_table, chroma_table = _quant_tables(quality)
    luma = _quantise_blocks(luma, luma_table.to(x)) + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    chroma = torch.stack([_quantise_blocks(chroma[:, i], chroma_table.to(x)) for i in (0, 1)], 1)
    cb, cr = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
    out = torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], 1)
    return (out / 255)[:, :, :height, :width].clamp(0, 1)


def _views(y: torch.Tensor, scale: float, rng: random.Random) -> list[tuple[torch.Tensor, float]]:
    """What the loss reads: (image, grid factor) for the image as is, after JPEG 40-60, after a blur
    (sigma 0.8-1.5) and after a 0.3-0.5x downscale (the mark's grid shrinks with the image)."""
    f = rng.uniform(0.3, 0.5)  # drawn in this order: factor, quality, sigma
    quality = rng.randint(40, 60)
    sigma = rng.uniform(0.8, 1.5)
    return [
        (y, scale),
        (jpeg_proxy(y, quality), scale),
        (Blur((sigma, sigma))(y), scale),
        (Resize((f, f))(y), scale * f),
    ]


def refine_residual(
    model: WatermarkModel,
    x: torch.Tensor,
    bits: torch.Tensor,
    target_psnr: float | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> torch.Tensor:
    """The residual for one image ``x`` (1, 3, H, W) in [0, 1] carrying ``bits`` (1, n), optimised
    for ``steps`` Adam steps from the embedder's own (``steps=0`` returns that). Its PSNR is exactly
    ``target_psnr`` (the model's default when None), as the embedder's."""
    cfg, decoder = model.cfg, model.decoder
    psnr = cfg.target_psnr if target_psnr is None else target_psnr
    if steps <= 0:
        return model.embedder.residual(x, bits, psnr)
    _, _, height, width = x.shape
    h, w = working_size(height, width, cfg.scale)
    mask = jnd_mask(x, cfg.mask_floor, cfg.mask_cap)
    target_rms = 10 ** (-psnr / 20)

    def residual(cells: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(cells, size=(h * cfg.scale, w * cfg.scale), mode="bilinear", align_corners=False)
        shaped = up[:, :, :height, :width] * mask
        return shaped * (target_rms / shaped.pow(2).mean().add(1e-12).sqrt())

    # The loss reads the centre window the decoder reads, starting on a whole tile (so the aligned
    # reading's shift stays 0) and a JPEG block: large images cost no more than the window, and
    # their other parts keep the embedder's mark.
    window, period = cfg.max_grid * cfg.scale, cfg.tile * cfg.scale
    top = max(0, (height - window) // 2) // period * period
    left = max(0, (width - window) // 2) // period * period
    signs = bits.float() * 2 - 1
    cells = model.embedder.carrier(bits, h, w).detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([cells], lr=0.05 * float(cells.detach().abs().mean()))
    rng = random.Random(seed)
    with torch.enable_grad():  # callers embed under no_grad; only ``cells`` is differentiated
        for _ in range(steps):
            y = (x + residual(cells)).clamp(0, 1)
            y = y + ((y * 255).round() / 255 - y).detach()  # saved as 8 bits
            y = y[:, :, top : top + window, left : left + window]
            loss = sum(
                F.softplus(-signs * decoder.read(decoder.grid_features(view, factor))[:, :, 0, 0]).mean()
                for view, factor in _views(y, float(cfg.scale), rng)
            )
            (cells.grad,) = torch.autograd.grad(loss, [cells])
            optimiser.step()
    with torch.no_grad():
        return residual(cells.detach())
