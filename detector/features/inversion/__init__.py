"""Diffusion-inversion features: DDIM inversion for pixel and latent models, DIRE, LaRE-style single-step
error, the FakeInversion stack, and compact statistics of each."""

from detector.features.inversion.ddim import ddim_invert, ddim_sample, schedulers, single_step_error
from detector.features.inversion.features import (
    MODES,
    InversionConfig,
    InversionExtractor,
    InversionOutputs,
    feature_names,
    invert_images,
    map_stats,
    noise_stats,
    outputs_to_vector,
)
from detector.features.inversion.models import DiffusionModel, load_diffusion_model

__all__ = [
    "MODES",
    "DiffusionModel",
    "InversionConfig",
    "InversionExtractor",
    "InversionOutputs",
    "ddim_invert",
    "ddim_sample",
    "feature_names",
    "invert_images",
    "load_diffusion_model",
    "map_stats",
    "noise_stats",
    "outputs_to_vector",
    "schedulers",
    "single_step_error",
]
