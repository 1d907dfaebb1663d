"""The scoring pipeline and the streaming writer: shared work, per-image errors, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_rgb
from PIL import Image

from detector.fusion import FusionConfig, FusionModel
from detector.result import AttributionEvidence, ProvenanceResult, WatermarkEvidence
from detector.scoring import (
    Batch,
    Pipeline,
    ScoringError,
    expand_inputs,
    merge_outputs,
    score_distributed,
    score_stream,
)

REPO = Path(__file__).resolve().parents[1]


def brightness(batch: Batch) -> list[float]:
    """A stand-in passive branch: mean brightness as a probability (the tests only need a deterministic score)."""
    return [float(np.asarray(img, dtype=np.float32).mean() / 255) for img in batch.images]


def make_folder(root: Path, n: int = 9) -> list[str]:
    for i in range(n):
        write_rgb(root / "imgs" / f"img{i:02d}.png", size=(20, 16), seed=i)
    (root / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "imgs" / "empty.jpg").write_bytes(b"")
    return sorted(str(p) for p in (root / "imgs").iterdir())


def test_branches_share_work_through_the_batch_memo():
    calls = {"features": 0}

    def features(batch: Batch):
        calls["features"] += 1
        return np.stack([np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255 for img in batch.images])

    def detector_head(batch: Batch):
        return list(batch.memo("features", features)[:, 0])

    def attribution(batch: Batch):
        feats = batch.memo("features", features)
        return [
            AttributionEvidence(top_k=[("gen_a", float(f[1])), ("gen_b", 1 - float(f[1]))]) for f in feats
        ]

    pipeline = Pipeline(passive={"head": detector_head}, attribution=attribution, versions={"head": "v1"})
    images = [np.full((8, 8, 3), v, np.uint8) for v in (10, 128, 250)]
    results = pipeline.score_batch(Batch(["a", "b", "c"], [Image.fromarray(a) for a in images]))
    assert calls["features"] == 1
    assert [r.verdict for r in results] == ["real", "uncertain", "ai-generated"]
    assert results[2].attribution.top_k[0][0] == "gen_a" and results[0].versions == {"head": "v1"}


def test_one_image_failing_a_branch_costs_only_its_own_result(tmp_path):
    def picky(batch: Batch):
        if any("bad" in p for p in batch.paths):
            raise RuntimeError("cannot handle this one")
        return [0.9] * len(batch)

    def watermark(batch: Batch):
        return [WatermarkEvidence(detected=True, p_value=1e-9, generator="ours") for _ in batch.paths]

    pipeline = Pipeline(passive={"picky": picky}, watermark=watermark)
    img = Image.new("RGB", (8, 8))
    results = pipeline.score_batch(Batch(["ok1", "bad", "ok2"], [img, img, img]))
    assert [r.error is None for r in results] == [True, False, True]
    assert "picky" in results[1].error and "cannot handle" in results[1].error
    assert results[0].verdict == "watermarked" and results[0].generator == "ours"
    single = pipeline.score(tmp_path / "missing.png")
    assert single.error == "file not found"


def test_pipeline_refuses_branches_it_cannot_combine():
    with pytest.raises(ValueError, match="need a fitted fusion"):
        Pipeline(passive={"a": brightness, "b": brightness})
    fusion = FusionModel(FusionConfig(min_rows=2)).fit({"a": [0.1, 0.9, 0.2, 0.8]}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="not fitted on branch"):
        Pipeline(passive={"b": brightness}, fusion=fusion)
    with pytest.raises(ValueError, match="at least one"):
        Pipeline()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_stream_writes_one_line_per_file_and_resumes_a_finished_output(tmp_path, fmt):
    files = make_folder(tmp_path)
    pipeline = Pipeline(passive={"bright": brightness}, versions={"bright": "test"})
    out = tmp_path / f"scores.{fmt}"
    summary = score_stream(
        [tmp_path / "imgs", str(tmp_path / "imgs" / "img00.png")],
        pipeline,
        out,
        fmt=fmt,
        batch_size=4,
        workers=2,
    )
    assert summary.total == len(files) and summary.errors == 2 and summary.skipped == 1  # img00 given twice
    if fmt == "jsonl":
        rows = [ProvenanceResult.from_json(line) for line in out.read_text().splitlines()]
        paths, errors = [r.path for r in rows], {r.path: r.error for r in rows}
    else:
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        paths, errors = [r["path"] for r in rows], {r["path"]: r["error"] or None for r in rows}
        assert "branch.bright" in rows[0] and rows[0]["version.bright"] == "test"
    assert paths == files  # input order, each file once
    assert "empty" in errors[str(tmp_path / "imgs" / "empty.jpg")]
    assert errors[str(tmp_path / "imgs" / "broken.png")]
    assert not out.with_name(out.name + ".partial").exists()
    # Resuming a finished output with one new file scores only that file.
    write_rgb(tmp_path / "imgs" / "new.png", size=(20, 16), seed=99)
    again = score_stream([tmp_path / "imgs"], pipeline, out, fmt=fmt, resume=True)
    assert again.scored == 1 and again.skipped == len(files) and again.total == len(files) + 1


def test_shards_merge_to_the_single_run(tmp_path):
    make_folder(tmp_path)
    pipeline = Pipeline(passive={"bright": brightness})
    parts = []
    for rank in range(3):
        part = tmp_path / f"part{rank}.jsonl"
        score_stream([tmp_path / "imgs"], pipeline, part, shard=(rank, 3))
        parts.append(part)
    merged = merge_outputs(parts, tmp_path / "merged.jsonl")
    single = score_stream([tmp_path / "imgs"], pipeline, tmp_path / "single.jsonl")
    assert sorted(merged.read_text().splitlines()) == sorted(
        (tmp_path / "single.jsonl").read_text().splitlines()
    )
    assert single.total == 11
    assert list(expand_inputs([str(tmp_path / "imgs" / "img0*.png")]))[:2] == [
        str(tmp_path / "imgs" / "img00.png"),
        str(tmp_path / "imgs" / "img01.png"),
    ]
    with pytest.raises(ScoringError, match="format"):
        score_stream([tmp_path / "imgs"], pipeline, tmp_path / "x.txt", fmt="txt")


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from detector.scoring import Pipeline, score_stream

    folder, out, log, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "resume"

    def slow(batch):
        time.sleep(0.15)
        with open(log, "a") as handle:
            handle.write("".join(p + "\\n" for p in batch.paths))
        return [float(np.asarray(img).mean() / 255) for img in batch.images]

    score_stream([folder], Pipeline(passive={"slow": slow}), out, batch_size=2, resume=resume)
    """
)


