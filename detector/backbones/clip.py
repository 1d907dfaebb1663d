"""CLIP image towers from open_clip: random init, an open_clip pretrained tag, or a local checkpoint.

Only the vision tower is kept (the text tower is dropped to save memory); its pooled, projected image
embedding is the feature, as in UnivFD's linear probe. Local checkpoints may be open_clip state dicts
(whole model or image tower, any ``module.`` prefix) or Hugging Face ``CLIPModel`` /
``CLIPVisionModelWithProjection`` state dicts, which we map onto open_clip's layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from detector.backbones.base import Backbone, Preprocess
from detector.backbones.checkpoint import (
    BackboneError,
    BackboneWeightsError,
    load_into,
    read_state_dict,
    select_prefix,
    strip_prefixes,
)
from detector.io import file_sha256

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_project_configs() -> None:
    """Make the project's own open_clip configs (``tiny-vit`` for tests) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def hf_clip_to_open_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a Hugging Face CLIP vision state dict onto open_clip's ``VisionTransformer`` names.

    HF keeps q/k/v projections separate and the projection as a ``Linear``; open_clip packs q/k/v into
    ``in_proj_weight`` and stores ``proj`` transposed. Text-tower keys are ignored.
    """
    state = {k.removeprefix("clip."): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    simple = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "ln_pre.bias",
        "vision_model.post_layernorm.weight": "ln_post.weight",
        "vision_model.post_layernorm.bias": "ln_post.bias",
    }
    layer_map = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "visual_projection.weight":
            out["proj"] = value.t().contiguous()
        elif key.startswith("vision_model.encoder.layers."):
            rest = key[len("vision_model.encoder.layers.") :]
            index, sub = rest.split(".", 1)
            module, param = sub.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(index), param), {})[module[-6]] = value
            elif module in layer_map:
                out[f"transformer.resblocks.{index}.{layer_map[module]}.{param}"] = value
            else:
                raise BackboneWeightsError(f"unknown Hugging Face CLIP key {key}")
    for (index, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise BackboneWeightsError(
                f"layer {index} {param}: q/k/v projections incomplete ({sorted(parts)})"
            )
        out[f"transformer.resblocks.{index}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def visual_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any supported CLIP checkpoint -> open_clip image-tower keys."""
    state = strip_prefixes(state)
    if any(k.startswith(("vision_model.", "clip.vision_model.")) for k in state):
        return hf_clip_to_open_clip(state)
    if any(k.startswith("visual.") for k in state):
        return select_prefix(state, "visual.")
    return state


class ClipBackbone(Backbone):
    """open_clip ``VisionTransformer`` (or any open_clip image tower); features = projected embedding."""

    def features(self, x: Tensor) -> Tensor:
        return self.model(x)

    def intermediates(self, x: Tensor, indices: Sequence[int] | int) -> list[Tensor]:
        visual = self.model
        if not hasattr(visual, "forward_intermediates"):
            raise BackboneError(f"{self.name}: this open_clip image tower has no intermediate-layer outputs")
        out = visual.forward_intermediates(
            x,
            indices=indices if isinstance(indices, int) else list(indices),
            intermediates_only=True,
            output_extra_tokens=True,
        )
        maps = out["image_intermediates"]
        prefix = out.get("image_intermediates_prefix")
        if prefix:  # ViT: the class token of each block, as UnivFD-style probes use
            return [p[:, 0] for p in prefix]
        return [m.mean(dim=(2, 3)) for m in maps]


def create_clip(
    model_name: str,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> ClipBackbone:
    """``pretrained``: None (random init), an open_clip tag (downloads; needs the network) or a local file."""
    import open_clip

    register_project_configs()
    if model_name not in open_clip.list_models():
        raise BackboneError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() (e.g. ViT-B-32, ViT-L-14)"
        )
    local = pretrained is not None and (
        Path(str(pretrained)).is_file()
        or Path(str(pretrained)).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )
    if pretrained is None or local:
        logging.disable(logging.WARNING)  # open_clip warns that random init is random init
        try:
            model = open_clip.create_model(model_name, pretrained=None)
        finally:
            logging.disable(logging.NOTSET)
        visual = model.visual
        weights_id = "random"
        if local:
            path = Path(str(pretrained))
            state = visual_state_dict(read_state_dict(path))
            load_into(visual, state, where=str(path))
            weights_id = f"file:{file_sha256(path)[:16]}"
    else:
        tag = str(pretrained)
        available = open_clip.list_pretrained_tags_by_model(model_name)
        if tag not in available:
            raise BackboneError(
                f"{model_name}: {tag!r} is neither a local checkpoint file nor an open_clip tag "
                f"(tags for this model: {', '.join(available) or 'none'})"
            )
        model = open_clip.create_model(model_name, pretrained=tag, cache_dir=cache_dir)
        visual = model.visual
        weights_id = f"open_clip:{model_name}:{tag}"
    del model
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    preprocess = Preprocess(
        image_size=int(size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
    )
    backbone = ClipBackbone(
        f"clip:{model_name}", visual, preprocess, feature_dim=int(visual.output_dim), weights_id=weights_id
    )
    backbone.eval()
    return backbone.to(device=device, dtype=dtype) if dtype is not None else backbone.to(device)
