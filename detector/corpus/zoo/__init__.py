"""The benchmark's generator zoo: small generators of six families, trained on the real-photo pool.

Families (two or more generators each): ``ddpm`` (unconditional diffusion samples), ``sdedit``
(img2img of real crops), ``autoencoder`` (laundering round-trips), ``gan`` (two upsampler designs),
``sr`` (learned super-resolution) and ``vqar`` (patch tokens sampled autoregressively). See
``registry`` for names and ``ddpm.load_zoo_ddpm`` for the project's own offline diffusion model.
"""

from detector.corpus.zoo.base import GeneratorSpec, ModelSpec
from detector.corpus.zoo.ddpm import load_zoo_ddpm, zoo_ddpm_folder
from detector.corpus.zoo.registry import (
    GENERATORS,
    MODELS,
    ensure_model,
    generate,
    get_generator,
    get_model_spec,
    list_families,
    list_generators,
    load_model,
)

__all__ = [
    "GENERATORS",
    "MODELS",
    "GeneratorSpec",
    "ModelSpec",
    "ensure_model",
    "generate",
    "get_generator",
    "get_model_spec",
    "list_families",
    "list_generators",
    "load_model",
    "load_zoo_ddpm",
    "zoo_ddpm_folder",
]
