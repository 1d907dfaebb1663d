"""``detector eval``: score a corpus split with a checkpoint, under every perturbation of the grid.

Probabilities are the checkpoint's calibrated P(fake); accuracy uses the threshold chosen on the
training run's validation split (never on what is evaluated here). Fake images are "seen" when their
generator was in the checkpoint's training split and "unseen" otherwise; both subsets are scored
against all real images. Writes ``metrics.csv`` (tidy: one row per perturbation x subset),
``per_generator.csv``, ``metrics.md`` (the grid with each perturbation as a column), ``roc.png``,
``reliability.png``, ``predictions.csv`` (clean scores per image) and ``eval_config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.config import save_config
from detector.corpus import load_corpus
from detector.corpus.dataset import CorpusDataset
from detector.devices import resolve_device
from detector.evaluation.perturbations import GRID, EvaluationError, PerturbationChain, perturbation
from detector.evaluation.tables import METRIC_COLUMNS, per_generator_table, render_markdown, write_csv
from detector.io import atomic_write_text
from detector.metrics import detection_metrics
from detector.training.augment import eval_transform
from detector.training.checkpoint import load_checkpoint
from detector.training.predict import make_loader, predict


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


def evaluate(config: EvalConfig, console=None) -> dict[str, Any]:
    """Run the grid; returns ``{"rows": tidy metric rows, "per_generator": rows, "out": folder}``."""
    for name in config.perturbations:
        perturbation(name)  # fail early on unknown names
    device = resolve_device(config.device)
    detector, train_config, calibrator, card = load_checkpoint(config.checkpoint, device)
    corpus = load_corpus(config.corpus)
    subset = corpus if config.split == "all" else corpus.subset(config.split)
    if not subset.records:
        raise EvaluationError(
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
        dataset = CorpusDataset(subset, PerturbationChain(perturbation(name), eval_transform(size)))
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

    write_csv(out / "metrics.csv", rows, ["perturbation", "subset", *METRIC_COLUMNS])
    write_csv(
        out / "per_generator.csv",
        per_generator,
        ["perturbation", "generator", "status", "n", "auc", "ap", "detection_rate"],
    )
    if clean_raw is not None:
        pred, probs, records = clean_raw
        write_csv(
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
