"""The distortion layer: the attacks a watermark must survive, as modules on batches of [0,1] images.

Used twice: in training (random strength, differentiable or straight-through) and in evaluation
(fixed strength, the robustness grid). Every module takes ``(B, 3, H, W)`` and may return another size
(crop, resize). JPEG is not differentiable, so training passes gradients straight through it:
forward = real JPEG (PIL), backward = identity.
"""

from __future__ import annotations

import abc
import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low if low == high else rng.uniform(low, high)


def jpeg_numpy(image: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG round trip of an HxWx3 uint8 array (4:2:0, like most encoders in the wild)."""
    return _codec_numpy(image, "JPEG", quality)


def webp_numpy(image: np.ndarray, quality: int) -> np.ndarray:
    """Real (lossy) WebP round trip of an HxWx3 uint8 array (libwebp through PIL)."""
    return _codec_numpy(image, "WEBP", quality)


def _codec_numpy(image: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def nlm_numpy(image: np.ndarray, strength: float) -> np.ndarray:
    """Non-local-means denoising (OpenCV, colour; ``strength`` is its h, luma and colour alike)."""
    import cv2

    h = float(strength)
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image), None, h, h, 7, 21)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0,1] -> HxWx3 uint8 (rounded, as saving a file would)."""
    return (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def from_uint8(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0


class Distortion(nn.Module, abc.ABC):
    """Base: ``forward(x, rng)``; ``rng`` (random.Random) draws the strength within the module's range."""

    name = "distortion"

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        """Apply the distortion to a batch ``x`` (B, 3, H, W) in [0, 1]."""

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training"
        )


class Identity(Distortion):
    name = "none"

    def forward(self, x, rng=None):
        return x


class Quantize(Distortion):
    """Rounding to 8 bits (saving any lossless file), straight-through."""

    name = "quantize"

    def forward(self, x, rng=None):
        return x + ((x * 255).round() / 255 - x).detach()


class _ImageFilter(Distortion):
    """A non-differentiable per-image operation on 8-bit pixels (a codec, a denoiser): forward = the real
    thing, backward = identity (straight-through). ``_apply(uint8 image, rng)`` is the operation."""

    @abc.abstractmethod
    def _apply(self, image: np.ndarray, rng: random.Random) -> np.ndarray:
        """The operation on one HxWx3 uint8 image."""

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        out = [from_uint8(self._apply(to_uint8(image), rng)).to(x.device) for image in x]
        return x + (torch.stack(out).to(x.dtype) - x).detach()


class _Codec(_ImageFilter):
    """A real lossy codec round trip at a quality drawn from ``quality``."""

    format = ""

    def __init__(self, quality: tuple[int, int] = (50, 50)):
        super().__init__()
        self.quality = quality

    def _apply(self, image, rng):
        return _codec_numpy(image, self.format, int(round(_uniform(rng, *self.quality))))


class JPEG(_Codec):
    name, format = "jpeg", "JPEG"


class WebP(_Codec):
    name, format = "webp", "WEBP"


class Denoise(_ImageFilter):
    """Non-local-means denoising at a strength (OpenCV's h) drawn from ``strength``."""

    name = "nlm"

    def __init__(self, strength: tuple[float, float] = (5.0, 5.0)):
        super().__init__()
        self.strength = strength

    def _apply(self, image, rng):
        return nlm_numpy(image, _uniform(rng, *self.strength))


class Crop(Distortion):
    """Keep a random window with ``area`` of the image (aspect kept), no resizing: pixel scale unchanged."""

    name = "crop"

    def __init__(self, area: tuple[float, float] = (0.25, 0.25), center: bool = False):
        super().__init__()
        self.area = area
        self.center = center

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        _, _, h, w = x.shape
        side = math.sqrt(_uniform(rng, *self.area))
        ch, cw = max(8, round(h * side)), max(8, round(w * side))
        ch, cw = min(ch, h), min(cw, w)
        if self.center:
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[:, :, top : top + ch, left : left + cw]
        out = []
        for image in x:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            out.append(image[:, top : top + ch, left : left + cw])
        return torch.stack(out)


class Resize(Distortion):
    """Rescale by a factor (antialiased): the pattern's pixel scale changes."""

    name = "resize"

    def __init__(self, factor: tuple[float, float] = (0.5, 0.5)):
        super().__init__()
        self.factor = factor

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        f = _uniform(rng, *self.factor)
        _, _, h, w = x.shape
        size = (max(8, round(h * f)), max(8, round(w * f)))
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class Resample(Distortion):
    """What the lattice sync leaves of a resized image: scaled by a factor (bicubic), then mapped back
    to about the original size (+-``error``) by plain bilinear sampling, without antialiasing, as
    :func:`detector.watermark.sync.view_of` does."""

    name = "resample"

    def __init__(self, factor: tuple[float, float] = (1.2, 1.6), error: float = 0.015):
        super().__init__()
        self.factor = factor
        self.error = error

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        f = _uniform(rng, *self.factor)
        _, _, h, w = x.shape
        up = F.interpolate(x, size=(max(8, round(h * f)), max(8, round(w * f))), mode="bicubic")
        e = 1 + _uniform(rng, -self.error, self.error)
        back = (max(8, round(h * e)), max(8, round(w * e)))
        return F.interpolate(up.clamp(0, 1), size=back, mode="bilinear", align_corners=False)


class RoundTrip(Distortion):
    """What a platform does and the sync then undoes: rescale by a factor (antialiased), pass through
    ``codec`` (e.g. JPEG), and map back to the original size (bilinear), so the decoder reads the
    compressed mark at its own scale. Differentiable except the codec (straight-through)."""

    name = "roundtrip"

    def __init__(self, codec: Distortion, factor: tuple[float, float] = (0.5, 1.5)):
        super().__init__()
        self.codec = codec
        self.factor = factor

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        _, _, h, w = x.shape
        f = _uniform(rng, *self.factor)
        small = Resize((f, f))(x, rng)
        coded = self.codec(small.clamp(0, 1), rng)
        return F.interpolate(coded, size=(h, w), mode="bilinear", align_corners=False)


class Blur(Distortion):
    name = "blur"

    def __init__(self, sigma: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.sigma = sigma

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        sigma = _uniform(rng, *self.sigma)
        radius = max(1, int(math.ceil(2.5 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-(t**2) / (2 * sigma * sigma))
        kernel = kernel / kernel.sum()
        c = x.shape[1]
        padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class Noise(Distortion):
    name = "noise"

    def __init__(self, std: tuple[float, float] = (0.02, 0.02), seed: int | None = None):
        super().__init__()
        self.std = std
        self.seed = seed

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        std = _uniform(rng, *self.std)
        gen = torch.Generator(device="cpu").manual_seed(
            self.seed if self.seed is not None else rng.randrange(2**31)
        )
        return (x + std * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)).clamp(0, 1)


class Brightness(Distortion):
    name = "brightness"

    def __init__(self, factor: tuple[float, float] = (0.7, 1.3)):
        super().__init__()
        self.factor = factor

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        return (x * _uniform(rng, *self.factor)).clamp(0, 1)


class Contrast(Distortion):
    name = "contrast"

    def __init__(self, factor: tuple[float, float] = (0.7, 1.3)):
        super().__init__()
        self.factor = factor

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * _uniform(rng, *self.factor) + mean).clamp(0, 1)


class Rotate(Distortion):
    """Rotate about the centre by up to ``degrees`` (either sign); corners outside are filled black."""

    name = "rotate"

    def __init__(self, degrees: tuple[float, float] = (5.0, 5.0), random_sign: bool = True):
        super().__init__()
        self.degrees = degrees
        self.random_sign = random_sign

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        angle = math.radians(_uniform(rng, *self.degrees)) * (rng.choice((-1, 1)) if self.random_sign else 1)
        b, _, h, w = x.shape
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor(
            [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device
        )
        grid = F.affine_grid(theta.expand(b, 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class HFlip(Distortion):
    name = "hflip"

    def forward(self, x, rng=None):
        return x.flip(-1)


class Chain(Distortion):
    """Apply several distortions in order (e.g. JPEG + crop + brightness)."""

    name = "chain"

    def __init__(self, *steps: Distortion):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x, rng=None):
        for step in self.steps:
            x = step(x, rng)
        return x


class RandomDistortion(Distortion):
    """Pick one of several distortions per batch with given weights (the training distortion layer)."""

    name = "random"

    def __init__(self, choices: list[tuple[Distortion, float]]):
        super().__init__()
        self.choices = nn.ModuleList([c for c, _ in choices])
        self.weights = [w for _, w in choices]

    def forward(self, x, rng=None):
        rng = rng or random.Random()
        chosen = rng.choices(range(len(self.choices)), weights=self.weights, k=1)[0]
        return self.choices[chosen](x, rng)


def training_layer(progress: float) -> RandomDistortion:
    """The curriculum: mild attacks first, the full range once the bits are learned (``progress`` 0..1)."""
    p = min(1.0, max(0.0, progress))
    q_low = int(round(90 - 50 * p))  # JPEG quality floor 90 -> 40
    area_low = 0.9 - 0.7 * p  # crop area floor 0.9 -> 0.2
    deg = 1 + 4 * p  # rotation up to 5 degrees
    sigma = 0.3 + 1.2 * p
    jpeg = JPEG((q_low, 95))
    crop = Crop((area_low, 1.0))
    bright = Brightness((1 - 0.4 * p, 1 + 0.4 * p))
    choices: list[tuple[Distortion, float]] = [
        (Quantize(), 1.0),
        (jpeg, 3.0),
        (crop, 2.0),
        (Resize((0.9, 1.1)), 0.75),
        (Blur((0.3, sigma)), 1.0),
        (Noise((0.0, 0.005 + 0.025 * p)), 1.0),
        (Chain(bright, Contrast((1 - 0.4 * p, 1 + 0.4 * p)), Quantize()), 1.0),
        (Rotate((0.0, deg)), 1.0),
        (HFlip(), 0.3),
        (Chain(JPEG((q_low, 95)), Crop((area_low, 1.0)), Brightness((1 - 0.3 * p, 1 + 0.3 * p))), 2.0),
    ]
    return RandomDistortion(choices)


def codec_layer(resample: float = 0.0, progress: float = 1.0, roundtrip: float = 0.0) -> RandomDistortion:
    """The training layer plus the real codecs and denoiser that ``experiments/watermark_attacks`` found
    weakest (JPEG and WebP, non-local means), alone and after a resize, so the compression rows gain
    without the geometric ones losing their share. ``progress`` (0..1) ramps their strength as
    :func:`training_layer` does (1: full strength, JPEG/WebP 30-90, what decoder fine-tuning uses).
    ``resample`` > 0 adds (with that weight) the sync's resampling of resized images, 0.3-2x;
    ``roundtrip`` > 0 adds resize 0.5-1.5x, JPEG or WebP 40-90, and the mapping back (:class:`RoundTrip`)."""
    p = min(1.0, max(0.0, progress))
    low = int(round(90 - 60 * p))  # codec quality floor 90 -> 30
    extra = [(Resample((0.3, 2.0)), resample)] if resample else []
    if roundtrip:
        floor = int(round(90 - 50 * p))
        extra += [
            (RoundTrip(JPEG((floor, 90))), roundtrip / 2),
            (RoundTrip(WebP((floor, 90))), roundtrip / 2),
        ]
    return RandomDistortion(
        [
            *extra,
            (training_layer(p), 6.0),
            (JPEG((low, 90)), 2.0),
            (WebP((low, 90)), 2.0),
            (Denoise((3.0, 3.0 + 4.0 * p)), 1.5),
            (Chain(Resize((0.6, 1.4)), JPEG((max(40, low), 90))), 1.0),
            (Chain(Crop((0.3, 1.0)), WebP((max(40, low), 90))), 1.0),
        ]
    )


def evaluation_grid() -> dict[str, Distortion]:
    """The fixed robustness grid of the issue (deterministic: centre crops, fixed strengths)."""
    return {
        "none": Quantize(),
        "jpeg90": JPEG((90, 90)),
        "jpeg75": JPEG((75, 75)),
        "jpeg50": JPEG((50, 50)),
        "resize0.5": Resize((0.5, 0.5)),
        "crop0.5": Crop((0.5, 0.5), center=True),
        "crop0.25": Crop((0.25, 0.25), center=True),
        "blur1": Blur((1.0, 1.0)),
        "noise0.02": Noise((0.02, 0.02), seed=0),
        "bright0.7": Chain(Brightness((0.7, 0.7)), Quantize()),
        "bright1.3": Chain(Brightness((1.3, 1.3)), Quantize()),
        "rotate5": Chain(Rotate((5.0, 5.0), random_sign=False), Quantize()),
        "jpeg50+crop0.5+bright1.3": Chain(
            JPEG((50, 50)), Crop((0.5, 0.5), center=True), Brightness((1.3, 1.3)), Quantize()
        ),
    }
