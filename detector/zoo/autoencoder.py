"""Family ``autoencoder``: laundering by autoencoder round-trip (real crop in, reconstruction out).

Two diffusers autoencoders trained on 32 px native-resolution patches of the pool and applied fully
convolutionally at full size: ``ae-kl`` (``AutoencoderKL``, 2x downsampling, 4 latent channels, no
attention, decoded from the posterior mode) and ``ae-tiny`` (``AutoencoderTiny``, the TAESD design, with
its 8-bit latent quantisation on the way through).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from detector.zoo.base import (
    GeneratorSpec,
    ModelSpec,
    load_module,
    random_patches,
    save_module,
    torch_generator,
    train_loop,
)

FAMILY = "autoencoder"
PATCH = 32
KL_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
TINY_CONFIG = {
    "encoder_block_out_channels": [24, 24],
    "decoder_block_out_channels": [24, 24],
    "num_encoder_blocks": [1, 1],
    "num_decoder_blocks": [1, 1],
    "latent_channels": 4,
}
MODELS = [
    ModelSpec("ae-kl", FAMILY, {"kind": "kl", **KL_CONFIG}, steps=160, batch=16, lr=2e-3),
    ModelSpec("ae-tiny", FAMILY, {"kind": "tiny", **TINY_CONFIG}, steps=160, batch=16, lr=2e-3),
]
GENERATORS = [
    GeneratorSpec("ae-kl", FAMILY, "ae-kl", conditional=True, description="AutoencoderKL round-trip"),
    GeneratorSpec("ae-tiny", FAMILY, "ae-tiny", conditional=True, description="AutoencoderTiny round-trip"),
]


def build(spec: ModelSpec):
    from diffusers import AutoencoderKL, AutoencoderTiny

    config = {k: v for k, v in spec.config.items() if k != "kind"}
    return AutoencoderKL(**config) if spec.config["kind"] == "kl" else AutoencoderTiny(**config)


def _roundtrip(model, x: torch.Tensor, train: bool, gen: torch.Generator | None = None):
    if hasattr(model, "quant_conv"):  # AutoencoderKL
        dist = model.encode(x).latent_dist
        if train:
            z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
            return model.decode(z).sample, dist.kl().mean()
        return model.decode(dist.mode()).sample, None
    latents = model.encode(x).latents
    if not train:  # TAESD stores latents as bytes; keep that quantisation trace at inference
        latents = model.unscale_latents(model.scale_latents(latents).mul(255).round().div(255))
    return model.decode(latents).sample, None


def train(spec: ModelSpec, pool: torch.Tensor, seed: int, steps: int, folder: Path, progress=None) -> None:
    torch.manual_seed(seed)
    model = build(spec).train()
    gen = torch_generator(seed, spec.name, "data")
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)

    def step(i: int) -> float:
        x = random_patches(pool, spec.batch, PATCH, gen)
        out, kl = _roundtrip(model, x, True, gen)
        loss = F.l1_loss(out, x) + (1e-6 * kl if kl is not None else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = train_loop(step, steps, progress)
    save_module(model, folder, spec.config, losses)


def load(spec: ModelSpec, folder: Path):
    return load_module(build(spec), folder)


@torch.no_grad()
def generate(model, gen_spec: GeneratorSpec, n: int, sources: torch.Tensor, seed_parts: tuple, size: int):
    out, _ = _roundtrip(model, sources, False)
    return out.clamp(-1, 1)
