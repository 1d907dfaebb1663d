"""``detector eval``: score a corpus split with a checkpoint, under every perturbation of the grid.

Probabilities are the checkpoint's calibrated P(fake); accuracy uses the threshold chosen on the
training run's validation split (never on what is evaluated here). Fake images are "seen" when their
generator was in the checkpoint's training split and "unseen" otherwise; both subsets are scored
against all real images. Writes ``metrics.csv`` (tidy: one row per perturbation x subset),
``per_generator.csv``, ``metrics.md`` (the grid with each perturbation as a column), ``roc.png``,
``reliability.png``, ``predictions.csv`` (clean scores per image) and ``eval_config.yaml``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.config import save_config
from detector.corpus import load_corpus
from detector.corpus.dataset import CorpusDataset
from detector.evaluation.perturbations import GRID, Chain, perturbation
from detector.io import atomic_write_text
from detector.metrics import detection_metrics, per_generator_table
from detector.training.augment import eval_transform
from detector.training.checkpoint import load_checkpoint
from detector.training.predict import make_loader, predict

METRIC_COLUMNS = ("n", "n_fake", "auc", "ap", "acc_threshold", "acc_05", "tpr_fpr1", "tpr_fpr01", "ece")


@dataclass
class EvalConfig:
    checkpoint: str = ""
    corpus: str = ""
    split: str = "test"
    out: str = "runs/eval"
    perturbations: list[str] = field(default_factory=lambda: list(GRID))
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(config: EvalConfig, console=None) -> dict[str, Any]:
    """Run the grid; returns ``{"rows": tidy metric rows, "per_generator": rows, "out": folder}``."""
    for name in config.perturbations:
        perturbation(name)  # fail early on unknown names
    device = _device(config.device)
    detector, train_config, calibrator, card = load_checkpoint(config.checkpoint, device)
    corpus = load_corpus(config.corpus)
    subset = corpus if config.split == "all" else corpus.subset(config.split)
    if not subset.records:
        raise ValueError(
            f"{config.corpus}: no images in split {config.split!r} (use --split all for every image)"
        )
    seen_generators = set(card.get("data", {}).get("train_generators", []))
    size = int(card["image_size"])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "eval_config.yaml")

    rows: list[dict[str, Any]] = []
    per_generator: list[dict[str, Any]] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    clean_raw = None
    for name in config.perturbations:
        dataset = CorpusDataset(subset, Chain(perturbation(name), eval_transform(size)))
        loader = make_loader(dataset, config.batch_size, config.workers)
        pred = predict(detector, loader, device, amp=True)
        if console is not None:
            console.print(
                f"{name}: scored {len(pred.logits)} images"
                + (f", {len(pred.errors)} skipped" if pred.errors else "")
            )
            for _index, reason in pred.errors[:5]:
                console.print(f"[yellow]skipped[/] {reason}")
        probs = calibrator(pred.logits)
        records = [subset.records[i] for i in pred.indices]
        generators = np.array([r.generator for r in records], dtype=object)
        real = pred.targets == 0
        seen = np.array([r.generator in seen_generators for r in records]) & ~real
        masks = {"all": np.ones_like(real), "seen": real | seen, "unseen": real | (~real & ~seen)}
        for subset_name, mask in masks.items():
            if subset_name != "all" and not (mask & ~real).any():
                continue
            m = detection_metrics(pred.targets[mask], probs[mask], calibrator.threshold).as_dict()
            rows.append({"perturbation": name, "subset": subset_name, **{k: m[k] for k in METRIC_COLUMNS}})
            if subset_name == "all":
                curves[name] = (pred.targets, probs)
        for row in per_generator_table(pred.targets, probs, generators.tolist(), calibrator.threshold):
            status = (
                "real"
                if row["generator"] == "real"
                else ("seen" if row["generator"] in seen_generators else "unseen")
            )
            per_generator.append({"perturbation": name, **row, "status": status})
        if name == "clean":
            clean_raw = (pred, probs, records)

    _write_csv(out / "metrics.csv", rows, ["perturbation", "subset", *METRIC_COLUMNS])
    _write_csv(
        out / "per_generator.csv",
        per_generator,
        ["perturbation", "generator", "status", "n", "auc", "ap", "detection_rate"],
    )
    if clean_raw is not None:
        pred, probs, records = clean_raw
        _write_csv(
            out / "predictions.csv",
            [
                {"path": r.path, "label": r.label, "generator": r.generator, "logit": z, "p_fake": p}
                for r, z, p in zip(records, pred.logits, probs, strict=True)
            ],
            ["path", "label", "generator", "logit", "p_fake"],
        )
    atomic_write_text(out / "metrics.md", render_markdown(config, card, calibrator, rows, per_generator))
    from detector.evaluation.plots import plot_reliability, plot_roc

    plot_roc(curves, out / "roc.png", title=f"{card.get('method')} on {card.get('backbone')}")
    if clean_raw is not None:
        pred, probs, _ = clean_raw
        from detector.calibration import sigmoid

        plot_reliability(
            pred.targets,
            {"raw sigmoid": sigmoid(pred.logits), f"calibrated ({calibrator.method})": probs},
            out / "reliability.png",
        )
    return {"rows": rows, "per_generator": per_generator, "out": str(out)}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def render_markdown(config: EvalConfig, card, calibrator, rows, per_generator) -> str:
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
