"""ROC curves and reliability diagrams as PNGs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.io import atomic_write_bytes
from detector.metrics import auc, reliability_bins


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "") -> None:
    """One ROC curve per entry (targets, scores); log-scaled FPR axis shows the low-FPR regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (y, s) in curves.items():
        if len(set(np.asarray(y).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(
            np.maximum(fpr, 1e-4),
            tpr,
            label=f"{name} (AUC {auc(y, s):.3f})",
            lw=1.5 if name == "clean" else 1,
        )
    chance = np.logspace(-4, 0, 200)
    ax.plot(chance, chance, "k:", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (real flagged as fake)")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title or "ROC")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_reliability(targets, probs_by_name: dict[str, np.ndarray], path: Path, bins: int = 10) -> None:
    """Observed fake rate against mean predicted P(fake) per bin, for raw and calibrated scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detector.metrics import expected_calibration_error

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    for name, probs in probs_by_name.items():
        r = reliability_bins(targets, probs, bins)
        filled = r["count"] > 0
        ece = expected_calibration_error(targets, probs, bins)
        ax.plot(r["confidence"][filled], r["frequency"][filled], "o-", ms=4, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("mean predicted P(fake)")
    ax.set_ylabel("observed fake rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Reliability")
    _save(fig, path)
