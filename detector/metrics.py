"""Detection metrics: AUC, AP, accuracy at a threshold, TPR at low FPR, ECE, per-generator table.

Scores are "probability the image is fake" (or any monotone score where higher means fake); targets
are 1 for fake, 0 for real. Metrics that need both classes return NaN when one is missing, so a
per-generator row on a one-class slice says "not defined" instead of crashing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from detector.errors import DetectorError


class MetricsError(DetectorError, ValueError):
    """A metric cannot be computed from these scores (no real images, mismatched lengths)."""


NAN = float("nan")


def score_arrays(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise MetricsError(f"targets ({y.shape}) and scores ({s.shape}) differ in length")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < y.sum() < y.size


def auc(targets, scores) -> float:
    y, s = score_arrays(targets, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else NAN


def average_precision(targets, scores) -> float:
    y, s = score_arrays(targets, scores)
    return float(average_precision_score(y, s)) if _both_classes(y) else NAN


def accuracy_at(targets, scores, threshold: float) -> float:
    """Accuracy of the rule "fake iff score >= threshold"."""
    y, s = score_arrays(targets, scores)
    return float(((s >= threshold).astype(np.int64) == y).mean()) if y.size else NAN


def tpr_at_fpr(targets, scores, fpr: float) -> float:
    """The highest true-positive rate reachable with false-positive rate <= ``fpr`` (ROC operating
    point, no interpolation: with few reals a tight FPR can only be met by flagging nothing)."""
    y, s = score_arrays(targets, scores)
    if not _both_classes(y):
        return NAN
    fprs, tprs, _ = roc_curve(y, s)
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def bootstrap_interval(
    targets, scores, metric, n: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(targets, scores)``, resampling reals and fakes apart
    (so every resample keeps the class sizes). With a few hundred test images, TPR at 1% FPR rests on
    the top one or two real scores: the interval shows how much of a difference is noise."""
    y, s = score_arrays(targets, scores)
    if not _both_classes(y):
        return NAN, NAN
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    values = []
    for _ in range(n):
        rows = np.concatenate([rng.choice(real, real.size), rng.choice(fake, fake.size)])
        values.append(metric(y[rows], s[rows]))
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def threshold_at_fpr(real_scores, fpr: float) -> float:
    """Smallest threshold t such that at most ``fpr`` of ``real_scores`` satisfy score >= t."""
    s = np.sort(np.asarray(real_scores, dtype=np.float64).ravel())[::-1]
    if not s.size:
        raise MetricsError("choosing a threshold for a target FPR needs real (negative) images")
    allowed = int(math.floor(fpr * s.size + 1e-9))
    if allowed >= s.size:
        return float(-np.inf)
    return float(np.nextafter(s[allowed], np.inf))


def reliability_bins(targets, probs, bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins over [0, 1] of the predicted P(fake): count, mean confidence, fake rate."""
    y, p = score_arrays(targets, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=bins) / count
        frequency = np.bincount(index, weights=y, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": confidence, "frequency": frequency}


def expected_calibration_error(targets, probs, bins: int = 15) -> float:
    """ECE of P(fake): sum over bins of (bin share) x |mean predicted P(fake) - observed fake rate|."""
    y, _ = score_arrays(targets, probs)
    if not y.size:
        return NAN
    r = reliability_bins(targets, probs, bins)
    filled = r["count"] > 0
    gaps = np.abs(r["confidence"][filled] - r["frequency"][filled])
    return float((r["count"][filled] / y.size * gaps).sum())


@dataclass
class DetectionMetrics:
    n: int
    n_fake: int
    auc: float
    ap: float
    acc_threshold: float
    acc_05: float
    tpr_fpr1: float
    tpr_fpr01: float
    ece: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def detection_metrics(targets, probs, threshold: float = 0.5, bins: int = 15) -> DetectionMetrics:
    """Every headline metric of a binary detector on one set of images."""
    y, p = score_arrays(targets, probs)
    return DetectionMetrics(
        n=int(y.size),
        n_fake=int(y.sum()),
        auc=auc(y, p),
        ap=average_precision(y, p),
        acc_threshold=accuracy_at(y, p, threshold),
        acc_05=accuracy_at(y, p, 0.5),
        tpr_fpr1=tpr_at_fpr(y, p, 0.01),
        tpr_fpr01=tpr_at_fpr(y, p, 0.001),
        ece=expected_calibration_error(y, p, bins),
        threshold=float(threshold),
    )
