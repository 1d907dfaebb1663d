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
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()  # a same-named folder that is not a bundle does not shadow the model
    assert resolve_model("mine") == mine
    cards = {c.name: c for c in list_models()}
    assert cards["mine"].origin == "user" and cards["mine"].summary == "trained on my corpus"
    assert "not-a-bundle" not in cards
    with pytest.raises(BundleError, match="not a detector bundle folder.*available models: .*mine"):
        resolve_model("nope")
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0 and '"mine"' in result.output


def test_shipped_checkpoints_are_package_data():
    """The shipped models are found through importlib.resources (wheel and checkout alike)."""
    root = shipped_root()
    assert (root / "watermark" / "model.safetensors").is_file()
    from detector.watermark.api import default_checkpoint

    assert default_checkpoint().resolve() == (root / "watermark" / "model.safetensors").resolve()


@pytest.mark.skipif(
    not (shipped_root() / "default" / "bundle.json").is_file(),
    reason="no shipped default bundle in this checkout",
)
def test_the_shipped_default_detector_scores_a_packaged_photo():
    """`load_detector()` with no argument is the shipped bundle; it scores a real photo from a wheel."""
    from detector import load_detector
    from detector.corpus.photos import catalogue

    card = json.loads((shipped_root() / "default" / "model_card.json").read_text())
    assert card["trained_on"]["photos_by_split"]["test"] >= 10
    size = sum(f.stat().st_size for f in (shipped_root() / "default").rglob("*") if f.is_file())
    assert size <= 30e6
    det = load_detector(watermark=False)
    photo = next(p for p in catalogue() if p.name == "skimage-coffee").locate()
    result = det.score(photo)
    assert result.ok and 0.0 <= result.p_ai <= 1.0
    assert result.verdict in ("real", "uncertain", "ai-generated")
    assert set(result.branches) >= {"detector"} and result.versions
