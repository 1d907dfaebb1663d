"""Effort (SVD residual adaptation) on every weight layout we support, with tiny random models."""

from __future__ import annotations

import pytest
import timm
import torch
from open_clip.model import _build_vision_tower
from torch import nn

from detector.effort import (
    apply_effort,
    count_trainable,
    effort_regularisers,
    effort_targets,
    merge_effort,
    select_targets,
)

TINY_CLIP = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32)


def tiny_clip(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _build_vision_tower(48, TINY_CLIP).eval()


class HFBlock(nn.Module):
    """HF-style attention: separate q/k/v/out Linears under ``self_attn``."""

    def __init__(self, d: int = 24):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(d, d))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        a = self.self_attn
        q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        x = x + a.out_proj(attn @ v)
        return x + self.mlp(x)


def _check_step0_grads_merge(model: nn.Module, x: torch.Tensor, targets, expected_targets: int):
    model.eval()
    with torch.no_grad():
        reference = model(x)
    wrapped = apply_effort(model, targets, rank=1)
    assert len(wrapped) == expected_targets
    with torch.no_grad():
        step0 = model(x)
    torch.testing.assert_close(step0, reference, atol=1e-5, rtol=0)

    # Only residual factors (and a head outside the model) receive gradients.
    head = nn.Linear(reference.shape[-1], 1)
    model.train()
    optimizer = torch.optim.SGD(
        [*(p for p in model.parameters() if p.requires_grad), *head.parameters()], lr=0.5
    )
    for _ in range(2):
        optimizer.zero_grad()
        head(model(x)).pow(2).mean().backward()
        optimizer.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "no residual got a gradient"
    assert all(n.rsplit(".", 1)[-1] in ("U_res", "S_res", "V_res") for n in with_grad), with_grad
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and "parametrizations" not in n]
    assert not frozen, frozen

    model.eval()
    with torch.no_grad():
        tuned = model(x)
    assert (tuned - reference).abs().max() > 1e-6, "training changed nothing"
    assert merge_effort(model) == expected_targets
    assert not effort_targets(model)
    with torch.no_grad():
        merged = model(x)
    torch.testing.assert_close(merged, tuned, atol=1e-5, rtol=1e-5)
    return model, merged


def test_open_clip_packed_in_proj_step0_grad_merge_and_reload():
    model = tiny_clip()
    x = torch.rand(2, 3, 32, 32)
    # 2 blocks x (packed in_proj split q/k/v + out_proj)
    model, merged = _check_step0_grads_merge(model, x, "attention", expected_targets=4)
    # The merged state dict is a plain one: it loads, strictly, into the untouched architecture.
    untouched = tiny_clip(seed=1)
    assert type(untouched.transformer.resblocks[0].attn) is nn.MultiheadAttention
    untouched.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(untouched(x), merged, atol=1e-6, rtol=0)


def test_packed_qkv_is_three_separate_decompositions():
    model = tiny_clip()
    wrapped = apply_effort(model, r"resblocks\.0\.attn$", rank=2)
    assert [t.tensor_name for t in wrapped] == ["in_proj_weight"]
    parts = wrapped[0].residual.parts
    assert len(parts) == 3 and all(p.U_res.shape == (64, 2) and p.V_res.shape == (64, 2) for p in parts)
    # Each block's residual is that block's own trailing singular triplets.
    original = tiny_clip().transformer.resblocks[0].attn.in_proj_weight.detach()
    for part, block in zip(parts, original.chunk(3), strict=True):
        s = torch.linalg.svdvals(block.double())
        torch.testing.assert_close(part.S_res.detach().double(), s[-2:], atol=1e-5, rtol=1e-4)


def test_timm_vit_qkv_split_and_proj():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=0)
    blocks = len(model.blocks)
    x = torch.rand(2, 3, 32, 32)
    _check_step0_grads_merge(model, x, "attention", expected_targets=2 * blocks)
    fresh = timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=0)
    wrapped = apply_effort(fresh, "attention")
    qkv = [t for t in wrapped if t.name.endswith("attn.qkv")]
    assert qkv and all(len(t.residual.parts) == 3 for t in qkv)


