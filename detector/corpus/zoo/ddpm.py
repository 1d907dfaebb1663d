"""Family ``ddpm``: unconditional samples from a small diffusers ``UNet2DModel`` trained on the pool.

The UNet works at 32 px on whole crops downscaled (so it learns global layout, not just texture), has
no attention blocks (cheap on CPU) and is saved as a diffusers folder (``unet/`` + ``scheduler/``,
safetensors), so other modules can use it as the project's own offline diffusion model:
:func:`load_zoo_ddpm`. The two generators share the model and differ in sampler and upsampler:
``ddpm-ddim`` (deterministic DDIM, bicubic upsampling) and ``ddpm-ancestral`` (stochastic DDIM with
eta = 1, i.e. DDPM-like ancestral steps, bilinear upsampling).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from detector.corpus.zoo.base import (
    GeneratorSpec,
    ModelSpec,
    folder_steps,
    is_done,
    random_patches,
    resize,
    torch_generator,
    train_loop,
    training_key,
)

FAMILY = "ddpm"
DDPM_MODEL = "ddpm-unet32"
WORK_SIZE = 32

UNET_CONFIG = {
    "sample_size": WORK_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True}

MODELS = [
    ModelSpec(
        DDPM_MODEL, FAMILY, {"unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG}, steps=150, batch=24, lr=2e-3
    )
]
GENERATORS = [
    GeneratorSpec(
        "ddpm-ddim",
        FAMILY,
        DDPM_MODEL,
        conditional=False,
        params={"steps": 8, "eta": 0.0, "upsample": "bicubic"},
        description="32 px UNet, 8 deterministic DDIM steps, bicubic x4 upsampling",
    ),
    GeneratorSpec(
        "ddpm-ancestral",
        FAMILY,
        DDPM_MODEL,
        conditional=False,
        params={"steps": 8, "eta": 1.0, "upsample": "bilinear"},
        description="32 px UNet, 8 ancestral (eta=1) steps, bilinear x4 upsampling",
    ),
]


def build_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def train(spec: ModelSpec, pool: torch.Tensor, seed: int, steps: int, folder: Path, progress=None) -> None:
    """Epsilon-prediction DDPM training on the pool downscaled to 32 px; writes a diffusers folder."""
    torch.manual_seed(seed)
    unet = build_unet().train()
    scheduler = build_scheduler()
    data = resize(pool, WORK_SIZE, "bicubic").clamp(-1, 1)
    gen = torch_generator(seed, spec.name, "data")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=spec.lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def step(i: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * min(1.0, (i + 1) / warmup)
        x0 = random_patches(data, spec.batch, WORK_SIZE, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(xt, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = train_loop(step, steps, progress)
    unet.eval()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "card.json").write_text(
        json.dumps({"config": spec.config, "losses": [round(x, 5) for x in losses]}, indent=1) + "\n"
    )


def load(spec: ModelSpec, folder: Path):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return unet, scheduler


def load_zoo_ddpm(cache_dir: str | Path, variant: str = DDPM_MODEL, seed: int = 0):
    """The benchmark zoo's trained DDPM as ``(UNet2DModel, DDPMScheduler)``, loaded from the zoo cache.

    ``cache_dir`` is the build's ``--cache`` folder (default ``data/zoo-cache/full`` for the full build,
    ``.../small`` for ``--small``). The UNet takes 32 x 32 images in [-1, 1] and predicts the noise
    (epsilon).
    """
    spec = next(m for m in MODELS if m.name == variant)
    return load(spec, zoo_ddpm_folder(cache_dir, variant, seed))


def zoo_ddpm_folder(cache_dir: str | Path, variant: str = DDPM_MODEL, seed: int = 0) -> Path:
    """The folder trained with today's training config (see :func:`~detector.corpus.zoo.base.model_dir`) with
    the most training steps (``unet/`` + ``scheduler/``, a layout
    :func:`detector.features.inversion.load_diffusion_model` reads)."""
    cache_dir = Path(cache_dir)
    spec = next(m for m in MODELS if m.name == variant)
    candidates = sorted(
        (p for p in cache_dir.glob(f"{variant}-s{seed}-n*-{training_key(spec)}") if is_done(p)),
        key=folder_steps,
    )
    if not candidates:
        raise FileNotFoundError(
            f"no trained {variant!r} (seed {seed}) in {cache_dir}: run `detector corpus build` first "
            f"(it caches zoo models there)"
        )
    return candidates[-1]


def ddim_sample(
    unet,
    alphas_cumprod: torch.Tensor,
    x: torch.Tensor,
    timesteps: Sequence[int],
    eta: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Run DDIM from ``x`` at ``timesteps[0]`` down to a clean image (``timesteps`` descending).
    ``eta`` = 0 is deterministic DDIM; ``eta`` = 1 adds DDPM-like ancestral noise at each step."""
    timesteps = list(timesteps)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        eps = unet(x, torch.full((x.shape[0],), t, dtype=torch.long)).sample
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        x = a_prev.sqrt() * x0 + direction
        if eta > 0 and t_prev >= 0:
            x = x + sigma * torch.randn(x.shape, generator=gen)
    return x


def spaced_timesteps(start: int, steps: int) -> list[int]:
    """``steps`` descending timesteps evenly spaced from ``start`` down to near 0."""
    stride = (start + 1) / steps
    return sorted({int(round(start - i * stride)) for i in range(steps)}, reverse=True)


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources, seed_parts: tuple, size: int) -> torch.Tensor:
    unet, scheduler = model
    gen = torch_generator(*seed_parts)
    x = torch.randn((n, 3, WORK_SIZE, WORK_SIZE), generator=gen)
    start = scheduler.config.num_train_timesteps - 1
    x = ddim_sample(
        unet,
        scheduler.alphas_cumprod,
        x,
        spaced_timesteps(start, gen_spec.params["steps"]),
        gen_spec.params["eta"],
        gen,
    )
    return resize(x, size, gen_spec.params["upsample"]).clamp(-1, 1)
