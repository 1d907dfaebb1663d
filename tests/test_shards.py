"""Sharded corpora (Parquet with image bytes) and Parquet score output, read by the same loaders as folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.corpus import load_corpus, records_from_folder, write_manifest
from detector.io import ImageLoadError, file_sha256, load_image, load_image_array
from detector.scoring import Batch, Pipeline, ScoringError, expand_inputs, score_stream

pytest.importorskip("pyarrow")
runner = CliRunner()


def brightness(batch: Batch) -> list[float]:
    return [float(np.asarray(img, dtype=np.float32).mean() / 255) for img in batch.images]


def plain() -> Pipeline:
    return Pipeline(passive={"brightness": brightness}, versions={"brightness": "v1"})


@pytest.fixture
def sharded(folder_corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(manifest of folder_corpus plus a broken image and a missing file, its sharded copy)."""
    (folder_corpus / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = records_from_folder(folder_corpus)
    reals = [r.path for r in records if not r.is_fake]
    for k, record in enumerate(r for r in records if r.is_fake):
        record.source = reals[k % len(reals)]  # paired training's link, across shards
    manifest = write_manifest(records, folder_corpus / "manifest.csv")
    with open(manifest, "a") as handle:
        handle.write("real/gone.png,real,real,gone,,,0,0,,\n")
    result = runner.invoke(
        app, ["corpus", "shard", str(manifest), "--out", str(tmp_path / "shards"), "--images-per-shard", "7"]
    )
    assert result.exit_code == 0, result.output
    assert "17 images in 3 shard(s), 1 skipped" in " ".join(result.output.split())
    return manifest, tmp_path / "shards"


def test_sharded_corpus_has_the_records_and_the_bytes_of_its_source(sharded):
    manifest, shards = sharded
    index = json.loads((shards / "corpus.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [7, 7, 3]
    assert index["skipped"] == [[str(manifest.parent / "real" / "gone.png"), "file not found"]]
    source, copy = load_corpus(manifest), load_corpus(shards)
    kept = [r for r in source.records if r.path != "real/gone.png"]
    strip = ("label", "generator", "group", "split", "family")
    assert [[getattr(r, k) for k in strip] for r in copy.records] == [
        [getattr(r, k) for k in strip] for r in kept
    ]
    for original, member in zip(kept, copy.records, strict=True):
        path = copy.resolve(member)
        assert str(path).endswith(f".parquet::{original.path}")
        assert file_sha256(path) == file_sha256(source.resolve(original))
        if original.path != "real/broken.png":
            np.testing.assert_array_equal(load_image_array(path), load_image_array(source.resolve(original)))
    # a fake's source names its real crop's member path, wherever that crop's shard is
    members = {r.path.split("::", 1)[1]: r.path for r in copy.records}
    for original, member in zip(kept, copy.records, strict=True):
        assert member.source == (members[original.source] if original.source else "")
    assert any(r.source.split("::")[0] != r.path.split("::")[0] for r in copy.records if r.source)
    # shards written before the source column still load (no sources)
    import pyarrow.parquet as pq

    first = shards / index["shards"][0]["file"]
    pq.write_table(pq.read_table(first).drop(["source"]), first)
    assert all(not r.source for r in load_corpus(shards).records[:7])
    broken = next(p for p in (copy.resolve(r) for r in copy.records) if str(p).endswith("broken.png"))
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(broken)
    with pytest.raises(ImageLoadError, match="no such image in its shard"):
        load_image(str(shards / "shard-00000.parquet::real/nope.png"))
    result = runner.invoke(app, ["corpus", "shard", str(manifest), "--out", str(shards)])
    assert result.exit_code == 2 and "not empty" in result.output


def test_score_reads_a_sharded_corpus_like_its_folder(sharded, tmp_path):
    manifest, shards = sharded
    score_stream([manifest], plain(), tmp_path / "folder.jsonl", batch_size=4)
    score_stream([shards], plain(), tmp_path / "shards.jsonl", batch_size=4, workers=2)
    folder = [json.loads(line) for line in (tmp_path / "folder.jsonl").read_text().splitlines()]
    packed = [json.loads(line) for line in (tmp_path / "shards.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in packed] == [Path(r["path"]).name for r in folder][
        :-1
    ]  # no gone.png
    assert folder[-1]["error"] == "file not found"
    for a, b in zip(folder, packed, strict=False):
        assert (a["p_ai"], a["error"] is None) == (b["p_ai"], b["error"] is None)
    assert len(list(expand_inputs([shards]))) == 17


@pytest.mark.slow
def test_feature_cache_keys_are_the_same_for_shards_and_files(sharded, tmp_path):
    from detector.backbones import create_backbone
    from detector.features import ExtractionReport, extract_features

    manifest, shards = sharded
    backbone = create_backbone("clip:tiny-vit")
    first, second = ExtractionReport(), ExtractionReport()
    a, valid_a, failed_a = extract_features(
        manifest, backbone, tmp_path / "cache", batch_size=8, report=first
    )
    b, valid_b, failed_b = extract_features(shards, backbone, tmp_path / "cache", batch_size=8, report=second)
    assert first.computed == 16 and second.computed == 0 and second.cached == 16  # same bytes, same keys
    np.testing.assert_array_equal(a, b)
    assert len(failed_a) == 2 and len(failed_b) == 1  # broken (both) and gone.png (files only)


def test_parquet_output_of_the_local_engine_resumes_and_never_overwrites(tmp_path):
    from detector.scoring.parquet import read_results
    from tests.conftest import write_rgb

    for i in range(5):
        write_rgb(tmp_path / "in" / f"img{i}.png", seed=i)
    (tmp_path / "in" / "bad.png").write_bytes(b"x")
    out = tmp_path / "scores.parquet"
    summary = score_stream([tmp_path / "in"], plain(), out, fmt="parquet", batch_size=2)
    table = read_results(out)
    assert summary.scored == 6 and table.num_rows == 6 and table.schema.field("p_ai").type == "double"
    with pytest.raises(ScoringError, match="exists"):
        score_stream([tmp_path / "in"], plain(), out, fmt="parquet")
    write_rgb(tmp_path / "in" / "img9.png", seed=9)
    again = score_stream([tmp_path / "in"], plain(), out, fmt="parquet", resume=True)
    assert (again.skipped, again.scored, again.total) == (6, 1, 7)
    paths = read_results(out).column("path").to_pylist()
    assert len(paths) == 7 == len(set(paths))


@pytest.mark.slow
def test_train_and_eval_read_a_sharded_corpus(tmp_path):
    """`detector train` and `detector eval` on the shards of a split corpus, end to end through the CLI."""
    from detector.corpus import SplitConfig, assign_splits
    from tests.conftest import write_rgb

    root = tmp_path / "corpus"
    for i in range(12):
        write_rgb(root / "real" / f"photo{i // 2}_crop{i % 2}.png", size=(32, 32), seed=i)
    for g, gen in enumerate(["gen_a", "gen_b"]):
        for i in range(6):
            write_rgb(root / "fake" / gen / f"{gen}{i}.png", size=(32, 32), seed=100 + 10 * g + i)
    records = records_from_folder(root, group_regex=r"^(.+?)_crop")
    assign_splits(records, SplitConfig(seed=0, train=0.5, val=0.25, test=0.25))
    write_manifest(records, root / "manifest.csv")
    shards = tmp_path / "shards"
    assert (
        runner.invoke(app, ["corpus", "shard", str(root / "manifest.csv"), "--out", str(shards)]).exit_code
        == 0
    )
    run = tmp_path / "run"
    args = ["train", "--corpus", str(shards), "--out", str(run), "--method", "linear-probe"]
    args += ["--backbone", "timm:test_efficientnet", "--set", "data.image_size=32", "--set", "optim.epochs=1"]
    result = runner.invoke(app, [*args, "--set", "wandb.mode=disabled", "--set", "data.batch_size=8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(run), str(shards), "-p", "clean", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    predictions = (run / "eval-test" / "predictions.csv").read_text()
    assert ".parquet::" in predictions and len(predictions.splitlines()) > 1
