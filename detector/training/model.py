"""The trainable detector (backbone + heads) and how each method decides what trains.

Methods: ``linear-probe`` (frozen backbone, heads only), ``full-finetune`` (everything), ``lora``
(peft low-rank adapters on the targets) and ``effort`` (SVD residuals on the targets). After training,
:func:`finalize` folds LoRA/Effort back into plain weights, so every checkpoint is the untouched
backbone architecture plus heads and costs exactly the base model at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from detector.config import ConfigError
from detector.effort import apply_effort, effort_targets, merge_effort, select_targets
from detector.effort.apply import EffortTarget
from detector.training.config import METHODS, MethodConfig, ModelConfig


def create_backbone(config: ModelConfig, for_loading: bool = False) -> nn.Module:
    """Build the configured backbone through the registry. ``for_loading`` skips pretrained weights
    (a checkpoint will overwrite every tensor)."""
    from detector.backbones import create_backbone as registry_create

    if for_loading or (config.pretrained or "").lower() == "none":
        return registry_create(config.backbone, pretrained=None)
    if config.pretrained is None:
        return registry_create(config.backbone)
    return registry_create(config.backbone, pretrained=config.pretrained)


class RealFakeModel(nn.Module):
    """``forward(images in [0, 1])`` -> ``{"logit": B, "generator_logits": B x G (if a head)}``."""

    def __init__(self, backbone: nn.Module, generators: Sequence[str] | None = None):
        super().__init__()
        self.backbone = backbone
        dim = int(backbone.feature_dim)
        self.head = nn.Linear(dim, 1)
        self.generators = list(generators or [])
        self.generator_head = nn.Linear(dim, len(self.generators)) if len(self.generators) >= 2 else None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        out = {"logit": self.head(features.float()).squeeze(-1)}
        if self.generator_head is not None:
            out["generator_logits"] = self.generator_head(features.float())
        return out


@dataclass
class MethodState:
    """What :func:`prepare_method` did: the method, its Effort targets or LoRA wrapper, and counts."""

    name: str
    effort: list[EffortTarget] = field(default_factory=list)
    lora: object | None = None
    trainable: int = 0
    total: int = 0
    targets: list[str] = field(default_factory=list)


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Expand "auto" to attention projections when the model has any, else pointwise convolutions."""
    resolved: list[str] = []
    for entry in targets:
        if entry == "auto":
            try:
                select_targets(model, "attention")
                resolved.append("attention")
            except ValueError:
                resolved.append("pointwise")
        else:
            resolved.append(entry)
    return resolved


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def prepare_method(detector: RealFakeModel, config: MethodConfig) -> MethodState:
    """Set ``requires_grad`` (and wrap weights) for ``config.name``; heads always train."""
    if config.name not in METHODS:
        raise ConfigError(f"unknown method {config.name!r}; choose one of {METHODS}")
    model = detector.backbone.model
    state = MethodState(config.name)
    if config.name == "linear-probe":
        _freeze(detector.backbone)
    elif config.name == "full-finetune":
        for parameter in detector.backbone.parameters():
            parameter.requires_grad_(True)
    elif config.name == "effort":
        _freeze(detector.backbone)
        state.targets = resolve_targets(model, config.targets)
        keep_basis = config.orth_weight > 0
        state.effort = apply_effort(model, state.targets, rank=config.rank, keep_basis=keep_basis)
    elif config.name == "lora":
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        _freeze(detector.backbone)
        state.targets = resolve_targets(model, config.targets)
        names = [name for name, _ in select_targets(model, state.targets)]
        lora_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=names,
        )
        # Injects adapters into ``model`` in place; the wrapper is kept only to merge them later.
        state.lora = LoraModel(model, lora_config, "default")
    for parameter in (*detector.head.parameters(), *_head_params(detector)):
        parameter.requires_grad_(True)
    state.trainable = sum(p.numel() for p in detector.parameters() if p.requires_grad)
    state.total = sum(p.numel() for p in detector.parameters())
    return state


def _head_params(detector: RealFakeModel) -> list[nn.Parameter]:
    return list(detector.generator_head.parameters()) if detector.generator_head is not None else []


def set_train_mode(detector: RealFakeModel, method: str) -> None:
    """Train mode, except that methods which keep the backbone's knowledge also keep its
    normalisation statistics: BatchNorm running stats update only under full fine-tuning."""
    detector.train()
    if method != "full-finetune":
        for module in detector.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def method_regularisers(state: MethodState, orth_weight: float, ksv_weight: float) -> Tensor | None:
    """Effort's weighted ``orth_weight * L_orth + ksv_weight * L_ksv`` (None when both are off)."""
    if state.name != "effort" or not state.effort or (orth_weight <= 0 and ksv_weight <= 0):
        return None
    total = None
    if orth_weight > 0:
        total = orth_weight * sum(t.orthogonality() for t in state.effort)
    if ksv_weight > 0:
        ksv = ksv_weight * sum(t.energy_gap() for t in state.effort)
        total = ksv if total is None else total + ksv
    return total


def finalize(detector: RealFakeModel, state: MethodState) -> None:
    """Fold LoRA adapters / Effort residuals into plain weights (in place)."""
    if state.name == "effort" or effort_targets(detector.backbone.model):
        merge_effort(detector.backbone.model)
    if state.lora is not None:
        detector.backbone.model = state.lora.merge_and_unload()
        state.lora = None
