"""Choose Effort's target weights by module-name pattern, wrap them, regularise them, merge them.

One entry point for every layout: open_clip's ``nn.MultiheadAttention`` (packed ``in_proj_weight``
split into q, k and v, plus ``out_proj``), timm ViTs (``attn.qkv`` split in three, ``attn.proj``),
HF-style separate ``q_proj/k_proj/v_proj/out_proj`` Linears, and convolutions (the EfficientNet
analogue: pointwise 1x1 convs, whose weight is a linear map over channels).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.utils.parametrize as parametrize
from torch import Tensor, nn

from detector.effort.residual import EffortError, EffortResidual

_ATTN_PARENTS = re.compile(r"(^|\.)(attn|attention|self_attn|self_attention)(\.output)?$")
_ATTN_LEAVES = {"qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "query", "key", "value", "dense"}
_PACKED_LEAVES = {"qkv": 3, "in_proj": 3}


def _split(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition(".")
    return parent, leaf


def _is_attention(name: str, module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    parent, leaf = _split(name)
    return isinstance(module, nn.Linear) and leaf in _ATTN_LEAVES and bool(_ATTN_PARENTS.search(parent))


def _is_pointwise(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _is_mlp(name: str, module: nn.Module) -> bool:
    parent, _ = _split(name)
    return isinstance(module, nn.Linear) and _split(parent)[1] in ("mlp", "ffn", "feed_forward")


#: Named target sets. Anything else in ``targets`` is a regular expression searched in module names.
PRESETS: dict[str, Callable[[str, nn.Module], bool]] = {
    "attention": _is_attention,
    "pointwise": _is_pointwise,
    "mlp": _is_mlp,
    "linear": lambda name, module: isinstance(module, nn.Linear),
}


@dataclass
class EffortTarget:
    """One wrapped weight: ``module.<tensor_name>`` is now ``original + residual.delta()``."""

    name: str
    module: nn.Module
    tensor_name: str
    residual: EffortResidual

    @property
    def original(self) -> Tensor:
        return self.module.parametrizations[self.tensor_name].original

    def orthogonality(self) -> Tensor:
        return self.residual.orthogonality()

    def energy_gap(self) -> Tensor:
        return self.residual.energy_gap(self.original)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.residual.parameters())


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _tensors_of(name: str, module: nn.Module) -> list[tuple[str, int]]:
    """Which tensors of a matched module get a residual, and into how many row blocks each splits."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            return [("in_proj_weight", 3)]
        return [("q_proj_weight", 1), ("k_proj_weight", 1), ("v_proj_weight", 1)]
    return [("weight", _PACKED_LEAVES.get(_split(name)[1], 1))]


def select_targets(model: nn.Module, targets: Sequence[str] | str) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` matched by any entry of ``targets`` (preset names or regexes)."""
    entries = [targets] if isinstance(targets, str) else list(targets)
    if not entries:
        raise EffortError("Effort needs at least one target (a preset name or a module-name regex)")
    predicates: list[Callable[[str, nn.Module], bool]] = []
    for entry in entries:
        if entry in PRESETS:
            predicates.append(PRESETS[entry])
        else:
            try:
                pattern = re.compile(entry)
            except re.error as exc:
                raise EffortError(
                    f"Effort target {entry!r} is neither a preset {sorted(PRESETS)} nor a regex: {exc}"
                ) from None
            predicates.append(lambda name, module, p=pattern: bool(p.search(name)) and _supported(module))
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if name and not parametrize.is_parametrized(module) and any(pred(name, module) for pred in predicates)
    ]
    if not chosen:
        raise EffortError(f"no module of {type(model).__name__} matches Effort targets {entries}")
    return chosen


def apply_effort(
    model: nn.Module,
    targets: Sequence[str] | str = ("attention",),
    rank: int = 1,
    keep_basis: bool = False,
    freeze: bool = True,
) -> list[EffortTarget]:
    """Wrap the target weights of ``model`` in place; return the wrapped targets.

    ``rank`` is the residual rank k (trainable trailing triplets per matrix; capped at the matrix's
    rank). With ``freeze`` every existing parameter of ``model`` is frozen first, so only the residual
    factors train (heads live outside ``model``). ``keep_basis`` keeps the principal singular bases
    needed by the orthogonality loss. The model's outputs are unchanged (up to rounding) at step 0.
    """
    if rank < 1:
        raise EffortError(f"Effort residual rank must be >= 1, got {rank}")
    if freeze:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    wrapped: list[EffortTarget] = []
    for name, module in select_targets(model, targets):
        for tensor_name, blocks in _tensors_of(name, module):
            weight = getattr(module, tensor_name)
            residual = EffortResidual(weight, k=rank, blocks=blocks, keep_basis=keep_basis)
            parametrize.register_parametrization(module, tensor_name, residual)
            module.parametrizations[tensor_name].original.requires_grad_(False)
            wrapped.append(EffortTarget(name, module, tensor_name, residual))
    return wrapped


def effort_targets(model: nn.Module) -> list[EffortTarget]:
    """The Effort targets already applied to ``model`` (e.g. after a state-dict reload)."""
    found = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, EffortResidual):
                    found.append(EffortTarget(name, module, tensor_name, p))
    return found


def effort_regularisers(targets: Iterable[EffortTarget]) -> tuple[Tensor, Tensor]:
    """``(L_orth, L_ksv)`` summed over ``targets``."""
    targets = list(targets)
    if not targets:
        zero = torch.zeros(())
        return zero, zero
    orth = sum(t.orthogonality() for t in targets)
    ksv = sum(t.energy_gap() for t in targets)
    return orth, ksv  # type: ignore[return-value]


def merge_effort(model: nn.Module) -> int:
    """Fold every Effort residual of ``model`` into a plain weight, in place; returns how many.

    The merged model has exactly the original architecture (class, parameter names and shapes): it
    runs at the base model's speed and its state dict loads into the untouched model.
    """
    merged = 0
    for target in effort_targets(model):
        parametrize.remove_parametrizations(target.module, target.tensor_name, leave_parametrized=True)
        merged += 1
    return merged


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
