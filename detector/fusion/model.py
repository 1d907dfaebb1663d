"""Fusion of passive branch scores into one calibrated P(AI-generated).

A logistic regression (scikit-learn) on the branch scores, fitted on validation data. Branches can be
missing for an image (inversion switched off, a branch that failed): instead of imputing a value the
model never saw, the fusion fits one small logistic regression for *every* subset of branches, on the
validation rows where that subset is present, and scores each image with the model of exactly the
branches it has (falling back to the largest fitted subset of them, then to the validation base rate).
With B branches that is 2^B - 1 models of B+1 numbers each: nothing for B <= 6.

More branches are not always better: a branch that separates the validation photos may not transfer to
other photos (RIGID's embedding stability depends on content). Given the validation rows' *groups*
(source photo, generator batch), the fit also scores every subset by grouped cross-validation (log loss
on held-out groups) and an image is then scored with the best-scoring subset among the branches it has,
not simply the largest. Without groups the largest subset is used.

Scores that look like probabilities on the validation set (all in [0, 1]) are mapped to logits first,
where a linear model suits them; every input is then standardised with the validation mean/std. The
model is stored as safetensors (coefficients) with a JSON header (branch names, transforms, config): no
pickle.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.calibration import sigmoid
from detector.errors import DetectorError
from detector.io.tensors import load_format, save_arrays

FORMAT = "detector.fusion/1"
_EPS = 1e-6


class FusionError(DetectorError, ValueError):
    """The fusion model cannot be fitted, loaded or applied as asked."""


@dataclass
class FusionConfig:
    """How branch scores become one p_ai, and how p_ai becomes a verdict."""

    C: float = 1.0  # inverse L2 strength of each logistic regression
    min_rows: int = 20  # fewest validation rows (with both classes) to fit a branch subset
    threshold: float = 0.5  # p_ai above which an image is called AI-generated
    uncertain_band: float = 0.1  # p_ai within threshold +- band is "uncertain"
    watermark_fpr: float = 1e-6  # a watermark counts as found when its p-value is at most this
    max_watermark_log_lr: float = 30.0  # cap on the log-likelihood ratio a found watermark adds
    #: When set, ``fit`` moves ``threshold`` so that this share of the validation reals scores above it
    #: (chosen on validation photos, never on test; the uncertain band stays around it).
    target_fpr: float | None = None
    c2pa_log_lr: float = 13.8  # log-LR a trusted, valid C2PA manifest declaring AI adds (ln 1e6)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise FusionError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.uncertain_band < min(self.threshold, 1 - self.threshold):
            raise FusionError(f"uncertain_band must be in [0, {min(self.threshold, 1 - self.threshold)})")
        if not 0.0 < self.watermark_fpr < 1.0:
            raise FusionError(f"watermark_fpr must be in (0, 1), got {self.watermark_fpr}")
        if self.target_fpr is not None and not 0.0 < self.target_fpr < 1.0:
            raise FusionError(f"target_fpr must be in (0, 1), got {self.target_fpr}")


def _key(subset: Sequence[str]) -> str:
    return "+".join(subset)


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


class FusionModel:
    """Per-branch-subset logistic regressions over standardised branch scores."""

    def __init__(self, config: FusionConfig | None = None):
        self.config = config or FusionConfig()
        self.branches: list[str] = []
        self.transforms: dict[str, str] = {}  # branch -> "logit" | "identity"
        self.mean: dict[str, float] = {}
        self.std: dict[str, float] = {}
        self.models: dict[str, tuple[np.ndarray, float]] = {}  # subset key -> (coef, intercept)
        self.cv_loss: dict[str, float] = {}  # subset key -> grouped-CV log loss (lower is better)
        self.base_rate = 0.5
        self.metadata: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.branches)

    # ------------------------------------------------------------------ inputs
    def _matrix(self, scores: Mapping[str, Sequence[float | None]], n: int | None = None) -> np.ndarray:
        """N x B matrix of transformed, standardised scores; NaN where a branch is missing."""
        unknown = sorted(set(scores) - set(self.branches))
        if unknown:
            raise FusionError(f"unknown branch(es) {unknown}; the fusion knows {self.branches}")
        lengths = {len(v) for v in scores.values()}
        if len(lengths) > 1:
            raise FusionError(f"branch score lists differ in length: {sorted(lengths)}")
        n = lengths.pop() if lengths else (n or 0)
        out = np.full((n, len(self.branches)), np.nan)
        for j, name in enumerate(self.branches):
            if name not in scores:
                continue
            raw = np.array([np.nan if v is None else float(v) for v in scores[name]], dtype=np.float64)
            raw[~np.isfinite(raw)] = np.nan
            values = logit(raw) if self.transforms.get(name) == "logit" else raw
            if self.std:
                values = (values - self.mean[name]) / self.std[name]
            out[:, j] = np.where(np.isnan(raw), np.nan, values)
        return out

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        scores: Mapping[str, Sequence[float | None]],
        labels: Sequence[int],
        groups: Sequence[str] | None = None,
    ) -> FusionModel:
        """Fit on validation scores per branch (None/NaN = missing) and labels (1 = AI-generated, 0 = real).

        ``groups`` (one per row: the source photo or generator batch) turns on the choice of branch
        subset by grouped cross-validation (see the module docstring)."""

        y = np.asarray(labels, dtype=np.int64)
        if set(np.unique(y)) - {0, 1} or len(np.unique(y)) < 2:
            raise FusionError("labels must be 0 (real) / 1 (AI-generated) and contain both classes")
        if not scores:
            raise FusionError("no branch scores to fuse")
        self.branches = sorted(scores)
        self.transforms, self.mean, self.std, self.models, self.cv_loss = {}, {}, {}, {}, {}
        for name in self.branches:
            raw = np.array([np.nan if v is None else float(v) for v in scores[name]], dtype=np.float64)
            present = raw[np.isfinite(raw)]
            if len(present) == 0:
                raise FusionError(f"branch {name!r} has no score on any validation row")
            self.transforms[name] = "logit" if present.min() >= 0.0 and present.max() <= 1.0 else "identity"
        x = self._matrix(scores)
        if len(x) != len(y):
            raise FusionError(f"{len(x)} score rows for {len(y)} labels")
        for j, name in enumerate(self.branches):
            col = x[:, j][~np.isnan(x[:, j])]
            self.mean[name] = float(col.mean())
            self.std[name] = float(col.std()) if col.std() > 1e-12 else 1.0
        x = (x - np.array([self.mean[b] for b in self.branches])) / np.array(
            [self.std[b] for b in self.branches]
        )
        self.base_rate = float(y.mean())
        for size in range(1, len(self.branches) + 1):
            for subset in itertools.combinations(range(len(self.branches)), size):
                rows = ~np.isnan(x[:, subset]).any(axis=1)
                if rows.sum() < self.config.min_rows or len(np.unique(y[rows])) < 2:
                    continue
                model = self._regression(x[rows][:, subset], y[rows])
                names = [self.branches[i] for i in subset]
                self.models[_key(names)] = (model.coef_[0].astype(np.float64), float(model.intercept_[0]))
                if groups is not None:
                    loss = self._grouped_cv_loss(x[rows][:, subset], y[rows], np.asarray(groups)[rows])
                    if loss is not None:
                        self.cv_loss[_key(names)] = loss
        if not self.models:
            raise FusionError(
                f"no branch subset had {self.config.min_rows} validation rows with both classes"
            )
        if self.config.target_fpr is not None:
            self._fit_threshold(self.predict_proba(scores)[y == 0])
        return self

    def _fit_threshold(self, real_p: np.ndarray) -> None:
        """The decision threshold at ``target_fpr`` on the validation reals, kept inside the band's room."""
        band = self.config.uncertain_band
        t = float(np.quantile(real_p, 1.0 - self.config.target_fpr)) if len(real_p) else 0.5
        self.config = dataclasses.replace(
            self.config, threshold=float(np.clip(t, band + 1e-3, 1 - band - 1e-3))
        )

    def _regression(self, x: np.ndarray, y: np.ndarray):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.config.C, max_iter=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(x, y)

    def _grouped_cv_loss(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float | None:
        """Mean log loss on held-out groups (leave-one-group-out up to 10 folds). None when the rows cannot
        say whether a subset transfers: fewer than two groups of either class (with one real photo, the
        folds that hold it out have no real to train on, and the rest never test a new photo)."""
        from sklearn.model_selection import GroupKFold

        n_groups = len(np.unique(groups))
        if min(len(np.unique(groups[y == 0])), len(np.unique(groups[y == 1]))) < 2:
            return None
        losses = []
        for train, held in GroupKFold(n_splits=min(10, n_groups)).split(x, y, groups):
            if len(np.unique(y[train])) < 2:
                continue
            model = self._regression(x[train], y[train])
            p = np.clip(model.predict_proba(x[held])[:, 1], _EPS, 1 - _EPS)
            losses.append(-(y[held] * np.log(p) + (1 - y[held]) * np.log1p(-p)))
        return float(np.concatenate(losses).mean()) if losses else None

    # ------------------------------------------------------------------ scoring
    def _model_for(self, present: tuple[str, ...]) -> tuple[list[str], np.ndarray, float] | None:
        """The model for an image with branches ``present``: the fitted subset of them with the lowest
        grouped-CV loss when the fit had groups, else the largest fitted subset."""
        candidates = [
            subset
            for size in range(len(present), 0, -1)
            for subset in itertools.combinations(present, size)
            if _key(subset) in self.models
        ]
        if not candidates:
            return None
        scored = [c for c in candidates if _key(c) in self.cv_loss]
        best = min(scored, key=lambda c: self.cv_loss[_key(c)]) if scored else candidates[0]
        coef, intercept = self.models[_key(best)]
        return list(best), coef, intercept

    def predict_logit(self, scores: Mapping[str, Sequence[float | None]], n: int | None = None) -> np.ndarray:
        """Fused log-odds per row; rows with no usable branch get the validation base rate."""
        if not self.fitted:
            raise FusionError("the fusion model is not fitted")
        x = self._matrix(scores, n)
        out = np.full(len(x), float(logit(self.base_rate)))
        patterns: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(x):
            present = tuple(b for b, v in zip(self.branches, row, strict=True) if not np.isnan(v))
            patterns.setdefault(present, []).append(i)
        for present, rows in patterns.items():
            chosen = self._model_for(present)
            if chosen is None:
                continue
            names, coef, intercept = chosen
            cols = [self.branches.index(b) for b in names]
            out[rows] = x[np.ix_(rows, cols)] @ coef + intercept
        return out

    def predict_proba(self, scores: Mapping[str, Sequence[float | None]], n: int | None = None) -> np.ndarray:
        return sigmoid(self.predict_logit(scores, n))

    def predict_one(self, scores: Mapping[str, float | None]) -> float:
        return float(self.predict_proba({k: [v] for k, v in scores.items()}, n=1)[0])

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        if not self.fitted:
            raise FusionError("the fusion model is not fitted")
        arrays = {}
        for key, (coef, intercept) in self.models.items():
            arrays[f"coef/{key}"] = np.ascontiguousarray(coef)
            arrays[f"intercept/{key}"] = np.array([intercept])
        meta = {
            "format": FORMAT,
            "branches": self.branches,
            "transforms": self.transforms,
            "mean": self.mean,
            "std": self.std,
            "base_rate": self.base_rate,
            "subsets": sorted(self.models),
            "cv_loss": self.cv_loss,
            "config": asdict(self.config),
            "metadata": self.metadata,
        }
        return save_arrays(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> FusionModel:
        path = Path(path)
        arrays, meta = load_format(path, FORMAT, FusionError, "fusion model")
        model = cls(FusionConfig(**meta["config"]))
        model.branches = list(meta["branches"])
        model.transforms = dict(meta["transforms"])
        model.mean = {k: float(v) for k, v in meta["mean"].items()}
        model.std = {k: float(v) for k, v in meta["std"].items()}
        model.base_rate = float(meta["base_rate"])
        model.metadata = dict(meta.get("metadata", {}))
        model.cv_loss = {k: float(v) for k, v in meta.get("cv_loss", {}).items()}
        for key in meta["subsets"]:
            try:
                model.models[key] = (
                    arrays[f"coef/{key}"].astype(np.float64),
                    float(arrays[f"intercept/{key}"][0]),
                )
            except KeyError:
                raise FusionError(f"{path}: coefficients for branch subset {key!r} are missing") from None
        return model

    def describe(self) -> dict[str, Any]:
        """Human-readable coefficients (per standardised branch score) of every fitted subset."""
        chosen = self._model_for(tuple(self.branches))
        return {
            key: {"intercept": intercept, **dict(zip(key.split("+"), map(float, coef), strict=True))}
            | ({"cv_log_loss": self.cv_loss[key]} if key in self.cv_loss else {})
            for key, (coef, intercept) in self.models.items()
        } | {
            "base_rate": self.base_rate,
            "threshold": self.config.threshold,
            "used_with_every_branch": _key(chosen[0]) if chosen else None,
        }


def watermark_log_lr(p_value: float | None, config: FusionConfig) -> float:
    """Log-likelihood ratio a found watermark adds to the passive log-odds: log(1 / p_value), capped.

    P(this match | not watermarked) is the p-value; P(this match | watermarked) is at most 1, so 1/p is
    an upper bound on the evidence, and the cap keeps one decoder from outvoting everything by 1e-300."""
    if p_value is None or not math.isfinite(p_value):
        return 0.0
    return float(min(-math.log(max(p_value, 1e-300)), config.max_watermark_log_lr))
