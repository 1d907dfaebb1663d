"""Any timm model as a backbone: random init, timm's hub weights (network), or a local checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.backbones.base import Backbone, Preprocess
from detector.backbones.checkpoint import BackboneError, load_into, read_state_dict, strip_prefixes
from detector.io import file_sha256


class TimmBackbone(Backbone):
    """Features are timm's pre-logits pooled features; the classifier stays on ``model`` when it has one,
    so :meth:`classify` can use pretrained ImageNet heads."""

    def features(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def intermediates(self, x: Tensor, indices: Sequence[int] | int) -> list[Tensor]:
        idx = indices if isinstance(indices, int) else list(indices)
        try:
            outs = self.model.forward_intermediates(
                x, indices=idx, intermediates_only=True, return_prefix_tokens=True
            )
        except TypeError:  # CNNs take no prefix-token argument
            outs = self.model.forward_intermediates(x, indices=idx, intermediates_only=True)
        pooled = []
        for out in outs:
            if isinstance(out, tuple):  # ViT: (spatial map, prefix tokens); take the class token
                spatial, prefix = out
                pooled.append(
                    prefix[:, 0] if prefix is not None and prefix.shape[1] else spatial.mean((2, 3))
                )
            elif out.ndim == 4:
                pooled.append(out.mean(dim=(2, 3)))
            elif out.ndim == 3:
                pooled.append(out.mean(dim=1))
            else:
                pooled.append(out)
        return pooled

    @torch.inference_mode()
    def classify(self, images: Tensor) -> Tensor:
        """Class logits from the model's own head (meaningful with pretrained weights)."""
        self.eval()
        return self.model(self.normalize(images)).float()


def preprocess_from_timm(model: nn.Module) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    return Preprocess(
        image_size=int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def _is_head(model: nn.Module):
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return lambda key: any(key.startswith(f"{n}.") for n in names)


def build_timm(
    backbone_name: str,
    model_name: str,
    pretrained: str | Path | bool | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights_id: str | None = None,
    state: dict[str, Tensor] | None = None,
    **model_kwargs,
) -> TimmBackbone:
    """Build a timm model; ``pretrained`` True/"timm" = timm's hub weights, a path = local file."""
    import timm

    hub = pretrained is True or pretrained == "timm"
    logging.disable(logging.WARNING)
    try:
        model = timm.create_model(model_name, pretrained=hub, **model_kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BackboneError(f"unknown timm model {model_name!r}; see timm.list_models()") from None
        raise
    finally:
        logging.disable(logging.NOTSET)
    if hub:
        weights_id = f"timm-hub:{model_name}"
    elif state is not None:
        load_into(model, strip_prefixes(state), where=weights_id or model_name)
    elif pretrained not in (None, False):
        path = Path(str(pretrained))
        head = _is_head(model)
        own = model.state_dict()
        # A feature-only checkpoint may lack the classifier, or carry one for another number of classes:
        # the head is not part of the features, so it may differ; everything else must match.
        loaded = {
            k: v
            for k, v in strip_prefixes(read_state_dict(path)).items()
            if not (head(k) and k in own and tuple(own[k].shape) != tuple(v.shape))
        }
        load_into(model, loaded, where=str(path), ignore_missing=head, ignore_unexpected=head)
        weights_id = f"file:{file_sha256(path)[:16]}"
    backbone = TimmBackbone(
        backbone_name,
        model,
        preprocess_from_timm(model),
        feature_dim=int(model.num_features),
        weights_id=weights_id or "random",
    )
    backbone.eval()
    return backbone.to(device=device, dtype=dtype) if dtype is not None else backbone.to(device)
