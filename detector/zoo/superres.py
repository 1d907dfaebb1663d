"""Family ``sr``: learned 2x super-resolution of downscaled real crops (content real, detail learned).

A real crop is downscaled 2x (antialiased) and a small CNN brings it back: it predicts a residual on
top of bicubic upsampling through one of two heads, ``sr-shuffle`` (sub-pixel convolution, ESPCN's
pixel shuffle) or ``sr-tconv`` (a transposed convolution). Trained with L1 on 64 px native patches.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from detector.zoo.base import (
    GeneratorSpec,
    ModelSpec,
    load_module,
    random_patches,
    resize,
    save_module,
    torch_generator,
    train_loop,
)

FAMILY = "sr"
PATCH = 64
MODELS = [
    ModelSpec("sr-shuffle", FAMILY, {"head": "shuffle", "width": 32}, steps=200, batch=16, lr=2e-3),
    ModelSpec("sr-tconv", FAMILY, {"head": "tconv", "width": 32}, steps=200, batch=16, lr=2e-3),
]
GENERATORS = [
    GeneratorSpec(
        "sr-shuffle", FAMILY, "sr-shuffle", conditional=True, description="2x SR, pixel-shuffle head"
    ),
    GeneratorSpec(
        "sr-tconv", FAMILY, "sr-tconv", conditional=True, description="2x SR, transposed-conv head"
    ),
]


class SuperResolver(nn.Module):
    def __init__(self, head: str = "shuffle", width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        if head == "shuffle":
            self.head = nn.Sequential(nn.Conv2d(width, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.head = nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)
        return base + self.head(self.body(low))


def build(spec: ModelSpec) -> SuperResolver:
    return SuperResolver(spec.config["head"], spec.config["width"])


def train(spec: ModelSpec, pool: torch.Tensor, seed: int, steps: int, folder: Path, progress=None) -> None:
    torch.manual_seed(seed)
    model = build(spec).train()
    gen = torch_generator(seed, spec.name, "data")
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)

    def step(i: int) -> float:
        high = random_patches(pool, spec.batch, PATCH, gen)
        loss = F.l1_loss(model(resize(high, PATCH // 2, "bicubic")), high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = train_loop(step, steps, progress)
    save_module(model, folder, spec.config, losses)


def load(spec: ModelSpec, folder: Path) -> SuperResolver:
    return load_module(build(spec), folder)


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources: torch.Tensor, seed_parts: tuple, size: int):
    return model(resize(sources, size // 2, "bicubic")).clamp(-1, 1)
