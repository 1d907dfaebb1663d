"""Checkpoints: safetensors weights + the config + calibration + a model card, each written atomically.

A finished run's folder holds::

    model.safetensors   merged weights (backbone architecture untouched + heads): plain tensors, no pickle
    config.yaml         the TrainConfig it ran with (``detector train --config`` reproduces it)
    calibration.json    temperature / isotonic map and the validation-chosen threshold
    model_card.json     backbone, method, data, metrics (written last: its presence marks completion)
    MODEL_CARD.md       the same for people
    train_state/        what ``--resume`` needs (current and best unmerged weights, optimizer, progress)
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from detector.calibration import Calibrator
from detector.config import load_config, save_config
from detector.errors import DetectorError
from detector.io import atomic_write_bytes, atomic_write_text
from detector.training.config import TrainConfig

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
STATE_DIR = "train_state"


class CheckpointError(DetectorError, ValueError):
    """A checkpoint folder is missing a file or does not fit the model it is loaded into."""


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safe for safetensors (contiguous, CPU, no shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    from detector.io.tensors import check_safetensors_header

    try:
        check_safetensors_header(path)
        return st_load(path.read_bytes())
    except Exception as exc:  # safetensors raises its own types for corrupt files
        raise CheckpointError(f"{path}: unreadable weights file ({exc})") from None


def save_checkpoint(
    folder: str | Path,
    detector: torch.nn.Module,
    config: TrainConfig,
    calibrator: Calibrator,
    card: dict[str, Any],
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / WEIGHTS, tensors_of(detector), {"format": "detector/v1"})
    save_config(config, folder / "config.yaml")
    atomic_write_text(folder / "calibration.json", json.dumps(calibrator.to_dict(), indent=2) + "\n")
    atomic_write_text(folder / "MODEL_CARD.md", render_card(card))
    atomic_write_text(folder / CARD, json.dumps(card, indent=2, default=str) + "\n")
    return folder


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """``(detector, config, calibrator, card)`` from a finished run folder (weights read as safetensors)."""
    from detector.training.model import RealFakeModel, create_backbone

    folder = Path(folder)
    for name in (WEIGHTS, "config.yaml", "calibration.json", CARD):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a finished checkpoint: {name} is missing")
    config = load_config(TrainConfig, folder / "config.yaml")
    card = json.loads((folder / CARD).read_text())
    calibrator = Calibrator.from_dict(json.loads((folder / "calibration.json").read_text()))
    detector = RealFakeModel(create_backbone(config.model, for_loading=True), card.get("generators") or [])
    try:
        detector.load_state_dict(read_tensors(folder / WEIGHTS), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / WEIGHTS} does not fit {config.model.backbone}: {exc}") from None
    return detector.to(device).eval(), config, calibrator, card


def save_train_state(folder: Path, detector, optimizer, scheduler, progress: dict, best=None) -> None:
    """Everything ``--resume`` needs; ``best`` is the best epoch's weights (written when it changes)."""
    state_dir = folder / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    write_tensors(state_dir / "model.safetensors", tensors_of(detector))
    if best is not None:
        write_tensors(state_dir / "best.safetensors", best)
    buffer = io.BytesIO()
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        buffer,
    )
    atomic_write_bytes(state_dir / "optimizer.pt", buffer.getvalue())
    atomic_write_text(state_dir / "progress.json", json.dumps(progress, indent=2) + "\n")


def load_train_state(folder: Path) -> dict[str, Any] | None:
    """The saved training state, or None when there is nothing to resume."""
    state_dir = folder / STATE_DIR
    if not (state_dir / "progress.json").is_file():
        return None
    # weights_only: optimizer state is tensors and numbers; never unpickle arbitrary objects.
    optim = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    best_path = state_dir / "best.safetensors"
    return {
        "model": read_tensors(state_dir / "model.safetensors"),
        "best": read_tensors(best_path) if best_path.is_file() else None,
        "progress": json.loads((state_dir / "progress.json").read_text()),
        **optim,
    }


def render_card(card: dict[str, Any]) -> str:
    """The model card as markdown."""
    metrics = card.get("metrics", {})
    lines = [
        f"# Detector checkpoint: {card.get('method')} on {card.get('backbone')}",
        "",
        f"- backbone: `{card.get('backbone')}` (weights `{card.get('weights_id')}`)",
        f"- method: `{card.get('method')}`, targets {card.get('targets') or '-'}",
        f"- trainable parameters: {card.get('trainable_parameters'):,} of {card.get('total_parameters'):,}",
        f"- input size: {card.get('image_size')}",
        f"- training data: `{card.get('data', {}).get('corpus')}`; "
        f"train {card.get('data', {}).get('train_images')} images, val {card.get('data', {}).get('val_images')}",
        f"- generators seen in training: {', '.join(card.get('data', {}).get('train_generators', [])) or '-'}",
        f"- epochs run: {card.get('epochs_run')} (best epoch {card.get('best_epoch')})",
        "",
        "## Validation metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key, value in metrics.items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += [
        "",
        "Calibration and threshold were fit on the validation split (never on test). "
        "Weights are merged: the model runs at the base backbone's cost.",
        "",
    ]
    return "\n".join(lines)
