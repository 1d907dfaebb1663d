"""The fixed sets of values CLI options take, as enums: typer refuses anything else before a command runs
and ``--help`` lists the choices; and the options several commands share.

The values are spelled here (importing the library modules that own them would load torch for
``--help``); ``tests/test_cli_choices.py`` checks each one against the constant it mirrors.
"""

from __future__ import annotations

from enum import Enum

import typer


class Choice(str, Enum):
    """A string choice: compares equal to its value and prints as it."""

    def __str__(self) -> str:
        return self.value


class OutputFormat(Choice):
    """``detector score --format`` (mirrors the writers of ``detector.scoring.stream`` plus the table)."""

    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"
    table = "table"


class Engine(Choice):
    """Where scoring or feature extraction runs: this process or a Ray cluster."""

    local = "local"
    ray = "ray"


class WatermarkSearch(Choice):
    """``detector.watermark.SEARCHES``: full (undo resizes and rotations, two passes), fast (native grid
    only) or exhaustive (every synchronisation candidate at every phase: slower, finds a few more)."""

    full = "full"
    fast = "fast"
    exhaustive = "exhaustive"


class PageMode(Choice):
    """``detector.service.config.PAGE_MODES``: may the web page score without an API key."""

    keyed = "keyed"
    open = "open"


class Method(Choice):
    """``detector.training.config.METHODS``: how the backbone is trained."""

    linear_probe = "linear-probe"
    full_finetune = "full-finetune"
    lora = "lora"
    effort = "effort"


class InversionMode(Choice):
    """``detector.features.inversion.features.MODES``: which inversion statistics are extracted."""

    lare = "lare"
    dire = "dire"
    fakeinversion = "fakeinversion"
    all = "all"


class UnknownScore(Choice):
    """``detector.attribution.head.UNKNOWN_SCORES``: the score that rejects an unknown generator."""

    msp = "msp"
    energy = "energy"
    mahalanobis = "mahalanobis"
    knn = "knn"


class EvalSplit(Choice):
    """``detector.corpus.SPLITS`` plus ``all`` (every image of the corpus)."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class Dtype(Choice):
    """Model dtypes a backbone can be built in (a ``torch`` attribute name)."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


#: Options ``detector score`` and ``detector serve`` share: how the bundle is loaded.
DEVICE_OPT = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 or auto.")
NO_WATERMARK_OPT = typer.Option(False, "--no-watermark", help="Skip the bundle's watermark decoder.")
WATERMARK_SEARCH_OPT = typer.Option(
    None,
    "--watermark-search",
    help="full (undo resizes, rotations and flips, in two passes), fast (native grid only, several times "
    "cheaper on unmarked images) or exhaustive (every candidate at every phase: slowest, finds a few more); "
    "default: the bundle's choice (full).",
)


def choice_value(choice: Choice | None) -> str | None:
    """The plain string of an optional choice (what the library takes)."""
    return None if choice is None else choice.value


__all__ = [
    "DEVICE_OPT",
    "NO_WATERMARK_OPT",
    "WATERMARK_SEARCH_OPT",
    "Choice",
    "Dtype",
    "Engine",
    "EvalSplit",
    "InversionMode",
    "Method",
    "OutputFormat",
    "PageMode",
    "UnknownScore",
    "WatermarkSearch",
    "choice_value",
]
