"""Family ``gan``: fully convolutional GANs that map a noise map to an image (spatial-GAN style).

Trained adversarially on 32 px native-resolution patches (a 4 x 4 noise map), then sampled at full
size from a larger noise map, so they produce images at the corpus resolution with their own
upsampling trace: ``gan-tconv`` upsamples with transposed convolutions (the checkerboard fingerprint),
``gan-upconv`` with nearest-neighbour upsampling followed by a 3x3 convolution.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from detector.corpus.zoo.base import (
    GeneratorSpec,
    ModelSpec,
    load_module,
    optimizer_step,
    random_patches,
    save_module,
    torch_generator,
    train_loop,
    upsample2x,
)

FAMILY = "gan"
PATCH = 32
NOISE_CHANNELS = 16
DOWNSCALE = 8  # three 2x upsampling stages

MODELS = [
    ModelSpec("gan-tconv", FAMILY, {"up": "tconv", "width": 48}, steps=200, batch=32, lr=2e-3),
    ModelSpec("gan-upconv", FAMILY, {"up": "nearest", "width": 48}, steps=200, batch=32, lr=2e-3),
]
GENERATORS = [
    GeneratorSpec(
        "gan-tconv", FAMILY, "gan-tconv", conditional=False, description="transposed-conv upsampling"
    ),
    GeneratorSpec(
        "gan-upconv", FAMILY, "gan-upconv", conditional=False, description="nearest upsample + conv"
    ),
]


class Generator(nn.Module):
    def __init__(self, up: str = "tconv", width: int = 48):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(NOISE_CHANNELS, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            upsample2x(w, w, up),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            upsample2x(w, w // 2, up),
            nn.BatchNorm2d(w // 2),
            nn.ReLU(),
            upsample2x(w // 2, w // 4, up),
            nn.BatchNorm2d(w // 4),
            nn.ReLU(),
            nn.Conv2d(w // 4, 3, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """A patch discriminator: one logit per receptive field."""

    def __init__(self, width: int = 48):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w // 2, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w // 2, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(spec: ModelSpec) -> Generator:
    return Generator(spec.config["up"], spec.config["width"])


def train(spec: ModelSpec, pool: torch.Tensor, seed: int, steps: int, folder: Path, progress=None) -> None:
    """Non-saturating GAN loss, Adam(0.5, 0.999); only the generator is saved."""
    torch.manual_seed(seed)
    g, d = build(spec).train(), Discriminator(spec.config["width"]).train()
    gen = torch_generator(seed, spec.name, "data")
    opt_g = torch.optim.Adam(g.parameters(), lr=spec.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=spec.lr, betas=(0.5, 0.999))
    side = PATCH // DOWNSCALE

    def step(i: int) -> float:
        real = random_patches(pool, spec.batch, PATCH, gen)
        z = torch.randn((spec.batch, NOISE_CHANNELS, side, side), generator=gen)
        fake = g(z)
        optimizer_step(opt_d, F.softplus(-d(real)).mean() + F.softplus(d(fake.detach())).mean())
        return optimizer_step(opt_g, F.softplus(-d(fake)).mean())

    losses = train_loop(step, steps, progress)
    save_module(g, folder, spec.config, losses)


def load(spec: ModelSpec, folder: Path) -> Generator:
    return load_module(build(spec), folder)


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources, seed_parts: tuple, size: int) -> torch.Tensor:
    gen = torch_generator(*seed_parts)
    side = -(-size // DOWNSCALE)
    z = torch.randn((n, NOISE_CHANNELS, side, side), generator=gen)
    return model(z)[..., :size, :size]
