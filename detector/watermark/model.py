"""The learned watermark: an embedder that adds a bounded, masked residual and a decoder that reads bits.

Both work on a *working grid* at a fixed fraction of the image's own pixel scale (``scale``: the grid is
the image downsampled by that factor), so any image size works and cropping keeps the pattern's scale.

**Embedder.** Each bit owns a learned carrier tile (3 x ``tile`` x ``tile``); the message's carrier is
the sum of the tiles signed by the bits, tiled periodically over the working grid, scaled up to full
resolution, attenuated where the eye is most sensitive (a JND-style local-contrast mask: flat regions
get less, textured ones more) and rescaled to an exact target PSNR (the strength knob). So
imperceptibility is a constraint met by construction and training spends its steps on robustness.

**Decoder.** A small CNN maps the working grid to a saturating feature map (it learns to suppress
image content, which is noise here); the map is *folded* modulo the tile period (every tile averaged
coherently: the SNR grows with the image area), and a learned readout is circularly correlated with the
fold for every cyclic shift at once (FFT). A crop only shifts the fold cyclically, so the decoder takes
the shift, and optionally the scale (``factors``: e.g. a 0.5x resized image folds at half the factor),
where the readout is most confident. That choice depends on the image only, never on the key, so the
keyed payload test downstream stays valid.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 2


@dataclass
class WatermarkModelConfig:
    """Architecture of the embedder/decoder pair (saved in the checkpoint's metadata)."""

    n_bits: int = 64
    scale: int = 4  # working grid = image / scale (coarse enough to survive JPEG 50)
    tile: int = 16  # carrier period on the working grid
    feature_channels: int = 8  # decoder features folded and read out
    decode_width: int = 16
    target_psnr: float = 41.0  # default strength: PSNR of the residual in dB (RGB, 8-bit peak)
    mask_floor: float = 0.015  # JND mask: flat regions keep this much (relative to local contrast)
    mask_cap: float = 0.12
    max_grid: int = 256  # decoding reads a centre window of at most this many grid cells a side


def working_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def to_grid(x: torch.Tensor, scale: float) -> torch.Tensor:
    _, _, height, width = x.shape
    h, w = working_size(height, width, scale)
    if (h, w) == (height, width):
        return x
    mode = "area" if h < height else "bilinear"
    return F.interpolate(x, size=(h, w), mode=mode, **({} if mode == "area" else {"align_corners": False}))


@torch.no_grad()
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


class Embedder(nn.Module):
    """(image in [0,1], bits in {0,1}) -> watermarked image in [0,1], same size as the input."""

    def __init__(self, cfg: WatermarkModelConfig):
        super().__init__()
        self.cfg = cfg
        self.carriers = nn.Parameter(torch.randn(cfg.n_bits, 3, cfg.tile, cfg.tile) / math.sqrt(cfg.n_bits))

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
        raw = self.carrier(bits, h, w)
        if (h, w) != (height, width):
            raw = F.interpolate(
                raw, size=(h * cfg.scale, w * cfg.scale), mode="bilinear", align_corners=False
            )
            raw = raw[:, :, :height, :width]
        shaped = raw * jnd_mask(x, cfg.mask_floor, cfg.mask_cap)
        psnr = cfg.target_psnr if target_psnr is None else target_psnr
        target_rms = 10 ** (-psnr / 20)
        rms = shaped.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
        return shaped * (target_rms / rms)

    def forward(self, x: torch.Tensor, bits: torch.Tensor, target_psnr: float | None = None) -> torch.Tensor:
        return (x + self.residual(x, bits, target_psnr)).clamp(0, 1)


class Decoder(nn.Module):
    """Image of any size in [0,1] -> one logit per bit (positive = 1)."""

    def __init__(self, cfg: WatermarkModelConfig):
        super().__init__()
        self.cfg = cfg
        w, c, t = cfg.decode_width, cfg.feature_channels, cfg.tile
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 5, padding=2, padding_mode="replicate"),
            nn.Tanh(),
            nn.Conv2d(w, w, 3, padding=1, padding_mode="replicate"),
            nn.Tanh(),
            nn.Conv2d(w, c, 1),
        )
        self.readout = nn.Parameter(0.1 * torch.randn(cfg.n_bits, c, t, t) / math.sqrt(c * t * t))
        self.gain = nn.Parameter(torch.tensor(math.log(4.0)))
        self.bias = nn.Parameter(torch.zeros(cfg.n_bits))

    def fold(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, T, T): the mean of every position with the same phase modulo T."""
        t = self.cfg.tile
        b, c, h, w = feats.shape
        ph, pw = -(-h // t) * t, -(-w // t) * t
        padded = F.pad(feats, (0, pw - w, 0, ph - h))
        ones = F.pad(torch.ones(1, 1, h, w, dtype=feats.dtype, device=feats.device), (0, pw - w, 0, ph - h))
        total = padded.view(b, c, ph // t, t, pw // t, t).sum(dim=(2, 4))
        count = ones.view(1, 1, ph // t, t, pw // t, t).sum(dim=(2, 4))
        return total / count.clamp_min(1)

    def shifted_logits(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """Logits for every cyclic shift: (B, n_bits, T, T)."""
        t = self.cfg.tile
        window = math.ceil(self.cfg.max_grid * factor)  # crop-invariance: a centre window carries it all
        _, _, height, width = x.shape
        if height > window or width > window:
            top, left = max(0, (height - window) // 2), max(0, (width - window) // 2)
            x = x[:, :, top : top + window, left : left + window]
        grid = to_grid(x, factor)
        if min(grid.shape[-2:]) < 5:
            grid = F.pad(
                grid, (0, max(0, 5 - grid.shape[-1]), 0, max(0, 5 - grid.shape[-2])), mode="replicate"
            )
        folded = self.fold(self.features((grid - 0.5) * 4))
        # Only the pattern within a tile carries bits: drop the fold's mean (biases, image DC) and
        # normalise its energy, so the logit scale depends on neither contrast nor image size.
        folded = folded - folded.mean(dim=(2, 3), keepdim=True)
        folded = folded / folded.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
        spec = torch.fft.rfft2(folded)
        kernel = torch.fft.rfft2(self.readout)
        corr = torch.fft.irfft2(torch.einsum("bcuv,ncuv->bnuv", spec, kernel.conj()), s=(t, t))
        return corr * self.gain.exp() + self.bias.view(1, -1, 1, 1)

    def forward(
        self, x: torch.Tensor, factors: tuple[float, ...] | None = None, aligned: bool = False
    ) -> torch.Tensor:
        """Logits at the most confident (scale, shift); ``factors`` default to ``(cfg.scale,)``.

        ``aligned=True`` reads at shift 0 (the image's own top-left is the tile origin): training starts
        so, on uncropped images, because the shift search only finds the right shift once the readout
        has learned the carriers.
        """
        best_logits, best_conf = None, None
        candidates = []
        for factor in factors or (self.cfg.scale,):
            # Sub-cell phase: a crop rarely starts on the grid; try offsets within a cell (key-independent).
            step = max(1, int(factor) // 2) if not aligned else int(max(factor, 1))
            offsets = range(0, max(1, int(factor)), step)
            candidates += [(factor, dy, dx) for dy in offsets for dx in offsets]
        for factor, dy, dx in candidates:
            logits = self.shifted_logits(x[:, :, dy:, dx:], factor)
            b, n, t, _ = logits.shape
            flat = logits.view(b, n, t * t)
            if aligned:
                return flat[:, :, 0]
            conf = flat.abs().mean(dim=1)  # (B, T*T)
            top_conf, idx = conf.max(dim=1)
            chosen = flat.gather(2, idx.view(b, 1, 1).expand(b, n, 1)).squeeze(2)
            if best_logits is None:
                best_logits, best_conf = chosen, top_conf
            else:
                better = (top_conf > best_conf).unsqueeze(1)
                best_logits = torch.where(better, chosen, best_logits)
                best_conf = torch.maximum(top_conf, best_conf)
        return best_logits


class WatermarkModel(nn.Module):
    """The embedder/decoder pair, saved and loaded together as one safetensors file."""

    def __init__(self, cfg: WatermarkModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or WatermarkModelConfig()
        self.embedder = Embedder(self.cfg)
        self.decoder = Decoder(self.cfg)

    @property
    def search_factors(self) -> tuple[float, ...]:
        """Grids the decoder searches: the native one and half of it (an image resized to 0.5x)."""
        return (float(self.cfg.scale), self.cfg.scale / 2)

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
