"""Named bundles: `load_detector()` / `--model NAME` resolve names, paths and $DETECTOR_MODELS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.bundle import BundleError, list_models, resolve_model
from detector.bundle.cards import shipped_root
from detector.cli import app

runner = CliRunner()


def fake_bundle(folder: Path, summary: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"format": "detector.bundle/1"}))
    (folder / "model_card.json").write_text(json.dumps({"summary": summary}))
    return folder


def test_names_resolve_to_user_models_and_paths_pass_through(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTOR_MODELS", str(tmp_path / "models"))
    mine = fake_bundle(tmp_path / "models" / "mine", "trained on my corpus")
    (tmp_path / "models" / "not-a-bundle").mkdir()
    assert resolve_model("mine") == mine
    assert resolve_model(str(mine)) == mine  # a folder path is taken as it is
    cards = {c.name: c for c in list_models()}
    assert cards["mine"].origin == "user" and cards["mine"].summary == "trained on my corpus"
    assert "not-a-bundle" not in cards
    with pytest.raises(BundleError, match="available models: .*mine"):
        resolve_model("nope")
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0 and '"mine"' in result.output


def test_shipped_checkpoints_are_package_data():
    """The shipped models are found through importlib.resources (wheel and checkout alike)."""
    root = shipped_root()
    assert (root / "watermark" / "model.safetensors").is_file()
    from detector.watermark.api import default_checkpoint

    assert default_checkpoint().resolve() == (root / "watermark" / "model.safetensors").resolve()
