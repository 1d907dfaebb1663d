"""The learned watermark: an embedder that adds a bounded, masked residual and a decoder that reads bits.

Both networks are fully convolutional and work on a *working grid* at a fixed fraction of the image's
own pixel scale (``scale``: the grid is the image downsampled by that factor). Working at a fixed pixel
scale, not a fixed size, is what makes cropping harmless: the decoder ends in global average pooling,
so any large enough window of the watermarked image carries the whole message. The embedder tiles a
learned, message-dependent carrier texture over the grid, shapes it with a small CNN that also sees
the image, scales it up to full resolution, attenuates it where the eye is most sensitive (a JND-style
mask: flat regions get less, textured ones more) and rescales it to an exact target PSNR (the strength
knob). So imperceptibility is a constraint met by construction and training spends its steps on
robustness.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 1


@dataclass
class WatermarkModelConfig:
    """Architecture of the embedder/decoder pair (saved in the checkpoint's metadata)."""

    n_bits: int = 64
    scale: int = 2  # working grid = image / scale
    tile: int = 16  # carrier period on the working grid
    carrier_channels: int = 8
    embed_width: int = 16
    decode_width: int = 16
    target_psnr: float = 41.0  # default strength: PSNR of the residual in dB (RGB, 8-bit peak)
    mask_floor: float = 0.015  # JND mask: flat regions keep this much (relative to local contrast)
    mask_cap: float = 0.12


def working_size(height: int, width: int, scale: int) -> tuple[int, int]:
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def jnd_mask(x: torch.Tensor, floor: float, cap: float) -> torch.Tensor:
    """Where a change is hard to see: local luminance contrast (7x7 std), floored and capped.

    Texture masks small changes; flat sky and skin show them. The floor keeps some capacity in flat
    regions; the cap stops all energy going to a few strong edges (which JPEG rings around anyway).
    Returned with mean 1 per image so it shapes the residual without setting its strength.
    """
    luma = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).float()
    pad = 3
    padded = F.pad(luma, (pad, pad, pad, pad), mode="replicate")
    mean = F.avg_pool2d(padded, 7, stride=1)
    sq = F.avg_pool2d(padded * padded, 7, stride=1)
    std = (sq - mean * mean).clamp_min(0).sqrt()
    mask = std.clamp(max=cap) + floor
    return mask / mask.mean(dim=(2, 3), keepdim=True)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        cin, cout, 3, stride=stride, padding=1, padding_mode="reflect" if stride == 1 else "zeros"
    )


class Embedder(nn.Module):
    """(image in [0,1], bits in {0,1}) -> watermarked image in [0,1], same size as the input."""

    def __init__(self, cfg: WatermarkModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.carrier_channels
        self.carriers = nn.Parameter(torch.randn(cfg.n_bits, c, cfg.tile, cfg.tile) / math.sqrt(cfg.n_bits))
        w = cfg.embed_width
        self.body = nn.Sequential(_conv(3 + c, w), nn.GELU(), nn.Conv2d(w, 3, 1))

    def carrier(self, bits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The message's carrier texture, tiled from the top-left corner to cover ``height x width``."""
        signs = bits.float() * 2 - 1
        tile = torch.einsum("bn,nctu->bctu", signs, self.carriers)
        reps_h = -(-height // self.cfg.tile)
        reps_w = -(-width // self.cfg.tile)
        return tile.repeat(1, 1, reps_h, reps_w)[:, :, :height, :width]

    def residual(self, x: torch.Tensor, bits: torch.Tensor, target_psnr: float | None = None) -> torch.Tensor:
        """The additive residual at full resolution, scaled so that PSNR(x, x + r) = target_psnr."""
        cfg = self.cfg
        _, _, height, width = x.shape
        h, w = working_size(height, width, cfg.scale)
        small = F.interpolate(x, size=(h, w), mode="area") if (h, w) != (height, width) else x
        raw = self.body(torch.cat([small - 0.5, self.carrier(bits, h, w)], dim=1))
        if (h, w) != (height, width):
            raw = F.interpolate(raw, size=(height, width), mode="bilinear", align_corners=False)
        shaped = raw * jnd_mask(x, cfg.mask_floor, cfg.mask_cap)
        psnr = cfg.target_psnr if target_psnr is None else target_psnr
        target_rms = 10 ** (-psnr / 20)
        rms = shaped.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
        return shaped * (target_rms / rms)

    def forward(self, x: torch.Tensor, bits: torch.Tensor, target_psnr: float | None = None) -> torch.Tensor:
        return (x + self.residual(x, bits, target_psnr)).clamp(0, 1)


class Decoder(nn.Module):
    """Image of any size in [0,1] -> one logit per bit (positive = 1). Global pooling: crop-invariant."""

    def __init__(self, cfg: WatermarkModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.decode_width
        self.body = nn.Sequential(
            _conv(3, w),
            nn.GELU(),
            _conv(w, 2 * w, stride=2),
            nn.GroupNorm(8, 2 * w),
            nn.GELU(),
            _conv(2 * w, 2 * w),
            nn.GELU(),
            _conv(2 * w, 4 * w, stride=2),
            nn.GroupNorm(8, 4 * w),
            nn.GELU(),
            _conv(4 * w, 4 * w),
            nn.GELU(),
        )
        self.head = nn.Linear(4 * w, cfg.n_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h, w = working_size(height, width, self.cfg.scale)
        small = F.interpolate(x, size=(h, w), mode="area") if (h, w) != (height, width) else x
        if min(h, w) < 8:  # tiny inputs: pad to the smallest grid the strided body can pool
            small = F.pad(small, (0, max(0, 8 - w), 0, max(0, 8 - h)), mode="replicate")
        feats = self.body(small - 0.5)
        return self.head(feats.mean(dim=(2, 3)))


class WatermarkModel(nn.Module):
    """The embedder/decoder pair, saved and loaded together as one safetensors file."""

    def __init__(self, cfg: WatermarkModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or WatermarkModelConfig()
        self.embedder = Embedder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write weights as safetensors; architecture and ``extra`` (e.g. training figures) as metadata."""
        from safetensors.torch import save

        from detector.io import atomic_writer

        meta = {"format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(self.cfg))}
        if extra:
            meta["extra"] = json.dumps(extra)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, "wb") as handle:
            handle.write(save(state, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> WatermarkModel:
        """Load a checkpoint written by :meth:`save` (safetensors: no code runs on load)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"watermark checkpoint not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                state = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types for malformed headers
            raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
        if "config" not in meta:
            raise ValueError(f"{path}: checkpoint has no watermark config in its metadata")
        known = {f.name for f in fields(WatermarkModelConfig)}
        raw = json.loads(meta["config"])
        cfg = WatermarkModelConfig(**{k: v for k, v in raw.items() if k in known})
        model = cls(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: checkpoint does not fit the model (missing {missing}, unexpected {unexpected})"
            )
        model.eval()
        return model

    @staticmethod
    def read_extra(path: str | Path) -> dict:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        return json.loads(meta.get("extra", "{}"))
