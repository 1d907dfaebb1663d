"""Inversion speed: the single-step (LaRE-style) path vs N-step DDIM inversion and DIRE, same images,
one run, images/s side by side.

By default the denoiser is a small pixel-space UNet2DModel (32x32 pixels, channels 32/64/64, one
attention level), random weights (speed does not depend on the values); ``--model DIR`` times any
local diffusers folder instead (e.g. the benchmark zoo's DDPM). ``--latent`` adds a small latent model (AutoencoderKL + UNet2DConditionModel).

    python experiments/inversion_speed/bench.py --images 8 --steps 20 --threads 1 --latent --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from detector.features.inversion import DiffusionModel, InversionConfig, invert_images, load_diffusion_model


def pixel_model(size: int) -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return DiffusionModel(
        unet, dict(DDPMScheduler(num_train_timesteps=1000).config), name=f"pixel-unet-{size}"
    )


def latent_model(size: int) -> DiffusionModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        latent_channels=4,
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(
        sample_size=size // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return DiffusionModel(
        unet, dict(DDPMScheduler(num_train_timesteps=1000).config), vae=vae, name=f"latent-{size}"
    )


REPEATS = 3


def best_rate(run, count: int) -> float:
    """Images/s of the fastest of ``REPEATS`` runs (the least disturbed by other jobs on the machine)."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def rate(model: DiffusionModel, images: torch.Tensor, config: InversionConfig, batch: int) -> float:
    def run():
        for i in range(0, len(images), batch):
            invert_images(model, images[i : i + batch], config)

    return best_rate(run, len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--model", default=None, help="local diffusers folder (default: zoo-sized random UNet)"
    )
    parser.add_argument("--latent", action="store_true", help="also time a small latent model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the fastest counts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global REPEATS
    REPEATS = args.repeats
    models = [load_diffusion_model(args.model) if args.model else pixel_model(args.size)]
    if args.latent:
        models.append(latent_model(args.size * 2))
    print(
        f"{args.images} images, batch {args.batch_size}, {args.steps} DDIM steps, device {args.device}, "
        f"best of {args.repeats}, "
        f"{args.threads} torch threads"
    )
    print(
        "| model | single-step (LaRE) img/s | single-step without VAE residual img/s | N-step inversion img/s "
        "| DIRE (invert + sample) img/s | single-step / inversion | single-step / DIRE |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in models:
        model.to(args.device)
        size = model.image_size
        images = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
        invert_images(model, images[:2], InversionConfig(mode="lare"))  # warm-up
        single = rate(model, images, InversionConfig(mode="lare"), args.batch_size)
        lean = rate(model, images, InversionConfig(mode="lare", vae_residual=False), args.batch_size)
        inversion = rate_inversion(model, images, args.steps, args.batch_size)
        dire = rate(model, images, InversionConfig(mode="dire", num_steps=args.steps), args.batch_size)
        print(
            f"| {model.name} ({size}px) | {single:.1f} | {lean:.1f} | {inversion:.2f} | {dire:.2f} | "
            f"{single / inversion:.1f}x | {single / dire:.1f}x |"
        )


def rate_inversion(model: DiffusionModel, images: torch.Tensor, steps: int, batch: int) -> float:
    """Inversion alone (encode + N steps to z_T), no reconstruction."""
    from detector.features.inversion import ddim_invert

    @torch.no_grad()
    def run():
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            ddim_invert(model, model.encode(chunk), steps, model.encoder_states(len(chunk)))

    return best_rate(run, len(images))


if __name__ == "__main__":
    main()
