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
where the readout is most confident. Small rotations are undone on the feature map (see
:meth:`Decoder.forward`). Larger resizes, squeezes, rotations and mirrors are undone before the
decoder runs, by :mod:`detector.watermark.sync`. That choice depends on the image only, never on the
key, so the keyed payload test downstream stays valid without a multiple-testing correction for the
search.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
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
    # Share of the residual's energy that is grey (the same change in R, G and B: what JPEG keeps in
    # its full-resolution luma); the rest is colour. 0: the carriers choose freely (the v6 checkpoint
    # put 83% in chroma, which JPEG and WebP subsample and quantise hardest, and a grey photo cannot carry).
    luma_share: float = 0.0
    mask_cap: float = 0.12
    max_grid: int = 256  # decoding reads a centre window of at most this many grid cells a side
    # The rotation/scale search stops once a candidate is this confident (mean |logit|): clean photos
    # stay below ~2.5, marked ones reach ~6 (4 after a 5 degree rotation, 3 after JPEG 50). It only saves time:
    # the choice is key-independent either way.
    stop_confidence: float = 4.0


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


def split_energy(residual: torch.Tensor, luma_share: float) -> torch.Tensor:
    """The residual with ``luma_share`` of its energy in its grey part, the rest in its colour part.

    The grey part is the mean over R, G and B repeated in each (a pure brightness change, which JPEG
    keeps in its full-resolution Y channel); the colour part is what is left (channel mean zero). The two
    are orthogonal, so the shares are exact. Each is normalised, then mixed by the share: the split is
    a constraint, not something training can drift away from."""
    grey = residual.mean(dim=1, keepdim=True).expand_as(residual)
    colour = residual - grey

    def unit(part: torch.Tensor) -> torch.Tensor:
        return part / part.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()

    return math.sqrt(luma_share) * unit(grey) + math.sqrt(1.0 - luma_share) * unit(colour)


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
        if cfg.luma_share:
            shaped = split_energy(shaped, cfg.luma_share)
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
        padded = feats if (ph, pw) == (h, w) else F.pad(feats, (0, pw - w, 0, ph - h))
        ones = F.pad(torch.ones(1, 1, h, w, dtype=feats.dtype, device=feats.device), (0, pw - w, 0, ph - h))
        # One dimension at a time: torch sums two strided dimensions at once several times slower.
        total = padded.view(b, c, ph // t, t, pw // t, t).sum(4).sum(2)
        count = ones.view(1, 1, ph // t, t, pw // t, t).sum(4).sum(2)
        return total / count.clamp_min(1)

    def grid_features(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """The feature map of the centre window of ``x`` read on the grid of ``factor``: (B, C, h, w)."""
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
        return self.features((grid - 0.5) * 4)

    def read(self, feats: torch.Tensor) -> torch.Tensor:
        """Fold a feature map and correlate the readout with it at every cyclic shift: (B, n_bits, T, T)."""
        t = self.cfg.tile
        folded = self.fold(feats)
        # Only the pattern within a tile carries bits: drop the fold's mean (biases, image DC) and
        # normalise its energy, so the logit scale depends on neither contrast nor image size.
        folded = folded - folded.mean(dim=(2, 3), keepdim=True)
        folded = folded / folded.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
        spec = torch.fft.rfft2(folded)
        kernel = torch.fft.rfft2(self.readout)
        corr = torch.fft.irfft2(torch.einsum("bcuv,ncuv->bnuv", spec, kernel.conj()), s=(t, t))
        return corr * self.gain.exp() + self.bias.view(1, -1, 1, 1)

    def shifted_logits(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """Logits for every cyclic shift: (B, n_bits, T, T)."""
        return self.read(self.grid_features(x, factor))

    def forward(
        self,
        x: torch.Tensor,
        factors: tuple[float, ...] | None = None,
        aligned: bool = False,
        angles: tuple[float, ...] = (0.0,),
        stop_confidence: float | None = None,
        return_choice: bool = False,
        phases: bool = True,
        cache: dict | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[float, float]]]:
        """Logits at the most confident (scale, sub-cell phase, rotation, shift).

        ``factors`` default to ``(cfg.scale,)``. ``angles`` (degrees) un-rotate the *feature map*, not the
        image: the convolutions see a few cells each, and a few degrees barely change what they see, while
        over the whole window the same rotation moves the tile lattice by several cells and ruins the fold.
        So the costly part (the CNN) runs once per (scale, phase) and every angle costs one resampling of
        a small feature map. The choice is by confidence (mean |logit|), a function of the image alone,
        never of the key, so the keyed test downstream needs no correction for it. ``stop_confidence``
        ends the search after a (scale, phase) whose best angle is already that confident (again a choice
        made from the image alone): a marked image stops after its first, cheapest candidate.

        ``return_choice=True`` also returns the chosen ``(factor, angle)`` of each image (the content
        binding hashes the image turned back by that angle).

        ``phases=False`` reads each grid at sub-cell phase 0 only (the coarse pass of the pre-check).

        ``cache``: feature maps of this ``x`` by ``(factor, dy, dx)``, used where present and filled as
        computed, so that later readings of the same image (and the lattice sync) do not run the CNN again.

        ``aligned=True`` reads at shift 0 (the image's own top-left is the tile origin): training starts
        so, on uncropped images, because the shift search only finds the right shift once the readout
        has learned the carriers.
        """
        best_logits, best_conf, best_choice = None, None, None
        candidates = []
        for factor in factors or (self.cfg.scale,):
            # Sub-cell phase: a crop rarely starts on the grid; try offsets within a cell (key-independent).
            step = max(1, int(factor) // 2) if not aligned else int(max(factor, 1))
            offsets = range(0, max(1, int(factor)), step) if phases else range(1)
            candidates += [(factor, dy, dx) for dy in offsets for dx in offsets]
        for factor, dy, dx in candidates:
            feats = None if cache is None else cache.get((factor, dy, dx))
            if feats is None:
                feats = self.grid_features(x[:, :, dy:, dx:], factor)
                if cache is not None:
                    cache[(factor, dy, dx)] = feats
            if aligned:
                return self.read(feats).flatten(2)[:, :, 0]
            b = feats.shape[0]
            stack = [feats]
            turned = [a for a in angles if a]
            if turned:  # every angle in one resampling call; centred, the zero-padded corners are neutral
                centred = feats - feats.mean(dim=(2, 3), keepdim=True)
                stack.append(rotate_map(centred, turned))
            logits = self.read(torch.cat(stack))  # (B * (1 + angles), n, T, T), sample-major per block
            n, t = logits.shape[1], logits.shape[2]
            flat = logits.view(-1, b, n, t * t).permute(1, 2, 0, 3).reshape(b, n, -1)  # (B, n, hyps*T*T)
            conf = flat.abs().mean(dim=1)
            top_conf, idx = conf.max(dim=1)
            chosen = flat.gather(2, idx.view(b, 1, 1).expand(b, n, 1)).squeeze(2)
            all_angles = [0.0, *turned]
            choice = [(float(factor), float(all_angles[int(i) // (t * t)])) for i in idx]
            if best_logits is None:
                best_logits, best_conf, best_choice = chosen, top_conf, choice
            else:
                better = top_conf > best_conf
                best_logits = torch.where(better.unsqueeze(1), chosen, best_logits)
                best_conf = torch.maximum(top_conf, best_conf)
                best_choice = [
                    c if bool(u) else o for c, o, u in zip(choice, best_choice, better, strict=True)
                ]
            if stop_confidence is not None and bool((best_conf >= stop_confidence).all()):
                break
        return (best_logits, best_choice) if return_choice else best_logits


def rotate_map(feats: torch.Tensor, degrees: list[float]) -> torch.Tensor:
    """(B, C, h, w) -> (len(degrees) * B, C, h, w): the map rotated about its centre by each angle (angle-
    major; bilinear; outside reads as 0)."""
    b, c, h, w = feats.shape
    grid = _rotation_grid(h, w, tuple(degrees), feats.dtype)  # (A, h, w, 2)
    a = grid.shape[0]
    batch = feats.unsqueeze(0).expand(a, b, c, h, w).reshape(a * b, c, h, w)
    grid = grid.unsqueeze(1).expand(a, b, h, w, 2).reshape(a * b, h, w, 2)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@lru_cache(maxsize=16)
def _rotation_grid(h: int, w: int, degrees: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    mats = []
    for deg in degrees:
        cos, sin = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        # affine_grid works in normalised coordinates: rescale so that it is a true rotation in cells.
        mats.append([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]])
    return F.affine_grid(torch.tensor(mats, dtype=dtype), [len(degrees), 1, h, w], align_corners=False)


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

    @property
    def search_angles(self) -> tuple[float, ...]:
        """Rotations (degrees) the decoder undoes: 0 first, then +-1.5 .. +-6 (the decoder tolerates
        about +-0.75 degrees by itself, so a 1.5 degree step leaves no gap)."""
        return (0.0,) + tuple(s * a for a in (1.5, 3.0, 4.5, 6.0) for s in (-1.0, 1.0))

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
