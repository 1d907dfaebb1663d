"""Loading local checkpoints safely and forgivingly about key names, strictly about shapes.

Checkpoints come from many trainers: wrapped in ``{"state_dict": ...}``, saved from ``DataParallel``
(``module.`` prefixes), from a whole CLIP model when we want only its image tower (``visual.``), or in
Hugging Face's CLIP layout. We normalise names, never unpickle arbitrary objects (safetensors or
``torch.load(weights_only=True)``), and fail with a message naming every mismatched tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.errors import DetectorError

#: Wrapper keys trainers put around the real state dict.
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "ema", "state_dict_ema")
#: Prefixes added by wrappers (DataParallel, torch.compile, Lightning).
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


class BackboneError(DetectorError, ValueError):
    """A backbone cannot be built: an unknown name, variant or pretrained tag."""


class BackboneWeightsError(BackboneError):
    """A checkpoint cannot be loaded into a model; the message says which tensors and why."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from ``.safetensors`` or a torch file (``weights_only=True``: no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise BackboneWeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: {exc}); "
            "convert it to safetensors"
        ) from None
    return unwrap_state_dict(obj, where=str(path))


def unwrap_state_dict(obj, where: str = "checkpoint") -> dict[str, Tensor]:
    """Find the tensor mapping inside common wrappers (``{"state_dict": ...}`` and friends)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors:
                return tensors
        break
    raise BackboneWeightsError(f"{where}: no state dict (mapping of names to tensors) found")


def strip_prefixes(
    state: Mapping[str, Tensor], prefixes: Iterable[str] = _STRIP_PREFIXES
) -> dict[str, Tensor]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) present on every key."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def select_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the keys under ``prefix`` (e.g. ``visual.`` of a whole CLIP model), prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    where: str = "checkpoint",
    ignore_missing: Callable[[str], bool] | None = None,
    ignore_unexpected: Callable[[str], bool] | None = None,
) -> None:
    """Copy ``state`` into ``model`` after checking every name and shape; errors list all problems.

    ``ignore_missing``/``ignore_unexpected`` let a caller accept known differences (e.g. a classifier
    head absent from a feature-only checkpoint); everything else must match exactly.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (ignore_missing and ignore_missing(k))]
    unexpected = [k for k in state if k not in own and not (ignore_unexpected and ignore_unexpected(k))]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:10]))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:10]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:10]))
    if problems:
        raise BackboneWeightsError(f"{where} does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def save_state_dict(model_or_state: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write tensors as safetensors atomically (the project's checkpoint format)."""
    from safetensors.torch import save

    from detector.io import atomic_write_bytes

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors))
    return path
