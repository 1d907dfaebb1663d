"""``detector bundle RUN --corpus C --out BUNDLE``: turn a trained run into a scoring bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from detector.cli.common import console, fail, progress_bar, stdout
from detector.errors import DetectorError


def bundle_command(
    checkpoint: Path = typer.Argument(..., help="Run folder written by `detector train`."),
    corpus: str = typer.Option(
        ..., "--corpus", "-c", help="Corpus (folder or manifest) with train/val splits."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write."),
    watermark_key: Path | None = typer.Option(None, help="Watermark key file: the bundle decodes it."),
    watermark_checkpoint: Path | None = typer.Option(
        None, help="Watermark model (default: the shipped one)."
    ),
    watermark_registry: Path | None = typer.Option(
        None,
        help="Watermark payload registry (SQLite): names generators; registered payloads need fewer bits.",
    ),
    inversion_model: str | None = typer.Option(
        None,
        help="Diffusion model (diffusers folder or hub id) for the inversion branch, e.g. the benchmark "
        "zoo's DDPM data/zoo-cache/full/ddpm-unet32-s0-n<steps>. Default: no inversion branch.",
    ),
    rigid: bool = typer.Option(
        False, "--rigid", help="Also fit the RIGID branch (training-free; 2 extra backbone forwards a batch)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Dotted override: --set attribution.score=knn --set fusion.uncertain_band=0.05"
    ),
) -> None:
    """Fit the attribution head (train split) and the fusion (val split) for a trained checkpoint and
    write a scoring bundle that `detector score` and `load_detector` read. The test split is not read."""
    from detector.bundle import BundleConfig, build_bundle
    from detector.config import load_config

    extra = [f"checkpoint={checkpoint}", f"corpus={corpus}", *overrides]
    for key, value in (
        ("watermark_key", watermark_key),
        ("watermark_checkpoint", watermark_checkpoint),
        ("watermark_registry", watermark_registry),
        ("inversion_model", inversion_model),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    if rigid:
        extra.append("rigid=true")
    try:
        config = load_config(BundleConfig, None, extra)
        report = build_bundle(config, out, progress=progress_bar, log=console.print)
    except DetectorError as exc:
        fail(str(exc))
    print_branch_table(report["validation_branches"], "validation (the split the fusion was fitted on)")
    console.print(f"wrote bundle {out} (fusion report: {out / 'fusion_report.json'})")


def print_branch_table(rows: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("score", "n", "AUC", "TPR@1%FPR"):
        table.add_column(column)
    for name, m in rows.items():
        table.add_row(name, str(m["n"]), f"{m['auc']:.3f}", f"{m['tpr_fpr1']:.3f}")
    stdout.print(table)


__all__ = ["bundle_command", "print_branch_table"]
