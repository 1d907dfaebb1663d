"""Training losses the zoo's reconstruction families share (autoencoder, super-resolution).

A pixel loss alone (L1/L2) makes a reconstruction the conditional mean of what it cannot predict, so
the top octave of the spectrum comes out too weak: a blur that any spectrum detector sees. Real
generators fight this, and the literature shows it defeats spectrum detectors:

- *spectral regularisation* (Durall, Keuper, Keuper, CVPR 2020, "Watch your up-convolution"): match
  the azimuthally integrated (radially averaged) power spectrum of the output to the real one;
- *focal frequency loss* (Jiang, Dai, Wu, Loy, ICCV 2021): a distance between the 2-D spectra.

:func:`spectral_loss` is our own version of both, for paired training (output vs its own target):
the L1 distance between their radially averaged log power spectra plus, with a smaller weight, the
L1 distance between their 2-D log amplitude spectra. Logs make every octave count equally, which is
what lets the weak high band be learnt at all.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
EPS = 1e-6


@lru_cache(maxsize=16)
def _hann(h: int, w: int) -> torch.Tensor:
    return torch.outer(torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False))


@lru_cache(maxsize=16)
def _rings(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a ``rfft2`` half spectrum of an h x w image: each coefficient's ring index (one ring per
    frequency step up to Nyquist; corners beyond it are dropped) and the ring sizes."""
    fy = torch.fft.fftfreq(h).abs().unsqueeze(1)
    fx = torch.fft.rfftfreq(w).unsqueeze(0)
    bins = min(h, w) // 2
    ring = (torch.hypot(fy, fx) * 2 * bins).long().clamp(max=bins)
    counts = torch.bincount(ring.flatten(), minlength=bins + 1).float()
    return ring.flatten(), counts


def log_power(images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x H x (W/2+1): log power of the Hann-windowed, mean-removed spectrum
    of each channel and of the luminance (appended as channel C when the input is RGB)."""
    x = images
    if x.shape[1] == 3:
        luma = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = torch.cat([x, luma], dim=1)
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) * _hann(*x.shape[-2:]).to(x)
    return torch.log(torch.fft.rfft2(x, norm="ortho").abs().square() + EPS)


def radial_log_power(images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C' x min(H, W)/2: the log power averaged over rings of equal frequency
    (C' = C + 1 for RGB: the luminance is added), the 1-D profile a spectrum detector reads."""
    spectrum = log_power(images)
    ring, counts = _rings(*images.shape[-2:])
    flat = spectrum.flatten(2)
    sums = flat.new_zeros(*flat.shape[:2], counts.numel()).index_add_(2, ring.to(flat.device), flat)
    return (sums / counts.clamp(min=1).to(flat))[..., :-1]


def spectral_loss(output: torch.Tensor, target: torch.Tensor, weight_2d: float = 0.1) -> torch.Tensor:
    """Paired spectral loss: L1 between the radial log power profiles of ``output`` and ``target``
    plus ``weight_2d`` x L1 between their 2-D log power spectra (see the module docstring)."""
    radial = F.l1_loss(radial_log_power(output), radial_log_power(target))
    if weight_2d <= 0:
        return radial
    return radial + weight_2d * F.l1_loss(log_power(output), log_power(target))


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, recipe: dict) -> torch.Tensor:
    """The reconstruction families' training loss: ``l1`` x L1 + ``spectral`` x :func:`spectral_loss`
    (weights from the model's training ``recipe``; a missing weight is 0, ``l1`` defaults to 1)."""
    loss = recipe.get("l1", 1.0) * F.l1_loss(output, target)
    if recipe.get("spectral", 0.0) > 0:
        loss = loss + recipe["spectral"] * spectral_loss(output, target, recipe.get("spectral_2d", 0.1))
    return loss
