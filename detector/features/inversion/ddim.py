"""Deterministic DDIM inversion (``DDIMInverseScheduler``) and sampling (``DDIMScheduler``, eta = 0).

Both walk the same timestep grid in opposite directions. Sampling from x_t to x_{t-r} evaluates the
denoiser at (x_t, t); inversion from x_{t-r} to x_t can only evaluate it at (x_{t-r}, t), the standard
approximation. Each step is affine in the denoiser output, so the round trip's error is the
denoiser's change between those two inputs times an O(1/N) coefficient: it vanishes as the number of
steps N grows. ``fixed_point_iters`` removes the approximation instead: it re-solves each inversion
step x_t = step(eps(x_t, t), x_{t-r}) by fixed-point iteration, after which sampling retraces the
inversion exactly (up to convergence).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.features.inversion.models import DiffusionModel, InversionError


def _accepted(cls, config: dict) -> dict:
    """The keys ``cls`` takes (DDPM configs carry extra ones that diffusers would warn about)."""
    import inspect

    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in config.items() if k in names}


def schedulers(model: DiffusionModel, num_steps: int):
    """A matched (DDIMScheduler, DDIMInverseScheduler) pair on ``num_steps`` steps, clipping off
    (clipping x_0 predictions would make inversion irreversible)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    if num_steps < 1:
        raise InversionError(f"num_steps must be >= 1, got {num_steps}")
    config = dict(model.scheduler_config)
    config.update(clip_sample=False, thresholding=False)
    forward = DDIMScheduler.from_config(_accepted(DDIMScheduler, config))
    inverse = DDIMInverseScheduler.from_config(_accepted(DDIMInverseScheduler, config))
    forward.set_timesteps(num_steps)
    inverse.set_timesteps(num_steps)
    if forward.timesteps.flip(0).tolist() != inverse.timesteps.tolist():
        raise InversionError(
            f"scheduler config gives mismatched grids: sampling {forward.timesteps.tolist()} vs inversion "
            f"{inverse.timesteps.tolist()}"
        )
    return forward, inverse


@torch.no_grad()
def ddim_invert(
    model: DiffusionModel,
    z0: Tensor,
    num_steps: int,
    states: Tensor | None = None,
    fixed_point_iters: int = 0,
) -> Tensor:
    """Map a clean sample ``z0`` (latent, or pixels in [-1, 1]) to its DDIM noise ``z_T``."""
    _, inverse = schedulers(model, num_steps)
    z = z0
    for t in inverse.timesteps:
        t = int(t)
        previous = z
        z = inverse.step(model.predict(previous, t, states), t, previous).prev_sample
        for _ in range(fixed_point_iters):
            z = inverse.step(model.predict(z, t, states), t, previous).prev_sample
    return z


@torch.no_grad()
def ddim_sample(model: DiffusionModel, zT: Tensor, num_steps: int, states: Tensor | None = None) -> Tensor:
    """Deterministic DDIM sampling (eta = 0) from ``zT`` back to a clean sample."""
    forward, _ = schedulers(model, num_steps)
    z = zT
    for t in forward.timesteps:
        t = int(t)
        z = forward.step(model.predict(z, t, states), t, z, eta=0.0).prev_sample
    return z


def alpha_bar(model: DiffusionModel, timestep: int) -> float:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(_accepted(DDIMScheduler, model.scheduler_config))
    return float(scheduler.alphas_cumprod[timestep])


@torch.no_grad()
def single_step_error(
    model: DiffusionModel,
    z0: Tensor,
    timestep: int,
    noise: Tensor,
    states: Tensor | None = None,
) -> Tensor:
    """LaRE-style one-step reconstruction error: noise ``z0`` to ``timestep`` with ``noise``, denoise once,
    return |z0 - z0_hat| (same shape as ``z0``). One denoiser call: the fast path."""
    a = alpha_bar(model, timestep)
    zt = a**0.5 * z0 + (1 - a) ** 0.5 * noise
    output = model.predict(zt, timestep, states)
    kind = model.scheduler_config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        z0_hat = (zt - (1 - a) ** 0.5 * output) / a**0.5
    elif kind == "v_prediction":
        z0_hat = a**0.5 * zt - (1 - a) ** 0.5 * output
    elif kind == "sample":
        z0_hat = output
    else:
        raise InversionError(f"unsupported prediction_type {kind!r}")
    return (z0 - z0_hat).abs()
