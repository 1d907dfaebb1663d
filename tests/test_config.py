"""Typed configs: YAML + dotted overrides, validation of unknown keys and types, round-trip."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from detector.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Example:
    name: str = "run"
    holdout: list[str] = field(default_factory=list)
    amp: bool = False
    optim: Optim = field(default_factory=Optim)
    note: str | None = None


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from_file\noptim:\n  lr: 0.5\n")
    config = load_config(Example, path, ["optim.steps=7", "holdout=[a,b]", "amp=true"])
    assert config == Example(name="from_file", holdout=["a", "b"], amp=True, optim=Optim(lr=0.5, steps=7))


def test_save_then_load_reproduces(tmp_path):
    config = Example(name="x", holdout=["g"], optim=Optim(lr=3e-4, steps=2), note="n")
    path = save_config(config, tmp_path / "out" / "config.yaml")
    assert load_config(Example, path) == config


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.lrr=1", "unknown key"),
        ("optim.steps=abc", "expected int"),
        ("amp=maybe", "true/false"),
        ("nokey", "key"),
    ],
)
def test_bad_overrides_are_clear(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Example, None, [override])
