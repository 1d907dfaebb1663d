"""CLI choices: each enum mirrors the library constant it stands for, --help lists it, typer refuses others."""

from __future__ import annotations

from typer.testing import CliRunner

from detector.cli import app
from detector.cli.choices import (
    Dtype,
    EvalSplit,
    InversionMode,
    Method,
    OutputFormat,
    PageMode,
    UnknownScore,
    WatermarkSearch,
)

runner = CliRunner()


def _values(enum) -> set[str]:
    return {member.value for member in enum}


def test_choices_mirror_the_library():
    from detector.attribution.head import UNKNOWN_SCORES
    from detector.corpus import SPLITS
    from detector.features.inversion.features import MODES
    from detector.scoring.stream import FORMATS
    from detector.service.config import PAGE_MODES
    from detector.training.config import METHODS
    from detector.watermark.api import SEARCHES

    assert _values(Method) == set(METHODS)
    assert _values(InversionMode) == set(MODES)
    assert _values(UnknownScore) == set(UNKNOWN_SCORES)
    assert _values(PageMode) == set(PAGE_MODES)
    assert _values(WatermarkSearch) == set(SEARCHES)
    assert _values(EvalSplit) == {*SPLITS, "all"}
    assert set(FORMATS) <= _values(OutputFormat)
    import torch

    assert all(isinstance(getattr(torch, name), torch.dtype) for name in _values(Dtype))


def test_help_lists_the_choices_and_a_bad_value_is_refused():
    result = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "jsonl" in result.output and "parquet" in result.output and "ray" in result.output
    bad = runner.invoke(app, ["score", "x.png", "--format", "xml"])
    assert bad.exit_code == 2
    assert "xml" in bad.output
    bad = runner.invoke(app, ["train", "--method", "magic"])
    assert bad.exit_code == 2
    assert "magic" in bad.output
