"""What every generator family shares: specs, the training pool, seeding, tensor conversions, caching.

A *model* is something trained once on the real pool and cached (safetensors); a *generator* is a
labelled way of using a model (a sampler, a strength, an upsampler). Several generators may share one
model, so a family gets two variants without paying twice for training on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

DONE = ".done"


@dataclass(frozen=True)
class ModelSpec:
    """A trainable zoo model. ``steps`` and ``batch`` are the full-build training budget."""

    name: str
    family: str
    config: dict = field(default_factory=dict)
    steps: int = 200
    batch: int = 16
    lr: float = 1e-3


@dataclass(frozen=True)
class GeneratorSpec:
    """A labelled generator of the corpus. ``conditional`` generators turn a real crop into a fake
    (its group is the source photo); unconditional ones sample from noise."""

    name: str
    family: str
    model: str
    conditional: bool
    params: dict = field(default_factory=dict)
    description: str = ""


def stable_seed(*parts) -> int:
    """A 32-bit seed from any mix of ints and strings, stable across runs and Python versions."""
    return zlib.crc32("|".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def torch_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3 (rounded, clipped)."""
    array = images.detach().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return array.permute(0, 2, 3, 1).contiguous().numpy()


def resize(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize a batch; downscaling is antialiased (no aliasing trace of our own making)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    down = size < images.shape[-1]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    if down and mode in ("bilinear", "bicubic"):
        kwargs["antialias"] = True
    return F.interpolate(images, size=(size, size), mode=mode, **kwargs)


def random_patches(pool: torch.Tensor, batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random ``size`` x ``size`` patches (random horizontal flips) of a N x 3 x H x W pool."""
    n, _, h, w = pool.shape
    index = torch.randint(0, n, (batch,), generator=gen)
    ys = torch.randint(0, h - size + 1, (batch,), generator=gen)
    xs = torch.randint(0, w - size + 1, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    out = torch.stack([pool[i, :, y : y + size, x : x + size] for i, y, x in zip(index, ys, xs, strict=True)])
    out[flips] = out[flips].flip(-1)
    return out


def train_loop(
    step_fn: Callable[[int], float], steps: int, progress: Callable[[int], None] | None = None
) -> list[float]:
    """Run ``step_fn(step) -> loss`` ``steps`` times; returns the losses (kept in the model card)."""
    losses = []
    for step in range(steps):
        losses.append(float(step_fn(step)))
        if progress:
            progress(1)
    return losses


def save_module(
    module: torch.nn.Module, folder: Path, config: dict, losses: list[float] | None = None
) -> None:
    """Weights as safetensors plus a JSON card (config and the training loss curve)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    card = {"config": config, "losses": [round(x, 5) for x in (losses or [])]}
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def load_module(module: torch.nn.Module, folder: Path) -> torch.nn.Module:
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module.eval()


def read_card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def model_dir(cache: Path, name: str, seed: int, steps: int) -> Path:
    """Where a trained model lives: one folder per (model, seed, training steps)."""
    return Path(cache) / f"{name}-s{seed}-n{steps}"


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def publish_dir(tmp: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name in one rename, then mark it done."""
    (tmp / DONE).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def temp_dir_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
