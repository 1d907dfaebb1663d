"""The one interface every backbone offers: a frozen-or-tunable image encoder with its own preprocessing.

A :class:`Backbone` takes images as ``B x 3 x S x S`` floats in ``[0, 1]`` (never normalised by the
caller), normalises them itself, and returns pooled features. Callers therefore never need to know
whether a model wants CLIP's or ImageNet's mean/std: the same tensor goes to every backbone.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: its square input side and normalisation. The pixels themselves (resize
    rule and interpolation) are the same for every backbone: :func:`detector.data.resize_transform`."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    @property
    def key(self) -> str:
        """A stable string naming exactly this preprocessing (used in feature-cache keys)."""
        from detector.data import INTERPOLATION, TRANSFORM_VERSION

        mean = ",".join(f"{v:.6g}" for v in self.mean)
        std = ",".join(f"{v:.6g}" for v in self.std)
        return f"{TRANSFORM_VERSION};size={self.image_size};mean={mean};std={std};interp={INTERPOLATION}"

    def transform(self):
        """The albumentations transform bringing any ``H x W x 3`` uint8 image to ``image_size`` square:
        :func:`detector.data.resize_transform`, the one every consumer uses."""
        from detector.data import resize_transform

        return resize_transform(self.image_size)


def state_dict_hash(module: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor: identifies weights exactly."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def autocast_context(device: torch.device | str, enabled: bool = True):
    """bfloat16 autocast on CUDA (mixed precision); a no-op elsewhere, so CPU runs in full precision."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """Base class: subclasses set ``model`` and implement :meth:`features` and :meth:`intermediates`.

    ``weights_id`` identifies the weights the backbone was created with (a file's hash, a pretrained tag,
    or the hash of random-init tensors); it is part of every feature-cache key.
    """

    name: str
    feature_dim: int
    preprocess: Preprocess
    model: nn.Module

    def __init__(
        self, name: str, model: nn.Module, preprocess: Preprocess, feature_dim: int, weights_id: str
    ):
        super().__init__()
        self.name = name
        self.model = model
        self.preprocess = preprocess
        self.feature_dim = int(feature_dim)
        self._weights_id = weights_id
        self.register_buffer("_mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    # -- identity -------------------------------------------------------------------------------------
    @property
    def weights_id(self) -> str:
        if self._weights_id == "random":  # hash lazily: only cache users pay for it
            self._weights_id = f"random:{state_dict_hash(self.model)[:16]}"
        return self._weights_id

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, preprocess={self.preprocess}"

    # -- computation ----------------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """``[0, 1]`` images -> the model's normalised input, on the model's device and dtype."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected B x 3 x H x W images, got {tuple(images.shape)}")
        images = images.to(self._mean.device)
        return ((images - self._mean) / self._std).to(self.dtype)

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """Pooled features of a *normalised* batch."""

    @abc.abstractmethod
    def intermediates(self, x: Tensor, indices: Sequence[int] | int) -> list[Tensor]:
        """Pooled ``B x d_i`` features after the given blocks of a *normalised* batch."""

    def forward(self, images: Tensor) -> Tensor:
        """``images``: ``B x 3 x S x S`` floats in [0, 1]; returns ``B x feature_dim`` (differentiable)."""
        return self.features(self.normalize(images))

    def forward_intermediates(self, images: Tensor, indices: Sequence[int] | int) -> list[Tensor]:
        """Pooled features after blocks ``indices`` (ints; negative counts from the end; an int ``n``
        means the last ``n`` blocks), each ``B x d_i``."""
        return self.intermediates(self.normalize(images), indices)

    @torch.inference_mode()
    def encode(self, images: Tensor, autocast: bool = True) -> Tensor:
        """Features for inference: eval mode, no autograd, bfloat16 autocast on CUDA; float32 output."""
        was_training = self.training
        self.eval()
        try:
            with autocast_context(self.device, autocast):
                out = self(images)
        finally:
            self.train(was_training)
        return out.float()

    def transform(self):
        """albumentations transform bringing any ``H x W x 3`` uint8 image to ``S x S`` (the one rule of
        :mod:`detector.data`)."""
        return self.preprocess.transform()
