"""What diffusion inversion reveals about an image, as maps and as compact vectors.

- DIRE: |x - D(sample(invert(E(x))))|, the multi-step reconstruction error (generated images lie
  closer to the model's manifold and reconstruct better);
- LaRE-style: the single-step reconstruction error in the model's (latent) space: one denoiser call,
  the fast path;
- FakeInversion: the stack [x, D(z_T), D(z_0)] of the image, its decoded inverted noise and its
  reconstruction, for a CNN to classify;
- the VAE round trip |x - D(E(x))| for latent models ("laundering" makes real images look synthetic).

Each map also becomes a few statistics (:func:`map_stats`, :func:`noise_stats`) so that linear heads
and the feature cache can use them as vectors (:class:`InversionExtractor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.backbones.base import Preprocess, autocast_context
from detector.features.inversion.ddim import ddim_invert, ddim_sample, single_step_error
from detector.features.inversion.models import DiffusionModel, InversionError

MODES = ("lare", "dire", "fakeinversion", "all")
MAP_STATS = ("mean", "std", "p50", "p90", "p99", "max")
NOISE_STATS = ("mean", "std", "excess_kurtosis", "autocorr_h", "autocorr_w")


@dataclass(frozen=True)
class InversionConfig:
    mode: str = "lare"  # lare (single step) | dire | fakeinversion | all
    num_steps: int = 20  # DDIM inversion/sampling steps for dire/fakeinversion
    lare_timestep: int = 250  # noise level of the single-step error (of num_train_timesteps)
    seed: int = 0  # fixes the single-step noise field (shared by all images: batch-independent)
    prompt: str = ""  # caption for text-conditioned models ("" = unconditional)
    fixed_point_iters: int = 0  # >0: exact inversion by fixed-point refinement of each step
    vae_residual: bool = True  # latent models: also |x - D(E(x))| (one VAE decode more)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InversionError(f"inversion mode must be one of {MODES}, got {self.mode!r}")
        if self.num_steps < 1:
            raise InversionError("num_steps must be >= 1")


@dataclass
class InversionOutputs:
    """Maps for a batch; images in [0, 1], errors as absolute differences. Absent ones are None."""

    image: Tensor
    reconstruction: Tensor | None = None  # D(z_0') after inversion and sampling
    dire: Tensor | None = None  # |x - reconstruction|
    noise: Tensor | None = None  # z_T, in the model's space
    decoded_noise: Tensor | None = None  # D(z_T)
    lare: Tensor | None = None  # single-step error map, model space
    vae_residual: Tensor | None = None  # |x - D(E(x))|, latent models only

    def stack(self) -> Tensor:
        """FakeInversion's classifier input: [x, D(z_T), D(z_0)] as B x 9 x H x W."""
        if self.decoded_noise is None or self.reconstruction is None:
            raise InversionError("the FakeInversion stack needs mode 'fakeinversion', 'dire' or 'all'")
        return torch.cat([self.image, self.decoded_noise, self.reconstruction], dim=1)


def _noise_field(shape: tuple[int, ...], seed: int, device, dtype) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape), generator=generator).to(device=device, dtype=dtype)


@torch.no_grad()
def invert_images(model: DiffusionModel, images: Tensor, config: InversionConfig) -> InversionOutputs:
    """Compute the maps ``config.mode`` asks for on ``images`` (B x 3 x H x W in [0, 1], at a size the
    model accepts). Runs on the model's device; bfloat16 autocast on CUDA."""
    images = images.to(model.device).float()
    out = InversionOutputs(image=images)
    with autocast_context(model.device):
        z0 = model.encode(images)
        states = model.encoder_states(len(images), config.prompt)
        if model.latent and config.vae_residual:
            out.vae_residual = (images - model.decode(z0)).abs()
        if config.mode in ("lare", "all"):
            noise = _noise_field(tuple(z0.shape[1:]), config.seed, z0.device, z0.dtype)
            out.lare = single_step_error(model, z0, config.lare_timestep, noise, states).float()
        if config.mode in ("dire", "fakeinversion", "all"):
            zT = ddim_invert(model, z0, config.num_steps, states, config.fixed_point_iters)
            z0_hat = ddim_sample(model, zT, config.num_steps, states)
            out.noise = zT.float()
            out.reconstruction = model.decode(z0_hat)
            out.dire = (images - out.reconstruction).abs()
            out.decoded_noise = model.decode(zT)
    return out


