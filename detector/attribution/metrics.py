"""Closed- and open-set attribution metrics, and the confusion-matrix picture.

Conventions: an *unknown score* is higher for samples more likely to come from an unknown generator;
``is_unknown`` marks samples whose generator was not among the known ones at training time; ``correct``
says whether the closed-set top-1 prediction of a known sample was right (ignored for unknowns).

OSCR (open-set classification rate, Dhamija et al. 2018) is the area under the curve traced by a
threshold on the unknown score: x = FPR, the share of unknown samples accepted; y = CCR, the share of
known samples that are accepted *and* correctly classified. Ties are accepted together (a straight
segment, as in ROC AUC). A perfect system scores the closed-set accuracy; chance rejection scores half
of it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.attribution.head import AttributionError
from detector.io import atomic_write_bytes


def closed_set_accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    return float((y_true == y_pred).mean())


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of per-generator F1 over ``labels`` (default: the generators in ``y_true``)."""
    from sklearn.metrics import f1_score

    if len(y_true) == 0:
        return float("nan")
    labels = sorted(set(y_true)) if labels is None else list(labels)
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def unknown_auroc(unknown_scores: Sequence[float], is_unknown: Sequence[bool]) -> float:
    """AUROC of the unknown score separating unknown (positive) from known samples."""
    from sklearn.metrics import roc_auc_score

    is_unknown = np.asarray(is_unknown, dtype=bool)
    if is_unknown.all() or not is_unknown.any():
        return float("nan")
    return float(roc_auc_score(is_unknown, np.asarray(unknown_scores, dtype=np.float64)))


def oscr_curve(
    unknown_scores: Sequence[float], is_unknown: Sequence[bool], correct: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, CCR) points from "accept nothing" (0, 0) to "accept everything" (1, closed-set accuracy)."""
    scores = np.asarray(unknown_scores, dtype=np.float64)
    unknown = np.asarray(is_unknown, dtype=bool)
    correct = np.asarray(correct, dtype=bool) & ~unknown
    n_known, n_unknown = int((~unknown).sum()), int(unknown.sum())
    if n_known == 0 or n_unknown == 0:
        raise AttributionError("OSCR needs both known and unknown samples")
    order = np.argsort(scores, kind="stable")  # most confidently known first
    scores, unknown, correct = scores[order], unknown[order], correct[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    fpr = np.r_[0.0, np.cumsum(unknown)[last_of_tie] / n_unknown]
    ccr = np.r_[0.0, np.cumsum(correct)[last_of_tie] / n_known]
    return fpr, ccr


def oscr(unknown_scores: Sequence[float], is_unknown: Sequence[bool], correct: Sequence[bool]) -> float:
    """Area under the CCR-vs-FPR curve (trapezoids; exact for a step curve without known/unknown ties)."""
    fpr, ccr = oscr_curve(unknown_scores, is_unknown, correct)
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2))


def ccr_at_fpr(
    unknown_scores: Sequence[float], is_unknown: Sequence[bool], correct: Sequence[bool], fpr: float = 0.05
) -> float:
    """The best CCR among thresholds that accept at most ``fpr`` of the unknown samples."""
    fprs, ccrs = oscr_curve(unknown_scores, is_unknown, correct)
    return float(ccrs[fprs <= fpr + 1e-12].max())


def open_set_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    unknown_scores: Sequence[float],
    known_classes: Sequence[str],
    rejected: Sequence[bool] | None = None,
) -> dict[str, float]:
    """Every attribution metric for one evaluation set.

    ``y_true`` holds true generator names (any name outside ``known_classes`` counts as unknown),
    ``y_pred`` the closed-set top-1 names, ``unknown_scores`` one score per row, ``rejected`` the head's
    threshold decisions (optional: adds the accepted-known and rejected-unknown rates at that threshold).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    known = np.isin(y_true, list(known_classes))
    report: dict[str, float] = {
        "n_known": int(known.sum()),
        "n_unknown": int((~known).sum()),
        "closed_set_accuracy": closed_set_accuracy(y_true[known], y_pred[known]),
        "macro_f1": macro_f1(list(y_true[known]), list(y_pred[known])),
    }
    scores = np.asarray(unknown_scores, dtype=np.float64)
    if known.any() and (~known).any():
        correct = y_true == y_pred
        report["unknown_auroc"] = unknown_auroc(scores, ~known)
        report["oscr"] = oscr(scores, ~known, correct)
        report["ccr_at_5fpr"] = ccr_at_fpr(scores, ~known, correct, 0.05)
    if rejected is not None:
        rejected = np.asarray(rejected, dtype=bool)
        if known.any():
            report["known_accepted"] = float((~rejected[known]).mean())
        if (~known).any():
            report["unknown_rejected"] = float(rejected[~known].mean())
    return report


def plot_confusion(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title="",
) -> Path:
    """Row-normalised confusion matrix as a PNG (rows: true generator, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    rows = sorted(set(y_true)) if labels is None else list(labels)
    cols = rows + sorted(set(y_pred) - set(rows))
    matrix = confusion_matrix(y_true, y_pred, labels=cols)[: len(rows)]
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    share = matrix / totals
    size = max(4.0, 0.6 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, max(3.5, 0.6 * len(rows) + 1.5)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_title(title or "attribution confusion matrix")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
