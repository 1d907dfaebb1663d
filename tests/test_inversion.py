"""Diffusion inversion: exactness against closed-form math, pixel and latent models, model loading."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from detector.features.inversion import (
    DiffusionModel,
    InversionConfig,
    InversionExtractor,
    ddim_invert,
    ddim_sample,
    feature_names,
    invert_images,
    load_diffusion_model,
    schedulers,
)


def scheduler_config() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000).config)


class GaussianDenoiser(nn.Module):
    """The exact (Bayes-optimal) noise predictor for data ~ N(0, s^2 I):
    eps(x_t, t) = sqrt(1 - a_t) x_t / (a_t s^2 + 1 - a_t). Linear in x_t, so every DDIM step multiplies
    by a known scalar and the round trip's error has a closed form."""

    def __init__(self, alphas_cumprod: torch.Tensor, s: float = 1.0, size: int = 8):
        super().__init__()
        self.register_buffer("alphas", alphas_cumprod.float())
        self.s = nn.Parameter(torch.tensor(float(s)), requires_grad=False)
        self.config = SimpleNamespace(sample_size=size)

    def forward(self, x, t):
        a = self.alphas[int(t)]
        return SimpleNamespace(sample=(1 - a).sqrt() * x / (a * self.s**2 + 1 - a))


