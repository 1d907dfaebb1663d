"""``detector eval CHECKPOINT CORPUS``: metrics, perturbation grid, seen vs unseen generators, plots."""

from __future__ import annotations

import typer

from detector.cli.choices import EvalSplit
from detector.cli.common import console, fail, parse_list, stdout
from detector.errors import DetectorError


def eval_command(
    checkpoint: str = typer.Argument(..., help="Run folder written by `detector train`."),
    corpus: str = typer.Argument(..., help="Corpus folder or manifest."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default CHECKPOINT/eval-SPLIT)."),
    split: EvalSplit = typer.Option(
        EvalSplit.test, "--split", help="The corpus split to score (all: every image)."
    ),
    perturbations: str = typer.Option(
        None,
        "--perturbations",
        "-p",
        help="Comma list (default: the whole grid: clean,jpeg95,...,brightness).",
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(0, "--workers"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Write metrics.csv, per_generator.csv, metrics.md, roc.png and reliability.png."""
    from pathlib import Path

    from detector.evaluation import GRID, EvalConfig, evaluate

    split = split.value

    config = EvalConfig(
        checkpoint=checkpoint,
        corpus=corpus,
        split=split,
        out=out or str(Path(checkpoint) / f"eval-{split}"),
        perturbations=parse_list(perturbations) or list(GRID),
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    try:
        result = evaluate(config, console=console)
    except DetectorError as exc:
        fail(str(exc))
    stdout.print((Path(result["out"]) / "metrics.md").read_text())
    console.print(f"[bold green]wrote[/] {result['out']}")
