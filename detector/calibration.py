"""Calibration of a detector's logit into P(fake), and the decision threshold, both fit on validation.

Effort's published weak spot is calibration (high AUC, poor accuracy at 0.5: the best per-set
thresholds spread over 4e-5 .. 0.9999), so every checkpoint carries a calibrator fit on its
validation split: temperature scaling (one parameter, keeps the ranking) or isotonic regression
(scikit-learn, monotone, more flexible). The threshold is chosen on validation for a target
false-positive rate, never on test. Stored as plain JSON (no pickles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression

from detector.errors import DetectorError
from detector.metrics import expected_calibration_error, threshold_at_fpr


class CalibrationError(DetectorError, ValueError):
    """Calibration cannot be fitted or read: too few or one-sided validation scores, bad fields."""


Method = Literal["temperature", "isotonic", "none"]


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function in float64, exact in both tails (no ``1 - tiny`` cancellation)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # log(1 + exp(-|z|)) + max(z, 0) - y z: the stable binary cross-entropy with logits.
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


def fit_temperature(logits, targets) -> float:
    """The temperature T minimising the validation NLL of sigmoid(logit / T)."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    result = minimize_scalar(lambda t: _nll(z, y, float(np.exp(t))), bounds=(-6.0, 6.0), method="bounded")
    return float(np.exp(result.x))


@dataclass
class Calibrator:
    """Maps raw logits to calibrated P(fake); ``threshold`` applies to the calibrated probability."""

    method: Method = "none"
    temperature: float = 1.0
    iso_x: list[float] = field(default_factory=list)
    iso_y: list[float] = field(default_factory=list)
    threshold: float = 0.5
    target_fpr: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def __call__(self, logits) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            return sigmoid(z / self.temperature)
        if self.method == "isotonic":
            return np.interp(sigmoid(z), self.iso_x, self.iso_y)
        return sigmoid(z)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        """A calibrator from its saved form; anything else (an empty file, an unknown method, unknown or
        mistyped fields) is a ``ValueError`` rather than a silent default that changes the scores."""
        if not isinstance(data, dict) or data.get("method") not in ("temperature", "isotonic", "none"):
            raise CalibrationError(
                f"not a calibration record (need a 'method' of temperature/isotonic/none): {data!r:.80}"
            )
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CalibrationError(f"unknown calibration field(s) {unknown}")
        calibrator = cls(**data)
        if not np.isfinite(calibrator.temperature) or calibrator.temperature <= 0:
            raise CalibrationError(
                f"calibration temperature must be a positive number, got {calibrator.temperature!r}"
            )
        if len(calibrator.iso_x) != len(calibrator.iso_y) or (
            calibrator.method == "isotonic" and not calibrator.iso_x
        ):
            raise CalibrationError("isotonic calibration needs matching, non-empty iso_x and iso_y")
        return calibrator


def fit_calibrator(
    logits, targets, method: Method = "temperature", target_fpr: float | None = 0.05
) -> Calibrator:
    """Fit ``method`` on validation logits/targets, then pick the threshold on the calibrated
    validation scores for ``target_fpr`` (``None`` keeps 0.5). Records ECE before and after."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.int64).ravel()
    if z.shape != y.shape or not z.size:
        raise CalibrationError("calibration needs one target per logit and at least one image")
    if method not in ("temperature", "isotonic", "none"):
        raise CalibrationError(f"unknown calibration method {method!r}")
    calibrator = Calibrator(method=method)
    if method == "temperature":
        calibrator.temperature = fit_temperature(z, y)
    elif method == "isotonic":
        if y.min() == y.max():
            raise CalibrationError("isotonic calibration needs both real and fake validation images")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(sigmoid(z), y)
        calibrator.iso_x = [float(v) for v in iso.X_thresholds_]
        calibrator.iso_y = [float(v) for v in iso.y_thresholds_]
    probs = calibrator(z)
    calibrator.ece_before = expected_calibration_error(y, sigmoid(z))
    calibrator.ece_after = expected_calibration_error(y, probs)
    if target_fpr is not None:
        if not (y == 0).any():
            raise CalibrationError("choosing a threshold for a target FPR needs real validation images")
        calibrator.threshold = threshold_at_fpr(probs[y == 0], target_fpr)
        calibrator.target_fpr = float(target_fpr)
    return calibrator
