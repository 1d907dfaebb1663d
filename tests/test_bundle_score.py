"""Bundles, load_detector and `detector score`: a tiny trained checkpoint, bundled and scored end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector import load_detector
from detector.cli import app
from detector.config import load_config
from detector.result import ProvenanceResult
from tests.conftest import write_rgb, write_tiny_ddpm

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle


def mixed_folder(folder: Path, n: int = 6) -> Path:
    for i in range(n):
        write_rgb(folder / f"img{i}.png", size=(40, 36), seed=500 + i)
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_detector_scores_one_image_with_its_evidence(bundle, tmp_path):
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["format"] == "detector.bundle/1"
    assert meta["branches"] == ["attribution_distance", "detector"]
    assert {"detector", "backbone", "passive", "attribution", "fusion"} <= set(meta["versions"])

    det = load_detector(bundle)
    image = write_rgb(tmp_path / "one.png", size=(48, 40), seed=7)
    result = det.score(image)
    assert isinstance(result, ProvenanceResult) and result.ok
    assert 0.0 <= result.p_ai <= 1.0 and result.verdict in ("real", "ai-generated", "uncertain")
    assert set(result.branches) == {"detector", "attribution_distance"}
    assert result.attribution is not None and result.attribution.top_k[0][0] in {"gen_a", "gen_b", "gen_c"}
    assert result.versions == meta["versions"]
    # The same pixels as an array and as a path give the same answer (one preprocessing path).
    from detector.io import load_image_array

    again = det.score(load_image_array(image), path=str(image))
    assert again.p_ai == pytest.approx(result.p_ai, abs=1e-6)


def test_score_many_keeps_order_and_reports_bad_files(bundle, tmp_path):
    folder = mixed_folder(tmp_path / "in", n=3)
    det = load_detector(bundle)
    results = list(det.score_many([folder], batch_size=2))
    by_name = {Path(r.path).name: r for r in results}
    assert set(by_name) == {"img0.png", "img1.png", "img2.png", "empty.png", "broken.jpg"}
    assert by_name["empty.png"].error and by_name["broken.jpg"].error
    assert all(by_name[f"img{i}.png"].ok for i in range(3))


def test_score_cli_writes_one_line_per_file_in_jsonl_and_csv(bundle, tmp_path):
    folder = mixed_folder(tmp_path / "in")
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app, ["score", str(folder), "--model", str(bundle), "--out", str(out), "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = [ProvenanceResult.from_json(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8  # 6 good + empty + broken (the .txt is not an image file)
    errors = {Path(r.path).name: r.error for r in lines if r.error}
    assert set(errors) == {"empty.png", "broken.jpg"}
    assert all(r.verdict is not None for r in lines if r.ok)

    csv_out = tmp_path / "scores.csv"
    result = runner.invoke(
        app, ["score", str(folder / "*.png"), "--model", str(bundle), "--out", str(csv_out), "-f", "csv"]
    )
    assert result.exit_code == 0, result.output
    rows = csv_out.read_text().splitlines()
    assert rows[0].startswith("path,p_ai,verdict") and len(rows) == 1 + 7  # header + 6 good + empty.png

    table = runner.invoke(app, ["score", str(folder / "img0.png"), "--model", str(bundle), "-f", "table"])
    assert table.exit_code == 0 and "img0.png" in table.output


def test_score_cli_errors_cleanly(bundle, tmp_path):
    result = runner.invoke(app, ["score", "x.png", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a detector bundle" in " ".join(result.output.split())
    result = runner.invoke(app, ["score", "x.png", "--model", str(bundle), "--resume"])
    assert result.exit_code == 2 and "--resume needs --out" in " ".join(result.output.split())


def test_score_cli_killed_mid_run_resumes_without_losing_or_repeating_lines(bundle, tmp_path):
    folder = tmp_path / "many"
    for i in range(40):
        write_rgb(folder / f"img{i:03d}.png", size=(32, 32), seed=1000 + i)
    (folder / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "scores.jsonl"
    partial = Path(str(out) + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "detector", "score", str(folder), "--model", str(bundle), "--out", str(out)]
    proc = subprocess.Popen(
        [*args, "--batch-size", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not out.exists(), "the killed run must not have produced the final output"
    done_before = len(partial.read_text().splitlines())
    assert 4 <= done_before < 41
    with open(partial, "a") as handle:  # a write torn by the kill
        handle.write('{"path": "torn')
    result = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == 41 and len(set(paths)) == 41
    assert f"skipped {done_before} already done" in " ".join(result.stderr.split())


def test_demo_small_runs_every_stage_on_a_given_corpus(bundle, tmp_path):
    """`detector demo --small --corpus C`: train, bundle, test table, attribution, mixed-folder verdicts."""
    manifest = bundle.parent / "corpus" / "manifest.csv"
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--small", "--corpus", str(manifest), "--out", str(out), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "each passive branch alone vs the fused p_ai" in text and "example verdicts" in text
    assert "What it is not" in text
    report = json.loads((out / "report.json").read_text())
    assert set(report["test_branches"]) == {"detector", "attribution_distance", "fused"}
    assert (out / "roc_test.png").stat().st_size > 0 and (out / "confusion_test.png").stat().st_size > 0
    lines = (out / "mixed_scores.jsonl").read_text().splitlines()
    errors = [json.loads(line) for line in lines if json.loads(line)["error"]]
    assert len(errors) == 1 and "broken" in errors[0]["path"]
    assert load_detector(out / "bundle").score(write_rgb(tmp_path / "x.png", seed=3)).ok


def test_rigid_and_inversion_branches_fit_score_and_switch_off(bundle, tmp_path):
    """A bundle fitted with an inversion model (copied in) scores RIGID and inversion per image; loading it
    with either branch off scores with the fusion model fitted without that branch."""
    import numpy as np

    from detector.bundle import BundleConfig, ProvenanceDetector, build_bundle

    manifest = bundle.parent / "corpus" / "manifest.csv"
    ddpm = write_tiny_ddpm(tmp_path / "ddpm")
    config = load_config(
        BundleConfig,
        None,
        [
            f"checkpoint={bundle.parent / 'run'}",
            f"corpus={manifest}",
            "fusion.min_rows=5",
            f"inversion_model={ddpm}",
            "rigid=true",
            "rigid_config.draws=1",
        ],
    )
    report = build_bundle(config, tmp_path / "b")
    assert {"rigid", "inversion", "fused"} <= set(report["validation_branches"])
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["branches"] == ["attribution_distance", "detector", "inversion", "rigid"]
    assert (tmp_path / "b" / "inversion-model" / "unet").is_dir()  # small local model: copied
    assert meta["versions"]["rigid"] == "lambda=0.05;draws=1;seed=0"
    image = write_rgb(tmp_path / "x.png", size=(40, 36), seed=7)

    full = load_detector(tmp_path / "b").score(image)
    assert full.ok and set(full.branches) == {"detector", "attribution_distance", "rigid", "inversion"}
    assert all(np.isfinite(v) for v in full.branches.values())
    assert 0.0 <= full.branches["rigid"] <= 2.0  # 1 - cosine similarity
    # each branch is what its model computes on the canonical pixels (detector.data), at the bundle's size
    from detector.data import decode, image_batch
    from detector.features.rigid import RigidConfig, rigid_score

    det = load_detector(tmp_path / "b")
    pixels = image_batch([decode(image)], det.image_size)
    direct = rigid_score(det.model.backbone, pixels, RigidConfig(**meta["rigid"]))
    assert full.branches["rigid"] == pytest.approx(float(direct[0]), rel=1e-4, abs=1e-6)
    direct = det.inversion.decision(det.inversion.features([decode(image)]))
    assert full.branches["inversion"] == pytest.approx(float(direct[0]), rel=1e-4, abs=1e-6)

    fast = ProvenanceDetector.load(tmp_path / "b", rigid=False, inversion=False)
    result = fast.score(image)
    assert set(result.branches) == {"detector", "attribution_distance"}
    present = {k: full.branches[k] for k in result.branches}
    assert result.branches == pytest.approx(present)
    expected = fast.fusion.predict_one(present)  # the fusion's own model without rigid/inversion
    assert result.p_ai == pytest.approx(expected) and result.p_ai != pytest.approx(full.p_ai)

    out = tmp_path / "scores.jsonl"
    cli = runner.invoke(
        app, ["score", str(image), "--model", str(tmp_path / "b"), "--no-inversion", "--out", str(out)]
    )
    assert cli.exit_code == 0, cli.output
    line = json.loads(out.read_text())
    assert "inversion" not in line["branches"] and "rigid" in line["branches"]
