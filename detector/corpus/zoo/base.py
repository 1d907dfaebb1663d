"""What every generator family shares: specs, the training pool, seeding, tensor conversions, caching.

A *model* is something trained once on the real pool and cached (safetensors); a *generator* is a
labelled way of using a model (a sampler, a strength, an upsampler). Several generators may share one
model, so a family gets two variants without paying twice for training on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
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
from torch import nn

from detector.corpus.manifest import CorpusError

DONE = ".done"


@dataclass(frozen=True)
class ModelSpec:
    """A trainable zoo model. ``config`` builds the architecture; ``steps``, ``batch``, ``lr`` and
    ``recipe`` (loss weights and other training choices) say how it is trained."""

    name: str
    family: str
    config: dict = field(default_factory=dict)
    steps: int = 200
    batch: int = 16
    lr: float = 1e-3
    recipe: dict = field(default_factory=dict)


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


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on ``loss``; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_paired(
    spec: ModelSpec,
    model: torch.nn.Module,
    seed: int,
    steps: int,
    folder: Path,
    batch_loss: Callable[[torch.nn.Module, torch.Generator], torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> None:
    """The training of the families that learn a mapping (autoencoder, sr): Adam at ``spec.lr`` on
    ``batch_loss(model, data_generator)`` for ``steps`` steps, then weights and card into ``folder``.
    With ``spec.recipe["cosine"]`` the rate decays to a tenth along a half cosine (a short schedule
    ends far better annealed). ``model`` must be freshly built after ``torch.manual_seed(seed)``."""
    model.train()
    gen = torch_generator(seed, spec.name, "data")
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)

    def step(i: int) -> float:
        if spec.recipe.get("cosine"):
            for group in optimizer.param_groups:
                group["lr"] = spec.lr * (0.55 + 0.45 * math.cos(math.pi * i / max(1, steps)))
        return optimizer_step(optimizer, batch_loss(model, gen))

    losses = train_loop(step, steps, progress)
    save_module(model, folder, {**spec.config, "recipe": spec.recipe}, losses)


def upsample2x(cin: int, cout: int, kind: str) -> torch.nn.Module:
    """A learned 2x upsampler, the layer whose trace the gan and sr variants differ by:
    ``tconv`` (transposed convolution, the checkerboard maker), ``nearest`` (nearest-neighbour
    upsampling then a 3x3 convolution) or ``shuffle`` (a 3x3 convolution then pixel shuffle, ESPCN)."""
    if kind == "tconv":
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if kind == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "shuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise CorpusError(f"unknown upsampler {kind!r}; known: tconv, nearest, shuffle")


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


#: Bump when training code changes in a way a ModelSpec does not show (a new loss term, a schedule):
#: every cached model then gets a new folder and is retrained instead of silently reused.
TRAINING_VERSION = 2


def training_key(spec: ModelSpec) -> str:
    """8 hex digits naming how ``spec`` is trained: its architecture config, batch, learning rate,
    recipe and :data:`TRAINING_VERSION` (the steps and seed are in the folder name already)."""
    blob = json.dumps(
        {
            "v": TRAINING_VERSION,
            "config": spec.config,
            "batch": spec.batch,
            "lr": spec.lr,
            "recipe": spec.recipe,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def model_dir(cache: Path, spec: ModelSpec, seed: int, steps: int) -> Path:
    """Where a trained model lives: ``<name>-s<seed>-n<steps>-<training key>``, so a change of the
    training config or code never reuses weights trained the old way."""
    return Path(cache) / f"{spec.name}-s{seed}-n{steps}-{training_key(spec)}"


def folder_steps(folder: Path) -> int:
    """The training steps in a :func:`model_dir` folder name."""
    return int(folder.name.rsplit("-n", 1)[1].split("-", 1)[0])


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