def test_killed_run_resumes_without_rescoring_or_losing_lines(tmp_path):
    files = make_folder(tmp_path, n=24)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out, log = tmp_path / "scores.jsonl", tmp_path / "scored.log"
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, str(script), str(tmp_path / "imgs"), str(out), str(log)]
    proc = subprocess.Popen([*args, "fresh"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the killed run must not have produced the final output"
    lines_before = partial.read_text().count("\n")
    assert 6 <= lines_before < len(files)
    with open(partial, "a") as handle:  # simulate a write torn by the kill
        handle.write('{"path": "torn')
    first_run = set(log.read_text().splitlines())
    log.unlink()
    subprocess.run([*args, "resume"], env=env, check=True, timeout=120)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == files  # every file exactly once
    rescored = set(log.read_text().splitlines())
    done_before = {r["path"] for r in rows[:lines_before]}
    assert not (rescored & done_before), "resume re-scored images that were already written"
    assert first_run | rescored >= {f for f in files if "broken" not in f and "empty" not in f}
    assert not partial.exists()


def test_ranks_write_one_merged_output(tmp_path):
    """Two ranks (threads here; processes under torchrun) score their shards and rank 0 merges them."""
    import threading

    files = make_folder(tmp_path, n=7)
    out = tmp_path / "merged.jsonl"
    gate = threading.Barrier(2)
    pipeline = Pipeline(passive={"bright": brightness})
    summaries = {}

    def rank(r):
        summaries[r] = score_distributed(
            [tmp_path / "imgs"], pipeline, out, barrier=gate.wait, shard=(r, 2), batch_size=2
        )

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == files
    assert (
        summaries[0].total + summaries[1].total == len(files) and summaries[0].total > 0 < summaries[1].total
    )
    assert not list(tmp_path.glob("merged.jsonl.rank*"))


def test_attribution_head_as_a_branch_reuses_the_shared_features():
    from detector.attribution import AttributionHead
    from detector.scoring import attribution_branch

    calls = {"n": 0}

    def colour(batch: Batch) -> np.ndarray:
        calls["n"] += 1
        return np.stack([np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255 for img in batch.images])

    rng = np.random.default_rng(0)
    red = np.clip(rng.normal([0.8, 0.1, 0.1], 0.03, (30, 3)), 0, 1)
    blue = np.clip(rng.normal([0.1, 0.1, 0.8], 0.03, (30, 3)), 0, 1)
    head = AttributionHead().fit(np.concatenate([red, blue]), ["red_gen"] * 30 + ["blue_gen"] * 30)
    head.fit_thresholds(np.concatenate([red, blue]), ["red_gen"] * 30 + ["blue_gen"] * 30)
    shared = lambda batch: batch.memo("colour", colour)  # noqa: E731
    pipeline = Pipeline(
        passive={"red": lambda batch: list(shared(batch)[:, 0])},
        attribution=attribution_branch(head, shared, top_k=2),
    )
    images = [Image.new("RGB", (8, 8), c) for c in ((204, 25, 25), (25, 25, 204), (25, 204, 25))]
    results = pipeline.score_batch(Batch(["r", "b", "g"], images))
    assert calls["n"] == 1
    assert [r.attribution.generator for r in results] == ["red_gen", "blue_gen", "unknown"]
    assert len(results[0].attribution.top_k) == 2 and results[0].attribution.score_name == "mahalanobis"


def test_backbone_features_run_one_forward_per_batch_whoever_asks():
    import torch

    from detector.backbones import create_backbone
    from detector.scoring import backbone_features

    torch.manual_seed(0)
    backbone = create_backbone("timm:test_efficientnet")
    features = backbone_features(backbone)
    forwards = {"n": 0}
    backbone.register_forward_hook(lambda *args: forwards.__setitem__("n", forwards["n"] + 1))
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8))
        for i in range(3)
    ]
    batch = Batch(["a", "b", "c"], images)
    first, again = features(batch), features(batch)
    assert first.shape == (3, backbone.feature_dim) and first is again and forwards["n"] == 1
    alone = features(Batch(["b"], [images[1]]))
    np.testing.assert_allclose(
        alone[0], first[1], rtol=1e-4, atol=1e-5
    )  # batching does not change an image's features


def test_watermark_decoder_results_become_evidence_and_the_fusion_decides():
    from types import SimpleNamespace

    from detector.scoring import watermark_branch

    class Decoder:  # the shape of detector.watermark.Watermarker.detect_array's answer
        def detect_array(self, image, path=None):
            marked = image.mean() > 128
            return SimpleNamespace(
                watermarked=marked,
                p_value=1e-9 if marked else 0.4,
                bit_accuracy=0.97 if marked else 0.5,
                bits="0110",
                payload=7 if marked else None,
                record={"generator": "our-sd", "payload_id": 7} if marked else None,
            )

    pipeline = Pipeline(passive={"bright": brightness}, watermark=watermark_branch(Decoder()))
    results = pipeline.score_batch(
        Batch(["dark", "light"], [Image.new("RGB", (4, 4), (20,) * 3), Image.new("RGB", (4, 4), (200,) * 3)])
    )
    assert results[0].verdict == "real" and results[0].watermark.detected is False
    assert results[1].verdict == "watermarked" and results[1].generator == "our-sd"
    assert results[1].watermark.payload == "7" and results[1].watermark.record["payload_id"] == 7
