"""The docs stay true: every `--set key=value` they show is a real training config key with a valid value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.config import load_config
from detector.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SET_OVERRIDE = re.compile(r"--set ([a-z_][a-z0-9_.]*=[^\s`'\"]+)")


def shown_overrides() -> list[tuple[str, str]]:
    return [(path.name, match) for path in DOCS for match in SET_OVERRIDE.findall(path.read_text())]


def test_the_docs_show_overrides():
    assert len(shown_overrides()) >= 4


@pytest.mark.parametrize(("page", "override"), shown_overrides())
def test_every_override_in_the_docs_is_a_real_config_key(page, override):
    load_config(TrainConfig, None, [override])  # raises ConfigError on an unknown key or a bad value
