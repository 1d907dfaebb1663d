"""The zoo's shared spectral loss and the training key that keeps stale cached weights out."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from detector.corpus.report import radial_spectrum
from detector.corpus.zoo import get_model_spec
from detector.corpus.zoo.base import folder_steps, model_dir, training_key, upsample2x
from detector.corpus.zoo.losses import radial_log_power, reconstruction_loss, spectral_loss


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=gen) * 2 - 1


def test_spectral_loss_is_zero_on_itself_and_sees_a_blur():
    x = _images()
    blurred = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert spectral_loss(x, x).item() == 0.0
    assert spectral_loss(blurred, x).item() > 1.0
    # a blur loses the high band: its radial profile falls below the target's at the top rings
    gap = radial_log_power(blurred).mean((0, 1)) - radial_log_power(x).mean((0, 1))
    assert gap[-4:].max() < -1.0 and abs(gap[1].item()) < gap[-1].abs().item()


def test_radial_profile_agrees_with_the_baselines_feature():
    """The loss reads the same kind of profile as the benchmark's baseline feature (up to scale)."""
    x = _images(1, 64, seed=3)
    ours = radial_log_power(x)[0, 3].numpy()  # channel 3: luminance
    image = ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    theirs = radial_spectrum(image, 32)
    assert np.corrcoef(ours[2:], theirs[2:])[0, 1] > 0.9


def test_spectral_term_pushes_a_blur_back_towards_the_target_spectrum():
    target = _images(8, 32, seed=1)
    out = F.avg_pool2d(target, 3, 1, 1, count_include_pad=False).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([out], lr=0.02)
    before = spectral_loss(out, target).item()
    for _ in range(30):
        optimizer.zero_grad()
        reconstruction_loss(out, target, {"l1": 1.0, "spectral": 1.0}).backward()
        optimizer.step()
    assert spectral_loss(out, target).item() < 0.5 * before


def test_training_key_changes_with_the_recipe_and_names_the_cache_folder(tmp_path):
    spec = get_model_spec("sr-shuffle")
    other = dataclasses.replace(spec, recipe={**spec.recipe, "spectral": 123.0})
    assert training_key(spec) == training_key(dataclasses.replace(spec))
    assert training_key(spec) != training_key(other)
    assert training_key(spec) != training_key(dataclasses.replace(spec, lr=spec.lr * 2))
    folder = model_dir(tmp_path, spec, 0, 7)
    assert folder != model_dir(tmp_path, other, 0, 7) and folder_steps(folder) == 7


def test_upsamplers_double_the_size():
    x = torch.zeros(1, 4, 5, 6)
    for kind in ("tconv", "nearest", "shuffle"):
        assert upsample2x(4, 3, kind)(x).shape == (1, 3, 10, 12)
