"""Backbone registry: every registered model builds and encodes; checkpoints round-trip; real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.backbones import (
    TINY_BACKBONES,
    Backbone,
    BackboneWeightsError,
    create_backbone,
    list_backbones,
    save_state_dict,
)
from detector.backbones.effnet_lite import available_variants

EFFNETS = [f"effnet-lite{v}" for v in available_variants()]


def test_list_backbones_names_every_family():
    names = list_backbones()
    for expected in ("clip:", "timm:", "effnet-lite0", *TINY_BACKBONES):
        assert expected in names


@pytest.mark.parametrize("name", [*TINY_BACKBONES, *EFFNETS])
def test_registered_backbone_builds_and_encodes(name):
    backbone = create_backbone(name)
    assert isinstance(backbone, Backbone) and backbone.name == name
    size = backbone.preprocess.image_size
    images = torch.rand(2, 3, size, size)
    features = backbone.encode(images)
    assert features.shape == (2, backbone.feature_dim) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # forward is differentiable (what fine-tuning needs); encode is not
    out = backbone(images)
    out.sum().backward()
    assert any(p.grad is not None for p in backbone.model.parameters())
    inter = backbone.forward_intermediates(images, [0, -1])
    assert len(inter) == 2 and all(t.ndim == 2 and t.shape[0] == 2 for t in inter)
    # its transform brings any uint8 picture to the model's square input
    array = np.random.default_rng(0).integers(0, 256, (size + 13, size * 2, 3), dtype=np.uint8)
    assert backbone.transform()(image=array)["image"].shape == (size, size, 3)
    assert backbone.weights_id


def test_unknown_names_and_tags_fail_clearly():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("nope:thing")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_backbone("timm:not_a_model_xyz")
    with pytest.raises(ValueError, match="neither a local checkpoint file nor an open_clip tag"):
        create_backbone("clip:tiny-vit", pretrained="no_such_tag")  # never touches the network


def _assert_same_outputs(a: Backbone, b: Backbone):
    size = a.preprocess.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.encode(images), b.encode(images))


def test_clip_local_checkpoint_round_trips_with_module_prefix(tmp_path):
    import open_clip

    from detector.backbones.clip import register_project_configs

    register_project_configs()
    whole = open_clip.create_model("tiny-vit", pretrained=None)
    # a DataParallel-style checkpoint of the whole CLIP model, as a torch file
    wrapped = {"state_dict": {f"module.{k}": v for k, v in whole.state_dict().items()}}
    torch.save(wrapped, tmp_path / "clip.pt")
    loaded = create_backbone("clip:tiny-vit", pretrained=tmp_path / "clip.pt")
    reference = create_backbone("clip:tiny-vit")
    reference.model.load_state_dict(whole.visual.state_dict())
    _assert_same_outputs(loaded, reference)
    # and the image tower alone, as safetensors; weights_id follows the file
    save_state_dict(whole.visual, tmp_path / "visual.safetensors")
    again = create_backbone("clip:tiny-vit", pretrained=str(tmp_path / "visual.safetensors"))
    _assert_same_outputs(again, reference)
    assert again.weights_id.startswith("file:") and again.weights_id != loaded.weights_id


def test_shape_mismatch_names_the_tensor(tmp_path):
    backbone = create_backbone("clip:tiny-vit")
    state = dict(backbone.model.state_dict())
    state["proj"] = torch.zeros(64, 16)
    save_state_dict(state, tmp_path / "bad.safetensors")
    with pytest.raises(BackboneWeightsError, match=r"proj: checkpoint \(64, 16\) vs model \(64, 32\)"):
        create_backbone("clip:tiny-vit", pretrained=tmp_path / "bad.safetensors")
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_backbone("timm:test_vit", pretrained=tmp_path / "missing.safetensors")


def test_timm_local_checkpoint_round_trips(tmp_path):
    source = create_backbone("timm:test_efficientnet")
    torch.save({f"module.{k}": v for k, v in source.model.state_dict().items()}, tmp_path / "m.pth")
    loaded = create_backbone("timm:test_efficientnet", pretrained=tmp_path / "m.pth")
    _assert_same_outputs(source, loaded)


def test_hugging_face_clip_checkpoint_maps_onto_open_clip(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModelWithProjection(config).eval()
    save_state_dict(hf, tmp_path / "hf.safetensors")
    ours = create_backbone("clip:tiny-vit", pretrained=tmp_path / "hf.safetensors")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=ours.normalize(images)).image_embeds
    torch.testing.assert_close(ours.encode(images), expected, atol=1e-5, rtol=1e-4)


def test_effnet_lite0_weights_are_real_imagenet_weights():
    """The bundled chelsea photo is a cat: ImageNet classes 281-285 (tabby ... Egyptian cat)."""
    from skimage import data

    backbone = create_backbone("effnet-lite0")
    assert backbone.weights_id.startswith("pkg:")
    image = backbone.transform()(image=data.chelsea())["image"]
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    probs = backbone.classify(x).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285
    assert float(probs[281:286].sum()) > 0.5