def map_stats(maps: Tensor) -> Tensor:
    """B x C x H x W non-negative map -> B x 6: mean, std, median, 90th/99th percentile, max."""
    flat = maps.float().flatten(1)
    q = torch.quantile(flat, torch.tensor([0.5, 0.9, 0.99], device=flat.device), dim=1).T
    return torch.cat(
        [flat.mean(1, keepdim=True), flat.std(1, keepdim=True), q, flat.amax(1, keepdim=True)], dim=1
    )


def noise_stats(noise: Tensor) -> Tensor:
    """How Gaussian and white the inverted noise is: mean, std, excess kurtosis, lag-1 autocorrelation
    along height and width (B x 5). Real and generated images invert to differently shaped noise."""
    z = noise.float()
    flat = z.flatten(1)
    mean = flat.mean(1, keepdim=True)
    centred = z - mean.view(-1, 1, 1, 1)
    var = centred.pow(2).flatten(1).mean(1, keepdim=True).clamp_min(1e-12)
    kurt = centred.pow(4).flatten(1).mean(1, keepdim=True) / var.pow(2) - 3.0
    ac_h = (centred[:, :, 1:] * centred[:, :, :-1]).flatten(1).mean(1, keepdim=True) / var
    ac_w = (centred[..., 1:] * centred[..., :-1]).flatten(1).mean(1, keepdim=True) / var
    return torch.cat([mean, var.sqrt(), kurt, ac_h, ac_w], dim=1)


def feature_names(mode: str, latent: bool) -> list[str]:
    names: list[str] = []
    if mode in ("lare", "all"):
        names += [f"lare_{s}" for s in MAP_STATS]
    if mode in ("dire", "fakeinversion", "all"):
        names += [f"dire_{s}" for s in MAP_STATS] + [f"noise_{s}" for s in NOISE_STATS]
    if mode in ("fakeinversion", "all"):
        names += [f"decoded_noise_{s}" for s in MAP_STATS]
    if latent:
        names += [f"vae_residual_{s}" for s in MAP_STATS]
    return names


def outputs_to_vector(out: InversionOutputs, mode: str) -> Tensor:
    """The compact statistics, in :func:`feature_names` order."""
    parts = []
    if mode in ("lare", "all"):
        parts.append(map_stats(out.lare))
    if mode in ("dire", "fakeinversion", "all"):
        parts += [map_stats(out.dire), noise_stats(out.noise)]
    if mode in ("fakeinversion", "all"):
        parts.append(map_stats((out.decoded_noise - 0.5).abs()))
    if out.vae_residual is not None:
        parts.append(map_stats(out.vae_residual))
    return torch.cat(parts, dim=1).float()


class InversionExtractor:
    """Inversion statistics as a feature extractor: plugs into :func:`detector.features.extract_features`
    and its cache exactly like a backbone."""

    def __init__(self, model: DiffusionModel, config: InversionConfig = InversionConfig()):
        self.model = model
        self.config = config
        self.names = feature_names(config.mode, model.latent and config.vae_residual)
        self.feature_dim = len(self.names)
        self.preprocess = Preprocess(model.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        c = config
        steps = f";steps={c.num_steps};fp={c.fixed_point_iters}" if c.mode != "lare" else ""
        prompt = f";prompt={c.prompt!r}" if c.prompt else ""
        prompt += "" if c.vae_residual or not model.latent else ";no-vae-residual"
        self.name = f"inversion[{model.name};{c.mode};t={c.lare_timestep};seed={c.seed}{steps}{prompt}]"

    @property
    def weights_id(self) -> str:
        return self.model.weights_id

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device) -> InversionExtractor:
        self.model.to(device=device)
        return self

    def transform(self):
        return self.preprocess.transform()

    def encode(self, images: Tensor) -> Tensor:
        return outputs_to_vector(invert_images(self.model, images, self.config), self.config.mode)
