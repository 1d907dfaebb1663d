"""Metric tables: per-generator rows, the CSV files and the markdown report of ``detector eval``.

The metric functions themselves (AUC, TPR at a FPR, ECE...) are in :mod:`detector.metrics`; this module
turns them into tables a person reads.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.io import atomic_write_text
from detector.metrics import NAN, MetricsError, auc, average_precision, score_arrays

METRIC_COLUMNS = ("n", "n_fake", "auc", "ap", "acc_threshold", "acc_05", "tpr_fpr1", "tpr_fpr01", "ece")


def per_generator_table(
    targets, probs, generators: Sequence[str], threshold: float
) -> list[dict[str, float | str | int]]:
    """One row per generator: its fakes scored against *all* reals (AUC, AP), its detection rate at
    ``threshold``; the "real" row gives the true-negative rate."""
    y, p = score_arrays(targets, probs)
    names = np.asarray(list(generators), dtype=object)
    if names.shape != y.shape:
        raise MetricsError("one generator name per image is needed")
    real = y == 0
    rows: list[dict[str, float | str | int]] = []
    for name in sorted(set(names[~real].tolist())):
        mine = (names == name) & ~real
        keep = mine | real
        rows.append(
            {
                "generator": name,
                "n": int(mine.sum()),
                "auc": auc(y[keep], p[keep]),
                "ap": average_precision(y[keep], p[keep]),
                "detection_rate": float((p[mine] >= threshold).mean()),
            }
        )
    if real.any():
        rows.append(
            {
                "generator": "real",
                "n": int(real.sum()),
                "auc": NAN,
                "ap": NAN,
                "detection_rate": float((p[real] >= threshold).mean()),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """``rows`` as CSV with ``columns`` (floats to 6 significant digits), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def render_markdown(config, card, calibrator, rows, per_generator) -> str:
    """``metrics.md`` of ``detector eval``: the clean metrics, the perturbation grid, the per-generator rows."""
    perturbations = list(dict.fromkeys(r["perturbation"] for r in rows))
    lines = [
        f"# Evaluation of `{config.checkpoint}` on `{config.corpus}` (split {config.split})",
        "",
        f"Model: {card.get('method')} on {card.get('backbone')}; calibration {calibrator.method}, threshold "
        f"{calibrator.threshold:.4g} chosen on validation for FPR {calibrator.target_fpr}. "
        f"Seen generators: {', '.join(card.get('data', {}).get('train_generators', [])) or '-'}.",
        "",
        "## Clean",
        "",
        "| subset | n | fakes | AUC | AP | acc@thr | acc@0.5 | TPR@1%FPR | TPR@0.1%FPR | ECE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["perturbation"] == "clean":
            lines.append("| " + " | ".join(_fmt(r[k]) for k in ("subset", *METRIC_COLUMNS)) + " |")
    lines += ["", "## Perturbation grid (each perturbation a column)", ""]
    lines.append("| subset / metric | " + " | ".join(perturbations) + " |")
    lines.append("| --- |" + " --- |" * len(perturbations))
    for subset in ("all", "seen", "unseen"):
        for metric in ("auc", "acc_threshold"):
            values = {r["perturbation"]: r[metric] for r in rows if r["subset"] == subset}
            if values:
                cells = [_fmt(values.get(p, float("nan"))) for p in perturbations]
                lines.append(f"| {subset} {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per generator (clean)",
        "",
        "| generator | status | n | AUC vs all reals | detection rate |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in per_generator:
        if r["perturbation"] == "clean":
            lines.append(
                f"| {r['generator']} | {r['status']} | {r['n']} | {_fmt(r['auc'])} | {_fmt(r['detection_rate'])} |"
            )
    lines += ["", "Detection rate of the real row is its false-positive rate.", ""]
    return "\n".join(lines)
