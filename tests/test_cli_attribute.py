"""`detector attribute` end to end on feature files: fit with a held-out generator, enrol, predict, remove."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from detector.attribution import AttributionHead, FeatureSet, save_features
from detector.cli import app

runner = CliRunner()
DIM = 16


def cluster(name: str, n: int, seed: int) -> np.ndarray:
    centre = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 1.6, DIM)
    return (centre + np.random.default_rng(seed).normal(0, 1, (n, DIM))).astype(np.float32)


@pytest.fixture
def feature_file(tmp_path):
    names = ["gen_a", "gen_b", "gen_c", "held"]
    feats = np.concatenate([cluster(n, 40, i) for i, n in enumerate(names)])
    gens = [n for n in names for _ in range(40)]
    splits = (["train"] * 24 + ["val"] * 8 + ["test"] * 8) * len(names)
    path = tmp_path / "feats.npz"
    save_features(
        FeatureSet(feats, generators=gens, splits=splits, paths=[f"{i}.png" for i in range(160)]), path
    )
    return path


def test_help_on_every_command():
    for args in (
        ["attribute", "--help"],
        *(["attribute", c, "--help"] for c in ("fit", "evaluate", "enroll", "list", "remove", "predict")),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_fit_enroll_predict_remove(feature_file, tmp_path):
    head_path = tmp_path / "head.safetensors"
    result = runner.invoke(
        app,
        [
            "attribute",
            "fit",
            str(feature_file),
            "--out",
            str(head_path),
            "--holdout",
            "held",
            "--score",
            "knn",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "head.report.json").read_text())
    assert report["classes"] == ["gen_a", "gen_b", "gen_c"]
    assert report["test"]["closed"]["n_unknown"] == 8
    assert report["test"]["scores"]["knn"]["unknown_auroc"] > 0.9
    assert yaml.safe_load((tmp_path / "head.config.yaml").read_text())["holdout"] == ["held"]
    assert (tmp_path / "head.confusion-test.png").stat().st_size > 1000
    assert AttributionHead.load(head_path).config.score == "knn"

    new = tmp_path / "new.npy"
    np.save(new, cluster("gen_new", 10, 99))
    result = runner.invoke(
        app, ["attribute", "enroll", str(head_path), "--name", "gen_new", "--features", str(new)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["attribute", "list", str(head_path)])
    assert result.exit_code == 0 and "gen_new" in result.output and "enrolled" in result.output

    probe = tmp_path / "probe.npy"
    np.save(probe, cluster("gen_new", 20, 100))
    out = tmp_path / "pred.jsonl"
    result = runner.invoke(
        app,
        ["attribute", "predict", str(head_path), "--features", str(probe), "--out", str(out), "--top-k", "2"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and len(rows[0]["top_k"]) == 2
    assert np.mean([r["generator"] == "gen_new" for r in rows]) > 0.85

    result = runner.invoke(app, ["attribute", "remove", str(head_path), "--name", "gen_new"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["attribute", "predict", str(head_path), "--features", str(probe)])
    assert result.exit_code == 0 and "gen_new" not in result.output

    result = runner.invoke(
        app,
        [
            "attribute",
            "evaluate",
            str(head_path),
            str(feature_file),
            "--split",
            "test",
            "--report",
            str(tmp_path / "ev.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev.json").read_text())["closed"]["n_known"] == 24


def test_clean_errors(feature_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    result = runner.invoke(app, ["attribute", "list", str(bad)])
    assert result.exit_code == 2 and "bad.safetensors" in result.output
    result = runner.invoke(
        app,
        [
            "attribute",
            "fit",
            str(feature_file),
            "--out",
            str(tmp_path / "h.safetensors"),
            "--holdout",
            "nope",
        ],
    )
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(
        app,
        ["attribute", "fit", str(feature_file), "--out", str(tmp_path / "h.safetensors"), "--score", "vibes"],
    )
    assert result.exit_code == 2 and "score" in result.output


def tinted(path, rgb, seed):
    """A noisy image of one dominant colour: a stand-in 'generator fingerprint' a random CNN still sees."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = np.clip(np.array(rgb) + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_images_through_the_recorded_backbone(tmp_path):
    """fit on backbone features with --backbone recorded, then enroll --images and predict image paths."""
    import torch

    from detector.backbones import create_backbone, save_state_dict
    from detector.io import load_image
    from detector.scoring import Batch, backbone_features

    torch.manual_seed(0)
    weights = save_state_dict(create_backbone("timm:test_efficientnet").model, tmp_path / "bb.safetensors")
    backbone = create_backbone("timm:test_efficientnet", pretrained=str(weights))
    colours = {"gen_red": (200, 40, 40), "gen_green": (40, 200, 40), "gen_blue": (40, 40, 200)}
    paths, gens, splits = [], [], []
    for g, (name, rgb) in enumerate(colours.items()):
        for i in range(12):
            paths.append(tinted(tmp_path / "train" / name / f"{i}.png", rgb, seed=100 * g + i))
            gens.append(name)
            splits.append("train" if i < 8 else "val")
    feats = backbone_features(backbone)(Batch([str(p) for p in paths], [load_image(p) for p in paths]))
    save_features(FeatureSet(feats, generators=gens, splits=splits), tmp_path / "f.npz")
    head = tmp_path / "head.safetensors"
    args = ["--backbone", "timm:test_efficientnet", "--pretrained", str(weights)]
    result = runner.invoke(app, ["attribute", "fit", str(tmp_path / "f.npz"), "--out", str(head), *args])
    assert result.exit_code == 0, result.output

    for i in range(8):
        tinted(tmp_path / "yellow" / f"{i}.png", (220, 220, 30), seed=500 + i)
    (tmp_path / "yellow" / "broken.png").write_bytes(b"not an image")
    result = runner.invoke(
        app, ["attribute", "enroll", str(head), "--name", "gen_yellow", "--images", str(tmp_path / "yellow")]
    )
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "from 8 examples" in result.output

    for i in range(4):
        tinted(tmp_path / "probe" / f"y{i}.png", (220, 220, 30), seed=900 + i)
        tinted(tmp_path / "probe" / f"r{i}.png", (200, 40, 40), seed=950 + i)
    (tmp_path / "probe" / "empty.png").write_bytes(b"")
    out = tmp_path / "pred.jsonl"
    result = runner.invoke(
        app, ["attribute", "predict", str(head), str(tmp_path / "probe"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 9 and "empty" in rows["empty.png"]["error"]
    assert all(rows[f"y{i}.png"]["top_k"][0][0] == "gen_yellow" for i in range(4))
    assert all(rows[f"r{i}.png"]["top_k"][0][0] == "gen_red" for i in range(4))

    # A head without a recorded backbone refuses images with a clear message.
    result = runner.invoke(
        app, ["attribute", "fit", str(tmp_path / "f.npz"), "--out", str(tmp_path / "plain.safetensors")]
    )
    result = runner.invoke(
        app, ["attribute", "predict", str(tmp_path / "plain.safetensors"), str(tmp_path / "probe")]
    )
    assert result.exit_code == 2 and "--backbone" in result.output


def test_a_bundles_head_refuses_images_it_would_read_differently(tiny_bundle, tmp_path):
    """A bundle's head was fitted on its detector's features at the checkpoint's input size; a backbone
    built by name (other weights after fine-tuning, another input size) would give it other pixels."""
    from detector.testing.tinybundle import write_rgb

    write_rgb(tmp_path / "probe" / "a.png", size=(40, 36), seed=1)
    head = tiny_bundle / "attribution.safetensors"
    result = runner.invoke(app, ["attribute", "predict", str(head), str(tmp_path / "probe")])
    assert result.exit_code == 2 and "detector score --model" in " ".join(result.output.split())
    assert AttributionHead.load(head).metadata["image_size"] == 32
