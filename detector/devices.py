"""Device names as the CLI and the library take them: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto``."""

from __future__ import annotations

import torch

from detector.errors import DetectorError


class DeviceError(DetectorError, ValueError):
    """A device name torch does not know."""


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> the first GPU when there is one, else the CPU; any other name as torch spells it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None


__all__ = ["DeviceError", "resolve_device"]
