"""Feature extraction through the cache, RIGID, and the `detector features` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector.backbones import create_backbone
from detector.cli import app
from detector.corpus import load_corpus
from detector.features import ExtractionReport, FeatureCache, extract_features
from detector.features.rigid import RigidConfig, RigidExtractor, rigid_similarity
from tests.conftest import write_tiny_ddpm


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("clip:tiny-vit")


def corpus_with_problems(folder_corpus: Path) -> Path:
    (folder_corpus / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder_corpus / "real" / "same_bytes.png").write_bytes(
        (folder_corpus / "real" / "photo0_crop0.png").read_bytes()
    )
    return folder_corpus


def test_second_run_is_a_lookup_with_identical_features(folder_corpus, backbone, tmp_path):
    root = corpus_with_problems(folder_corpus)
    corpus = load_corpus(root)
    first_report, second_report = ExtractionReport(), ExtractionReport()
    first, valid, failed = extract_features(
        corpus, backbone, tmp_path / "cache", batch_size=4, report=first_report
    )
    second, valid2, failed2 = extract_features(
        corpus, backbone, tmp_path / "cache", batch_size=4, report=second_report
    )
    paths = [r.path for r in corpus.records]
    assert len(paths) == 18 and len(valid) == 17 and valid == valid2
    assert [Path(p).name for p, _ in failed] == ["broken.png"] and failed == failed2
    assert "not an image" in failed[0][1] or "corrupt" in failed[0][1]
    assert paths.index("real/broken.png") not in valid
    assert first_report.computed == 16  # 17 images, two share bytes: computed once
    assert second_report.computed == 0 and second_report.cached == 17
    np.testing.assert_array_equal(first, second)
    # rows align with records, and equal what the backbone computes directly
    i = paths.index("real/photo1_crop0.png")
    from detector.corpus.dataset import CorpusDataset

    image = CorpusDataset(corpus, transform=backbone.transform())[i]["image"]
    direct = backbone.encode(image.unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(first[valid.index(i)], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        first[valid.index(paths.index("real/same_bytes.png"))],
        first[valid.index(paths.index("real/photo0_crop0.png"))],
    )


def test_cache_is_keyed_by_weights_and_preprocessing(folder_corpus, backbone, tmp_path):
    extract_features(folder_corpus, backbone, tmp_path / "cache")
    other = create_backbone("clip:tiny-vit")  # other random weights: another namespace, no stale hits
    report = ExtractionReport()
    extract_features(folder_corpus, other, tmp_path / "cache", report=report)
    assert report.cached == 0 and report.computed == 16
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2


def test_corrupt_shard_is_reported_and_recomputed(folder_corpus, backbone, tmp_path):
    reference, valid, _ = extract_features(folder_corpus, backbone, tmp_path / "cache", shard_size=5)
    cache = FeatureCache.for_extractor(tmp_path / "cache", backbone)
    shard = sorted(cache.folder.glob("shard-*.safetensors"))[0]
    cache.close()
    shard.write_bytes(b"garbage")
    report = ExtractionReport()
    again, valid2, failed = extract_features(
        folder_corpus, backbone, tmp_path / "cache", shard_size=5, report=report
    )
    assert report.cache_problems and "unreadable" in report.cache_problems[0]
    assert valid2 == valid and not failed
    np.testing.assert_allclose(again, reference, rtol=1e-5, atol=1e-6)


def test_out_writes_a_memory_mapped_matrix(folder_corpus, backbone, tmp_path):
    matrix, valid, _ = extract_features(folder_corpus, backbone, tmp_path / "cache", out=tmp_path / "f.npy")
    loaded = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert loaded.shape == (16, backbone.feature_dim)
    np.testing.assert_array_equal(loaded, matrix)


def test_rigid_is_one_at_zero_noise_and_below_one_otherwise(backbone):
    images = torch.rand(3, 3, 32, 32)
    at_zero = rigid_similarity(backbone, images, RigidConfig(noise_level=0.0, draws=2))
    torch.testing.assert_close(at_zero, torch.ones(3), atol=1e-5, rtol=0)
    noisy = rigid_similarity(backbone, images, RigidConfig(noise_level=0.5, draws=2))
    assert (noisy < 0.9999).all()
    # batch-independent (so the cache may key it by content)
    alone = rigid_similarity(backbone, images[2:], RigidConfig(noise_level=0.5, draws=2))
    torch.testing.assert_close(noisy[2:], alone, atol=1e-5, rtol=1e-5)
    assert RigidExtractor(backbone).encode(images).shape == (3, 1)


def test_cli_extract_rigid_and_cache_info(folder_corpus, tmp_path):
    runner = CliRunner()
    root = corpus_with_problems(folder_corpus)
    args = ["features", "extract", str(root), "--backbone", "timm:test_efficientnet", "--cache-dir"]
    result = runner.invoke(
        app, [*args, str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--batch-size", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "17 of 18 images" in " ".join(result.output.split())
    assert np.load(tmp_path / "out" / "features.npy").shape == (17, 256)
    assert (tmp_path / "out" / "records.csv").read_text().count("\n") == 18
    assert json.loads((tmp_path / "out" / "errors.json").read_text())[0]["path"].endswith("broken.png")
    assert (tmp_path / "out" / "config.yaml").exists()
    result = runner.invoke(app, ["features", "cache-info", str(tmp_path / "cache")])
    assert result.exit_code == 0 and "Feature cache" in result.output
    result = runner.invoke(app, ["features", "cache-info", str(tmp_path / "cache"), "--json"])
    (info,) = json.loads(result.output)
    assert info["extractor"] == "timm:test_efficientnet" and info["entries"] == 16 and not info["problems"]
    result = runner.invoke(
        app,
        [
            "features",
            "rigid",
            str(folder_corpus),
            "--backbone",
            "clip:tiny-vit",
            "--cache-dir",
            str(tmp_path / "c2"),
            "--out",
            str(tmp_path / "rigid"),
            "--draws",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "rigid" / "summary.json").read_text())
    assert 0.0 <= summary["auroc"] <= 1.0 and summary["n"] == 17
    result = runner.invoke(
        app, ["features", "extract", str(tmp_path / "nowhere"), "--backbone", "timm:test_vit"]
    )
    assert result.exit_code == 2
    result = runner.invoke(app, ["features", "extract", str(root), "--backbone", "nope"])
    assert result.exit_code == 2 and "unknown backbone" in result.output


def test_cli_extract_inversion_features(folder_corpus, tmp_path):
    write_tiny_ddpm(tmp_path / "ddpm")
    result = CliRunner().invoke(
        app,
        [
            "features",
            "extract",
            str(folder_corpus),
            "--inversion",
            str(tmp_path / "ddpm"),
            "--mode",
            "dire",
            "--steps",
            "3",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "features.npy").shape == (16, 11)
