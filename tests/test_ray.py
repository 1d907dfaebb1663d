"""`detector score --engine ray`: the same lines as the local engine (bad files included), Parquet output,
an actor killed mid-run retried without losing or repeating a line, a killed driver resumed.

One local Ray cluster (``ray.init(num_cpus=2)``) serves every test here; actors get a quarter of a CPU.
Starting Ray and its actors costs seconds a run on 2 cores, so these tests are in the slow tier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.scoring import Batch, Pipeline, score_stream
from tests.conftest import write_rgb
from tests.test_bundle_score import bundle, mixed_folder  # noqa: F401 - the tiny bundle fixture

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow
runner = CliRunner()
RAY_ARGS = ["--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.25", "--decode-cpus", "0.25"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local cluster for the module; test helpers travel to the workers by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def brightness(batch: Batch) -> list[float]:
    return [float(np.asarray(img, dtype=np.float32).mean() / 255) for img in batch.images]


def plain() -> Pipeline:
    return Pipeline(passive={"brightness": brightness}, versions={"brightness": "v1"})


@dataclass(frozen=True)
class CrashOnce:
    """A pipeline whose actor process dies (os._exit) the first time it sees ``victim``: a worker killed
    mid-run. The marker file makes it happen once across restarts."""

    marker: str
    victim: str = "img05"

    def __call__(self) -> Pipeline:
        def branch(batch: Batch) -> list[float]:
            if any(self.victim in p for p in batch.paths):
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return brightness(batch)

        return Pipeline(passive={"brightness": branch}, versions={"brightness": "v1"})


def images(folder: Path, n: int) -> Path:
    for i in range(n):
        write_rgb(folder / f"img{i:02d}.png", size=(20, 16), seed=i)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_cli_ray_engine_writes_the_local_engines_lines_including_bad_files(bundle, tmp_path):  # noqa: F811
    folder = mixed_folder(tmp_path / "in")
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    args = ["score", str(folder), "--model", str(bundle), "--batch-size", "3"]
    result = runner.invoke(app, [*args, "--out", str(local)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--out", str(remote), *RAY_ARGS])
    assert result.exit_code == 0, result.output
    lines = remote.read_text().splitlines()
    assert lines == local.read_text().splitlines() and len(lines) == 8
    assert {Path(json.loads(line)["path"]).name for line in lines if json.loads(line)["error"]} == {
        "empty.png",
        "broken.jpg",
    }
    from detector.scoring.parquet import read_results

    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ray.parquet"), "-f", "parquet", *RAY_ARGS])
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "ray.parquet").to_pylist()
    assert [row["path"] for row in rows] == [json.loads(line)["path"] for line in lines]
    assert [row["p_ai"] for row in rows] == [json.loads(line)["p_ai"] for line in lines]


def test_actor_killed_mid_run_is_retried_without_losing_or_repeating_a_line(tmp_path):
    from detector.scoring.ray_engine import score_ray

    folder = images(tmp_path / "imgs", 12)
    score_stream([folder], plain(), tmp_path / "local.jsonl", batch_size=2)
    marker = tmp_path / "crashed"
    summary = score_ray(
        [folder],
        CrashOnce(str(marker)),
        tmp_path / "ray.jsonl",
        batch_size=2,
        workers=2,
        cpus_per_worker=0.25,
    )
    assert marker.exists(), "the actor scoring img05 should have died once"
    lines = (tmp_path / "ray.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "local.jsonl").read_text().splitlines()
    assert summary.scored == 14 and summary.errors == 2


def test_parquet_output_and_resume_score_only_what_is_missing(tmp_path):
    from detector.scoring.parquet import read_results
    from detector.scoring.ray_engine import score_ray

    folder = images(tmp_path / "imgs", 8)
    score_stream([folder], plain(), tmp_path / "local.csv", fmt="csv", batch_size=4)
    # A run killed after its first 5 lines: the partial output a resume starts from.
    lines = (tmp_path / "local.csv").read_text().splitlines(keepends=True)
    (tmp_path / "ray.csv.partial").write_text("".join(lines[:6]) + "/torn/line,0.")
    summary = score_ray(
        [folder], plain, tmp_path / "ray.csv", fmt="csv", resume=True, batch_size=4, cpus_per_worker=0.25
    )
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert summary.skipped == 5 and summary.scored == 5

    summary = score_ray([folder], plain, tmp_path / "ray.parquet", fmt="parquet", cpus_per_worker=0.25)
    table = read_results(tmp_path / "ray.parquet").to_pylist()
    csv_rows = (tmp_path / "local.csv").read_text().splitlines()[1:]
    assert [row["path"] for row in table] == [line.split(",")[0] for line in csv_rows]
    assert sum(row["error"] is not None for row in table) == 2
    assert all(0 <= row["p_ai"] <= 1 for row in table if row["error"] is None)


def test_killed_ray_driver_resumes_without_losing_or_repeating_lines(bundle, tmp_path, cluster):  # noqa: F811
    folder = tmp_path / "many"
    n = 60
    for i in range(n):
        write_rgb(folder / f"img{i:03d}.png", size=(32, 32), seed=1000 + i)
    (folder / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "scores.jsonl"
    partial = Path(str(out) + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "detector", "score", str(folder), "--model", str(bundle), "--out", str(out)]
    args += [*RAY_ARGS, "--address", cluster, "--batch-size", "2"]
    # Kill the driver once some lines are out. Ray's actors can finish a small folder between two polls,
    # so a run that wrote everything before the kill landed is started again (the race is the machine's,
    # not the engine's); the resume below is what is tested.
    for _attempt in range(3):
        partial.unlink(missing_ok=True)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and len(partial.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        assert not out.exists(), "the killed run must not have produced the final output"
        done_before = len(partial.read_text().splitlines())
        if done_before < n + 1:
            break
    assert 2 <= done_before < n + 1
    result = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == n + 1 and len(set(paths)) == n + 1
    assert f"skipped {done_before} already done" in " ".join(result.stderr.split())


def test_features_extract_on_ray_fills_the_same_cache_as_the_local_engine(folder_corpus, tmp_path):
    from detector.backbones import create_backbone
    from detector.features import ExtractionReport, FeatureCache, extract_features
    from detector.features.ray_extract import BackboneRecipe, RayCompute

    (folder_corpus / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    backbone = create_backbone("clip:tiny-vit")  # random weights: the workers get these very ones
    on_ray = RayCompute(BackboneRecipe("clip:tiny-vit"), workers=2, cpus_per_worker=0.25, shard_size=5)
    first = ExtractionReport()
    from_ray, valid_ray, failed = extract_features(
        folder_corpus,
        backbone,
        tmp_path / "ray-cache",
        batch_size=4,
        report=first,
        compute=on_ray,
        hasher=on_ray.hash,
    )
    assert first.computed == 16 and [Path(p).name for p, _ in failed] == ["broken.png"]
    local, valid, _ = extract_features(folder_corpus, backbone, tmp_path / "local-cache", batch_size=4)
    assert valid_ray == valid
    np.testing.assert_allclose(from_ray, local, rtol=1e-4, atol=1e-5)
    again = ExtractionReport()
    cached, _, _ = extract_features(folder_corpus, backbone, tmp_path / "ray-cache", report=again)
    assert (again.cached, again.computed) == (16, 0)  # every shard a worker wrote was indexed
    np.testing.assert_array_equal(cached, from_ray)
    with FeatureCache.for_extractor(tmp_path / "ray-cache", backbone) as cache:
        assert cache.stats().problems == [] and cache.stats().shards >= 4  # 16 rows, at most 5 a shard

    args = ["features", "extract", str(folder_corpus), "--backbone", "clip:tiny-vit", "--batch-size", "4"]
    out = tmp_path / "out"
    result = runner.invoke(
        app, [*args, "--cache-dir", str(tmp_path / "cli"), "--out", str(out), *RAY_ARGS[:6]]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert (report["total"], report["computed"], len(report["failed"])) == (17, 16, 1)
    assert np.load(out / "features.npy").shape[0] == 16


def test_ray_engine_scores_a_sharded_corpus_like_the_local_engine(folder_corpus, tmp_path):
    from detector.corpus.shards import write_shards
    from detector.scoring.ray_engine import score_ray

    (folder_corpus / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shards = tmp_path / "shards"
    write_shards(folder_corpus, shards, images_per_shard=5, row_group_size=2)
    score_stream([shards], plain(), tmp_path / "local.jsonl", batch_size=4)
    score_ray([shards], plain, tmp_path / "ray.jsonl", batch_size=4, workers=2, cpus_per_worker=0.25)
    lines = (tmp_path / "ray.jsonl").read_text().splitlines()
    assert lines == (tmp_path / "local.jsonl").read_text().splitlines() and len(lines) == 17
    assert sum(json.loads(line)["error"] is not None for line in lines) == 1
    assert all(".parquet::" in json.loads(line)["path"] for line in lines)
