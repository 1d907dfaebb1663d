"""Family ``sdedit``: SDEdit-style img2img with the zoo's DDPM (content real, texture synthetic).

A real crop is downscaled to the DDPM's 32 px working resolution, noised to step ``t`` and denoised
with DDIM. As in latent-space img2img (whose decoder restores fine detail), the detail band above the
working resolution is the source crop's own: output = upsample(denoised) + (crop - upsample(downsample
(crop))). So what is synthetic is the coarse structure and colour the DDPM redrew, not a missing high
band that a spectrum would give away. Two strengths: ``sdedit-t300`` and ``sdedit-t600``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from detector.corpus.manifest import CorpusError
from detector.corpus.zoo import ddpm
from detector.corpus.zoo.base import GeneratorSpec, ModelSpec, resize, torch_generator

FAMILY = "sdedit"
MODELS: list[ModelSpec] = []  # uses the ddpm family's model
GENERATORS = [
    GeneratorSpec(
        f"sdedit-t{t}",
        FAMILY,
        ddpm.DDPM_MODEL,
        conditional=True,
        params={"t": t, "steps": steps},
        description=f"noise to t={t}/1000 at 32 px, {steps} DDIM steps back, source detail band kept",
    )
    for t, steps in ((300, 3), (600, 5))
]


def train(spec: ModelSpec, pool, seed, steps, folder: Path, progress=None) -> None:  # pragma: no cover
    raise CorpusError("sdedit has no model of its own; it uses the ddpm family's model")


load = ddpm.load


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources: torch.Tensor, seed_parts: tuple, size: int):
    unet, scheduler = model
    gen = torch_generator(*seed_parts)
    source = resize(sources, size, "bicubic")
    low = resize(source, ddpm.WORK_SIZE, "bicubic").clamp(-1, 1)
    detail = source - resize(low, size, "bicubic")
    t = gen_spec.params["t"]
    noise = torch.randn(low.shape, generator=gen)
    x = scheduler.add_noise(low, noise, torch.full((low.shape[0],), t, dtype=torch.long))
    x = ddpm.ddim_sample(
        unet, scheduler.alphas_cumprod, x, ddpm.spaced_timesteps(t, gen_spec.params["steps"]), 0.0, gen
    )
    return (resize(x, size, "bicubic") + detail).clamp(-1, 1)
