"""RIGID: a training-free detector. Real images sit in flatter regions of a foundation model's embedding
space than generated ones, so their embedding moves less under a tiny input perturbation.

score(x) = mean_k cos(f(x), f(x + lambda * n_k)), n_k ~ N(0, I) in the backbone's *normalised* input
space (so lambda means the same for every backbone). High similarity suggests real; ``1 - similarity``
is the zero-training "AI-generated" score. The noise fields are fixed by ``seed`` and shared by all
images, so an image's score does not depend on which batch it was in (and can be cached by content).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.backbones.base import Backbone


@dataclass(frozen=True)
class RigidConfig:
    noise_level: float = 0.05  # lambda, in units of the normalised input's scale
    draws: int = 4  # noise draws averaged per image
    seed: int = 0


def _noise(shape: tuple[int, ...], draw: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + draw)
    return torch.randn((1, *shape), generator=generator)


@torch.inference_mode()
def rigid_similarity(
    backbone: Backbone, images: Tensor, config: RigidConfig = RigidConfig(), clean: Tensor | None = None
) -> Tensor:
    """Per-image mean cosine similarity (``B``) between clean and perturbed embeddings; 1.0 at lambda 0.

    ``clean``: the images' embeddings when the caller already has them (a scoring pipeline that ran the
    backbone for its head), saving one forward."""
    if config.draws < 1:
        raise ValueError("RIGID needs at least one noise draw")
    images = images.to(backbone.device)
    clean = backbone.encode(images) if clean is None else clean.to(images.device).float()
    std = torch.tensor(backbone.preprocess.std, device=images.device).view(1, 3, 1, 1)
    sims = []
    for draw in range(config.draws):
        noise = _noise(tuple(images.shape[1:]), draw, config.seed).to(images.device)
        noisy = backbone.encode(images + config.noise_level * std * noise)
        sims.append(F.cosine_similarity(clean, noisy, dim=-1, eps=1e-12))
    return torch.stack(sims).mean(0)


def rigid_score(
    backbone: Backbone, images: Tensor, config: RigidConfig = RigidConfig(), clean: Tensor | None = None
) -> Tensor:
    """Zero-training "AI-generated" score: ``1 - similarity`` (higher = more likely generated)."""
    return 1.0 - rigid_similarity(backbone, images, config, clean=clean)


class RigidExtractor:
    """RIGID as a one-dimensional feature that the feature cache and linear heads can use."""

    feature_dim = 1

    def __init__(self, backbone: Backbone, config: RigidConfig = RigidConfig()):
        self.backbone = backbone
        self.config = config
        self.preprocess = backbone.preprocess
        self.name = (
            f"rigid[{backbone.name};lambda={config.noise_level:g};draws={config.draws};seed={config.seed}]"
        )

    @property
    def weights_id(self) -> str:
        return self.backbone.weights_id

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def to(self, device) -> RigidExtractor:
        self.backbone = self.backbone.to(device)
        return self

    def transform(self):
        return self.backbone.transform()

    def encode(self, images: Tensor) -> Tensor:
        return rigid_similarity(self.backbone, images, self.config).unsqueeze(1).float()
