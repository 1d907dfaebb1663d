"""The bundle's fitted diffusion-inversion branch (LaRE/DIRE-style) and how it is stored.

Statistics of a diffusion model's reconstruction error (:mod:`detector.features.inversion`) are turned
into one score by a logistic regression fitted on the *training* split, like the head. The diffusion
model is copied into the bundle when it is a small local folder (the benchmark zoo's DDPM), referenced by
path or hub id otherwise. The branch is one number per image (the adapter is
:func:`detector.scoring.branches.inversion_branch`); the fusion, fitted on validation, decides how much
it counts. RIGID, the other optional branch, is training-free and needs no file
(:func:`detector.scoring.branches.rigid_branch`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.errors import DetectorError
from detector.features.inversion import InversionConfig, InversionExtractor, load_diffusion_model
from detector.io.tensors import load_arrays, save_arrays

INVERSION_FILE = "inversion.safetensors"
INVERSION_MODEL_DIR = "inversion-model"
INVERSION_FORMAT = "detector.inversion-branch/1"
#: Local diffusion models up to this size are copied into the bundle; larger ones are referenced.
COPY_LIMIT_BYTES = 64 * 2**20


class BranchFitError(DetectorError, ValueError):
    """A bundle branch cannot be fitted or loaded as asked."""


class InversionBranch:
    """Diffusion-inversion statistics -> standardised -> logistic regression -> one log-odds score."""

    def __init__(self, model, config: InversionConfig, source: str):
        self.extractor = InversionExtractor(model, config)
        self.config = config
        self.source = source  # what the bundle records: a path relative to the bundle, or a hub id
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.fitted_on: dict[str, Any] = {}

    @classmethod
    def create(cls, source: str | Path, config: InversionConfig, device: str | torch.device = "cpu"):
        return cls(load_diffusion_model(source, device=device), config, str(source))

    @property
    def names(self) -> list[str]:
        return self.extractor.names

    @property
    def version(self) -> str:
        return f"{self.extractor.name}@{self.extractor.weights_id}"

    @torch.inference_mode()
    def features(self, images: list) -> np.ndarray:
        """``N x F`` inversion statistics of decoded RGB images (PIL or uint8 arrays)."""
        from detector.data import stack_images

        batch = stack_images(images, self.extractor.transform())
        return self.extractor.encode(batch).cpu().numpy().astype(np.float64)

    def fit(self, features: np.ndarray, targets: np.ndarray, C: float = 1.0) -> InversionBranch:
        """Logistic regression (1 = fake) on standardised statistics of the training split."""
        from sklearn.linear_model import LogisticRegression

        features = np.asarray(features, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.int64)
        if len(np.unique(targets)) < 2:
            raise BranchFitError("the inversion branch needs real and fake training images")
        ok = np.isfinite(features).all(axis=1)
        self.mean = features[ok].mean(0)
        self.std = np.where(features[ok].std(0) > 1e-12, features[ok].std(0), 1.0)
        model = LogisticRegression(C=C, max_iter=2000).fit((features[ok] - self.mean) / self.std, targets[ok])
        self.coef = model.coef_[0].astype(np.float64)
        self.intercept = float(model.intercept_[0])
        self.fitted_on = {"rows": int(ok.sum()), "fakes": int(targets[ok].sum())}
        return self

    def decision(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of "generated" per row (NaN where a statistic is not finite)."""
        if self.coef is None:
            raise BranchFitError("the inversion branch is not fitted")
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        return z @ self.coef + self.intercept

    def scores(self, images: list) -> list[float]:
        return [float(v) for v in self.decision(self.features(images))]

    # ------------------------------------------------------------------ storage
    def save(self, bundle: Path) -> Path:
        """Write the fitted head (and, for a small local model, a copy of the model) into ``bundle``."""
        if self.coef is None:
            raise BranchFitError("the inversion branch is not fitted")
        source = Path(self.source)
        reference = self.source
        if source.is_dir() and _folder_size(source) <= COPY_LIMIT_BYTES:
            target = bundle / INVERSION_MODEL_DIR
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)
            reference = INVERSION_MODEL_DIR
        elif source.exists():
            reference = str(source.resolve())
        meta = {
            "format": INVERSION_FORMAT,
            "model": reference,
            "model_weights_id": self.extractor.weights_id,
            "config": asdict(self.config),
            "names": self.names,
            "intercept": self.intercept,
            "fitted_on": self.fitted_on,
        }
        arrays = {"mean": self.mean, "std": self.std, "coef": self.coef}
        return save_arrays(bundle / INVERSION_FILE, arrays, meta)

    @classmethod
    def load(
        cls, bundle: Path, device: str | torch.device = "cpu", allow_external: bool = False
    ) -> InversionBranch:
        """The fitted branch of ``bundle``. Its diffusion model must be the copy inside the bundle unless
        ``allow_external`` (a hub id may reach the network, an outside folder is outside the bundle)."""
        path = bundle / INVERSION_FILE
        try:
            arrays, meta = load_arrays(path)
        except (FileNotFoundError, ValueError) as exc:
            raise BranchFitError(f"{path}: cannot read the inversion branch ({exc})") from None
        if meta.get("format") != INVERSION_FORMAT:
            raise BranchFitError(f"{path}: unsupported format {meta.get('format')!r}")
        reference = meta["model"]
        if not isinstance(reference, str) or not reference:
            raise BranchFitError(f"{path}: invalid diffusion model reference {reference!r}")
        from detector.bundle.safety import UnsafeBundle, confined_part

        try:
            source = confined_part(bundle, reference, "inversion model", kind="folder")
        except UnsafeBundle as exc:
            if not allow_external:
                raise BranchFitError(
                    f"{path}: its diffusion model {reference!r} is not a folder inside the bundle ({exc}); "
                    "load with allow_external=True to use an outside folder or a hub id"
                ) from None
            source = reference
        try:
            model = load_diffusion_model(source, device=device)
        except (OSError, ValueError) as exc:
            raise BranchFitError(f"{path}: cannot load its diffusion model {reference!r} ({exc})") from None
        branch = cls(model, InversionConfig(**meta["config"]), reference)
        if branch.names != list(meta["names"]):
            raise BranchFitError(
                f"{path}: the model gives statistics {branch.names}, the head was fitted on {meta['names']}"
            )
        branch.mean = arrays["mean"].astype(np.float64)
        branch.std = arrays["std"].astype(np.float64)
        branch.coef = arrays["coef"].astype(np.float64)
        branch.intercept = float(meta["intercept"])
        branch.fitted_on = dict(meta.get("fitted_on", {}))
        return branch


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
