"""``detector train``: train a real/fake detector on a corpus (config file + dotted overrides)."""

from __future__ import annotations

from pathlib import Path

import typer

from detector.cli.choices import Method, choice_value
from detector.cli.common import console, fail
from detector.config import load_config
from detector.errors import DetectorError


def train_command(
    corpus: str = typer.Option(
        None, "--corpus", "-c", help="Corpus folder or manifest with train/val splits."
    ),
    config: Path = typer.Option(None, "--config", help="YAML TrainConfig (see config.yaml of any run)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Dotted override, repeatable: --set method.name=effort --set optim.epochs=3"
    ),
    out: str = typer.Option(None, "--out", "-o", help="Run folder (checkpoint, config, model card)."),
    method: Method | None = typer.Option(None, "--method", help="How the backbone is trained."),
    backbone: str = typer.Option(None, "--backbone", help="Registry name, e.g. effnet-lite0, clip:ViT-L-14"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
) -> None:
    """Train, calibrate on validation, merge, and write a checkpoint folder.

    Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m detector train ...``.
    """
    from detector.training import TrainConfig, train

    extra = list(overrides)
    for key, value in (
        ("data.corpus", corpus),
        ("out", out),
        ("method.name", choice_value(method)),
        ("model.backbone", backbone),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    if config is None and resume and out and (Path(out) / "config.yaml").is_file():
        config = Path(out) / "config.yaml"
    try:
        cfg = load_config(TrainConfig, config, extra)
        train(cfg, resume=resume, console=console)
    except DetectorError as exc:
        fail(str(exc))