def round_trip_factor(config: dict, num_steps: int, s: float) -> float:
    """Closed form of sample(invert(x)) / x for :class:`GaussianDenoiser`, in float64."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler.from_config(config).alphas_cumprod.double().numpy()
    _, inverse = schedulers(SimpleNamespace(scheduler_config=config), num_steps)
    ratio = config["num_train_timesteps"] // num_steps
    factor = 1.0
    for t in inverse.timesteps.tolist():
        a, ap = alphas[t], (alphas[t - ratio] if t - ratio >= 0 else 1.0)
        k = np.sqrt(1 - a) / (a * s * s + 1 - a)
        forward_mult = np.sqrt(a) * (1 - np.sqrt(1 - ap) * k) / np.sqrt(ap) + np.sqrt(1 - a) * k
        backward_mult = np.sqrt(ap) * (1 - np.sqrt(1 - a) * k) / np.sqrt(a) + np.sqrt(1 - ap) * k
        factor *= forward_mult * backward_mult
    return float(factor)


def gaussian_model(s: float = 1.0) -> DiffusionModel:
    from diffusers import DDPMScheduler

    config = scheduler_config()
    return DiffusionModel(GaussianDenoiser(DDPMScheduler.from_config(config).alphas_cumprod, s), config)


def test_ddim_round_trip_matches_the_closed_form_and_its_error_bound():
    model = gaussian_model(s=1.0)
    z0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scale = float(z0.abs().max())
    for steps in (2, 10, 50):
        factor = round_trip_factor(model.scheduler_config, steps, 1.0)
        reconstruction = ddim_sample(model, ddim_invert(model, z0, steps), steps)
        # the implementation does exactly what the math says ...
        torch.testing.assert_close(reconstruction, z0 * factor, atol=1e-4 * scale, rtol=1e-4)
    # ... and the math says: 50 steps reconstruct within 0.2% (1 - factor = 0.0016), 2 steps do not.
    assert 1 - round_trip_factor(model.scheduler_config, 50, 1.0) < 2e-3
    error_50 = float((ddim_sample(model, ddim_invert(model, z0, 50), 50) - z0).abs().max())
    error_2 = float((ddim_sample(model, ddim_invert(model, z0, 2), 2) - z0).abs().max())
    assert error_50 < 2e-3 * scale
    assert error_2 > 0.5 * scale
    # sampling from noise that is not the inversion of z0 does not give z0 back
    unrelated = ddim_sample(model, torch.randn_like(z0), 50)
    assert float((unrelated - z0).abs().max()) > 0.5 * scale


def test_fixed_point_inversion_is_exact_where_plain_inversion_is_not():
    model = gaussian_model(s=0.5)
    z0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    plain = ddim_sample(model, ddim_invert(model, z0, 10), 10)
    exact = ddim_sample(model, ddim_invert(model, z0, 10, fixed_point_iters=30), 10)
    assert float((plain - z0).abs().max()) > 0.1 * float(z0.abs().max())
    assert float((exact - z0).abs().max()) < 1e-4


def tiny_unet(size: int = 8, conditional: bool = False, channels: int = 3):
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    common = dict(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
    )
    if conditional:
        unet = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            **common,
        )
    else:
        unet = UNet2DModel(
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            **common,
        )
    with torch.no_grad():  # a tame random denoiser (trained ones predict unit-scale noise smoothly)
        unet.conv_out.weight.mul_(0.05)
        unet.conv_out.bias.zero_()
    return unet.eval()


def test_unet_fixed_point_inversion_reconstructs_a_pixel_image():
    model = DiffusionModel(tiny_unet(), scheduler_config())
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    z0 = model.encode(images)
    plain = ddim_sample(model, ddim_invert(model, z0, 2), 2)
    exact = ddim_sample(model, ddim_invert(model, z0, 2, fixed_point_iters=10), 2)
    assert float((plain - z0).abs().max()) > 1e-2
    assert float((exact - z0).abs().max()) < 1e-3
    out = invert_images(model, images, InversionConfig(mode="all", num_steps=2, fixed_point_iters=10))
    assert out.dire.shape == images.shape and float(out.dire.max()) < 1e-3
    assert out.stack().shape == (2, 9, 8, 8)
    assert out.lare.shape == (2, 3, 8, 8) and out.vae_residual is None


@pytest.mark.parametrize("tiny_vae", [False, True])
def test_latent_model_all_outputs(tiny_vae):
    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.manual_seed(0)
    if tiny_vae:
        vae = AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=4,
        )
    else:
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
        )
    model = DiffusionModel(tiny_unet(8, conditional=True, channels=4), scheduler_config(), vae=vae)
    assert model.latent and model.vae_scale == 2 and model.image_size == 16
    images = torch.rand(2, 3, 16, 16)
    out = invert_images(model, images, InversionConfig(mode="all", num_steps=3))
    assert out.noise.shape == (2, 4, 8, 8) and out.lare.shape == (2, 4, 8, 8)
    assert out.reconstruction.shape == images.shape and out.vae_residual.shape == images.shape
    extractor = InversionExtractor(model, InversionConfig(mode="all", num_steps=3))
    vector = extractor.encode(images)
    assert vector.shape == (2, extractor.feature_dim) and torch.isfinite(vector).all()
    assert extractor.feature_dim == len(feature_names("all", latent=True))


def test_single_step_features_do_not_depend_on_the_batch():
    model = DiffusionModel(tiny_unet(), scheduler_config())
    extractor = InversionExtractor(model, InversionConfig(mode="lare"))
    images = torch.rand(3, 3, 8, 8)
    together = extractor.encode(images)
    alone = extractor.encode(images[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)


def test_loads_local_diffusers_folders(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipeline")
    unet.save_pretrained(tmp_path / "unet_only")
    scheduler.save_pretrained(tmp_path / "unet_only")
    unet.save_pretrained(tmp_path / "components" / "unet")  # the benchmark zoo's layout
    scheduler.save_pretrained(tmp_path / "components" / "scheduler")
    images = torch.rand(2, 3, 8, 8)
    config = InversionConfig(mode="dire", num_steps=3)
    reference = InversionExtractor(DiffusionModel(unet, dict(scheduler.config)), config).encode(images)
    for folder in ("pipeline", "unet_only", "components"):
        model = load_diffusion_model(tmp_path / folder, dtype="float32")
        assert model.weights_id.startswith("folder:") and model.image_size == 8
        torch.testing.assert_close(InversionExtractor(model, config).encode(images), reference)
    with pytest.raises(ValueError, match="not a diffusers folder"):
        load_diffusion_model(tmp_path)