def test_hf_style_separate_projections():
    torch.manual_seed(0)
    model = HFBlock()
    x = torch.rand(2, 5, 24)
    _check_step0_grads_merge(model, x, "attention", expected_targets=4)


def test_pointwise_convs_of_efficientnet():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    x = torch.rand(2, 3, 32, 32)
    pointwise = [n for n, m in select_targets(model, "pointwise")]
    assert pointwise and all(isinstance(model.get_submodule(n), nn.Conv2d) for n in pointwise)
    assert all(model.get_submodule(n).kernel_size == (1, 1) for n in pointwise)
    _check_step0_grads_merge(model, x, "pointwise", expected_targets=len(pointwise))


def test_real_efficientnet_lite0_layout():
    """The architecture of our one pretrained backbone (random weights, a few of its 1x1 convs)."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    wrapped = apply_effort(model, [r"^blocks\.1\.0\.conv_(pw|pwl)$", r"^conv_head$"], rank=1)
    assert {t.name for t in wrapped} == {"blocks.1.0.conv_pw", "blocks.1.0.conv_pwl", "conv_head"}
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=0)
    # conv_head is 1280 x 320: one rank-1 residual = 1280 + 1 + 320 parameters.
    head = next(t for t in wrapped if t.name == "conv_head")
    assert head.trainable_parameters() == 1280 + 1 + 320


def test_vit_l14_trainable_parameter_count_matches_published():
    """ViT-L/14 (open_clip layout) on the meta device: 24 blocks x (q, k, v, out) = 96 matrices of
    1024 x 1024, rank-1 residual each (u: 1024, s: 1, v: 1024) = 196,704 ~ the published 0.19M."""
    with torch.device("meta"):
        tower = _build_vision_tower(768, dict(image_size=224, layers=24, width=1024, patch_size=14))
        head = nn.Linear(tower.output_dim, 1)
    wrapped = apply_effort(tower, "attention", rank=1)
    matrices = sum(len(t.residual.parts) for t in wrapped)
    assert matrices == 96
    analytic = 24 * 4 * (1024 + 1 + 1024)
    assert count_trainable(tower) == analytic == 196_704
    total = count_trainable(tower) + count_trainable(head)
    assert total == analytic + 768 + 1
    assert 0.19e6 <= total < 0.2e6


def test_rank_k_scales_and_is_checked():
    model = tiny_clip()
    apply_effort(model, r"resblocks\.0\.attn\.out_proj$", rank=3)
    assert count_trainable(model) == 3 * (64 + 1 + 64)
    with pytest.raises(ValueError, match="rank"):
        apply_effort(tiny_clip(), "attention", rank=0)
    with pytest.raises(ValueError, match="no module"):
        apply_effort(tiny_clip(), r"does_not_exist")


def test_regularisers_zero_at_init_and_match_definitions():
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    original = layer.weight.detach().clone()
    (target,) = apply_effort_linear(layer)
    orth, ksv = effort_regularisers([target])
    assert orth.item() < 1e-4 and ksv.item() < 1e-4
    with torch.no_grad():
        part = target.residual.parts[0]
        part.U_res.add_(0.3 * torch.randn_like(part.U_res))
        part.S_res.mul_(3.0)
    orth, ksv = effort_regularisers([target])
    # Brute force: the definitions from the paper, on the full matrices.
    w = layer.weight.detach().double()
    expected_ksv = abs(w.pow(2).sum() - original.double().pow(2).sum())
    torch.testing.assert_close(ksv.double(), expected_ksv, atol=1e-4, rtol=1e-4)
    u_full = torch.cat([part.U_main, part.U_res], 1).double()
    v_full = torch.cat([part.V_main, part.V_res], 1).double()
    expected_orth = sum(
        torch.linalg.norm(m.T @ m - torch.eye(m.shape[1], dtype=m.dtype)) for m in (u_full, v_full)
    )
    torch.testing.assert_close(orth.double(), expected_orth, atol=1e-3, rtol=1e-3)
    (orth + ksv).backward()
    assert part.U_res.grad is not None and part.S_res.grad is not None


def apply_effort_linear(layer: nn.Linear):
    holder = nn.Module()
    holder.proj = layer
    return apply_effort(holder, r"^proj$", rank=2, keep_basis=True)
