"""The zoo's registry: every model and generator by name, and the cached train-or-load step.

``list_generators()`` names every labelled generator; ``ensure_model`` trains a model once per
(name, seed, steps, training key) into the cache (written in a temporary folder, renamed when complete, so a killed
build never leaves a half-written model that looks done) and loads it afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from detector.corpus.manifest import CorpusError
from detector.corpus.zoo import autoencoder, ddpm, gan, sdedit, superres, vqar
from detector.corpus.zoo.base import (
    GeneratorSpec,
    ModelSpec,
    is_done,
    model_dir,
    publish_dir,
    temp_dir_beside,
)


class UnknownGeneratorError(CorpusError):
    """A generator or zoo model name the zoo does not have."""


FAMILY_MODULES: dict[str, ModuleType] = {
    m.FAMILY: m for m in (ddpm, sdedit, autoencoder, gan, superres, vqar)
}
MODELS: dict[str, ModelSpec] = {spec.name: spec for m in FAMILY_MODULES.values() for spec in m.MODELS}
GENERATORS: dict[str, GeneratorSpec] = {g.name: g for m in FAMILY_MODULES.values() for g in m.GENERATORS}
_MODEL_MODULE = {spec.name: m for m in FAMILY_MODULES.values() for spec in m.MODELS}


def list_generators(family: str | None = None) -> list[str]:
    return [name for name, g in GENERATORS.items() if family is None or g.family == family]


def list_families() -> list[str]:
    return list(FAMILY_MODULES)


def get_generator(name: str) -> GeneratorSpec:
    try:
        return GENERATORS[name]
    except KeyError:
        raise UnknownGeneratorError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}") from None


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownGeneratorError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}") from None


def ensure_model(
    name: str,
    cache: Path,
    pool: torch.Tensor | Callable[[], torch.Tensor] | None,
    seed: int = 0,
    steps: int | None = None,
    progress=None,
) -> tuple[Path, bool]:
    """Train model ``name`` into ``cache`` unless it is there already. Returns (folder, trained_now).

    ``pool`` (N x 3 x H x W in [-1, 1], or a function making it) is only used when training has to
    happen, so a cached build never renders it.
    """
    spec = get_model_spec(name)
    steps = spec.steps if steps is None else steps
    folder = model_dir(cache, spec, seed, steps)
    if is_done(folder):
        return folder, False
    if pool is None:
        raise CorpusError(f"{name} is not cached in {cache} and no training pool was given")
    tmp = temp_dir_beside(folder)
    try:
        data = pool() if callable(pool) else pool
        _MODEL_MODULE[name].train(spec, data, seed, steps, tmp, progress)
        publish_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, True


def load_model(name: str, folder: Path):
    return _MODEL_MODULE[name].load(get_model_spec(name), folder)


def generate(
    generator: str,
    model,
    n: int,
    sources: torch.Tensor | None,
    seed_parts: tuple,
    size: int,
) -> torch.Tensor:
    """``n`` images (N x 3 x size x size in [-1, 1]) from ``generator`` using its loaded model.
    Conditional generators need ``sources`` (N real crops, same layout)."""
    spec = get_generator(generator)
    if spec.conditional and (sources is None or len(sources) != n):
        raise CorpusError(f"{generator} turns real crops into fakes: pass {n} source crops")
    return FAMILY_MODULES[spec.family].generate(model, spec, n, sources, seed_parts, size)
