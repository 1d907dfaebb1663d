"""Hostile and broken inputs through every entry point that reads user files (issue 14).

One parametrised test runs the bad-input corpus (:mod:`detector.testing.badinputs`, 50+ kinds) through
`detector score` (JSONL and CSV), `detector corpus index`, `detector watermark detect`,
`detector attribute predict` and ``load_detector().score_many``: every file gets exactly one line (or,
for a file a scan passes by, is named), valid odd files are read, broken ones get an error, nothing
crashes and the run goes on. The other tests pin each guard on its own.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.io import path_from_cells
from detector.testing.badinputs import make_bad_inputs
from tests.conftest import build_tiny_bundle

runner = CliRunner()
ENTRY_POINTS = [
    "score-jsonl",
    "score-csv",
    "corpus-index",
    "watermark-detect",
    "attribute-predict",
    "score-many",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bad-bundle"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinputs")
    made = make_bad_inputs(root / "real")
    yield root, made
    for item in made:  # let pytest clean up the unreadable file
        if os.path.lexists(item.path) and not os.path.islink(item.path) and os.path.isfile(item.path):
            os.chmod(item.path, 0o644)


def _attribute_head(tmp_path: Path) -> Path:
    """A head fitted on random features of the test backbone, recording that backbone (reads images)."""
    import torch

    from detector.attribution import FeatureSet, save_features
    from detector.backbones import create_backbone, save_state_dict

    torch.manual_seed(0)
    weights = save_state_dict(create_backbone("timm:test_efficientnet").model, tmp_path / "bb.safetensors")
    dim = create_backbone("timm:test_efficientnet", pretrained=str(weights)).feature_dim
    rng = np.random.default_rng(0)
    gens = [g for g in ("gen_a", "gen_b") for _ in range(10)]
    feats = rng.normal(size=(20, dim)).astype(np.float32) + np.repeat([[0.0], [3.0]], 10, axis=0)
    save_features(FeatureSet(feats, generators=gens, splits=["train"] * 14 + ["val"] * 6), tmp_path / "f.npz")
    head = tmp_path / "head.safetensors"
    args = ["--backbone", "timm:test_efficientnet", "--pretrained", str(weights)]
    result = runner.invoke(app, ["attribute", "fit", str(tmp_path / "f.npz"), "--out", str(head), *args])
    assert result.exit_code == 0, result.output
    return head


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _run(
    entry: str, folder: Path, bundle: Path, tmp_path: Path, made: list
) -> tuple[dict[str, str | None], set[str], str]:
    """Run one entry point over ``folder``: ({path: error or None}, {paths named as passed by}, output)."""
    rows: dict[str, str | None] = {}
    passed: set[str] = set()
    output = ""

    def add(path: str, error: str | None) -> None:
        assert path not in rows, f"{entry}: {path!r} appears twice"
        rows[path] = error

    if entry in ("score-jsonl", "score-csv"):
        fmt = entry.split("-")[1]
        out, summary = tmp_path / f"scores.{fmt}", tmp_path / "summary.json"
        result = runner.invoke(
            app,
            ["score", str(folder), "-m", str(bundle), "-o", str(out), "-f", fmt, "--summary", str(summary)],
        )
        output = result.output
        assert result.exit_code == 0, output
        if fmt == "jsonl":
            for line in _lines(out):
                add(line["path"], line["error"])
        else:
            with open(out, encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle):
                    add(path_from_cells(row["path"], row["path_bytes"]), row["error"] or None)
        passed = {item["path"] for item in json.loads(summary.read_text())["not_read_files"]}
    elif entry == "corpus-index":
        out, summary = tmp_path / "index" / "manifest.csv", tmp_path / "summary.json"
        result = runner.invoke(
            app, ["corpus", "index", str(folder.parent), "--out", str(out), "--summary-json", str(summary)]
        )
        output = result.output
        assert result.exit_code == 0, output
        from detector.corpus import read_manifest

        for record in read_manifest(out).records:
            add(str(folder.parent / record.path), None)
        for item in json.loads(summary.read_text())["skipped"]:
            path = str(folder.parent / item["path"])
            if item["reason"].startswith(("hidden", "not an image file extension")):
                passed.add(path)
            else:
                add(path, item["reason"])
    elif entry == "watermark-detect":
        key, out = tmp_path / "k.key", tmp_path / "wm.jsonl"
        assert runner.invoke(app, ["watermark", "keygen", str(key)]).exit_code == 0
        result = runner.invoke(
            app, ["watermark", "detect", str(folder), "-k", str(key), "--out", str(out), "--search", "fast"]
        )
        output = result.output
        assert result.exit_code == 1, output  # unreadable files fail the exit code, after every line
        for line in _lines(out):
            add(line["path"], line.get("error"))
        passed = {item.path for item in made if item.expect == "passed" and Path(item.path).name in output}
    elif entry == "attribute-predict":
        out = tmp_path / "attr.jsonl"
        result = runner.invoke(
            app, ["attribute", "predict", str(_attribute_head(tmp_path)), str(folder), "-o", str(out)]
        )
        output = result.output
        assert result.exit_code == 0, output
        for line in _lines(out):
            error = line.get("error")
            if error and error.startswith(("hidden", "not an image file extension")):
                passed.add(line["path"])
            else:
                add(line["path"], error)
    else:
        from detector import load_detector

        for result in load_detector(bundle).score_many([folder, folder]):  # twice: never yielded twice
            add(result.path, result.error)
    return rows, passed, output


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_gives_one_line_per_hostile_file_and_goes_on(entry, bad, bundle, tmp_path):
    root, made = bad
    folder = root / "real"
    rows, passed, output = _run(entry, folder, bundle, tmp_path, made)
    assert "Traceback" not in output
    for item in made:
        if item.expect == "passed":
            if entry != "score-many":  # a library iterator yields results only
                assert item.path in passed, f"{entry}: {item.kind} was dropped without being named"
            assert item.path not in rows
            continue
        assert item.path in rows, f"{entry}: no line for {item.kind} ({item.path!r})"
        error = rows[item.path]
        if item.expect == "ok":
            assert error is None, f"{entry}: {item.kind} should be read: {error}"
        elif item.expect == "error":
            assert error, f"{entry}: {item.kind} should be refused with a reason"
    expected = {item.path for item in made if item.expect != "passed"}
    assert set(rows) == expected, f"{entry}: unexpected lines {sorted(set(rows) - expected)}"


def _edit_meta(**changes):
    def edit(folder: Path, tmp: Path) -> None:
        meta = json.loads((folder / "bundle.json").read_text())
        for key, value in changes.items():
            meta[key] = value(folder, tmp) if callable(value) else value
        (folder / "bundle.json").write_text(json.dumps(meta))

    return edit


def _outside_head(folder: Path, tmp: Path) -> str:
    shutil.copy(folder / "attribution.safetensors", tmp / "outside.safetensors")
    return str(tmp / "outside.safetensors")


def _symlink_out(folder: Path, tmp: Path) -> None:
    shutil.copy(folder / "attribution.safetensors", tmp / "outside.safetensors")
    (folder / "attribution.safetensors").unlink()
    (folder / "attribution.safetensors").symlink_to(tmp / "outside.safetensors")


def _huge_header(folder: Path, tmp: Path) -> None:
    import struct

    (folder / "fusion.safetensors").write_bytes(struct.pack("<Q", 500 * 2**20) + b"{" * 64)


def _registry_ref(folder: Path, tmp: Path) -> dict:
    from detector.watermark.payload import generate_key

    generate_key(tmp / "k.key")
    return {"key": str(tmp / "k.key"), "registry": str(tmp / "typo" / "registry.db")}


def _hub_inversion(folder: Path, tmp: Path) -> str:
    from detector.io.tensors import save_arrays

    meta = {
        "format": "detector.inversion-branch/1",
        "model": "some-org/some-model",
        "config": {},
        "names": [],
    }
    save_arrays(folder / "inversion.safetensors", {"mean": np.zeros(1)}, meta)
    return "inversion.safetensors"


TAMPERINGS = {
    "absolute-part": (_edit_meta(attribution=_outside_head), "leaves the bundle"),
    "dotdot-part": (_edit_meta(attribution="../outside.safetensors"), "leaves the bundle"),
    "symlink-out": (_symlink_out, "outside the bundle"),
    "hash-mismatch": (lambda f, t: open(f / "fusion.safetensors", "ab").write(b" "), "sha256 does not match"),
    "empty-calibration": (lambda f, t: (f / "detector" / "calibration.json").write_text("{}"), "calibration"),
    "huge-safetensors-header": (_huge_header, "exceeds the limit"),
    "bundle-json-list": (lambda f, t: (f / "bundle.json").write_text("[]"), "JSON object"),
    "bundle-json-broken": (lambda f, t: (f / "bundle.json").write_text("{"), "not valid JSON"),
    "unknown-field": (_edit_meta(surprise=1), "unknown field"),
    "wrong-type": (_edit_meta(versions=[1, 2]), "wrong type"),
    "unknown-rigid-field": (_edit_meta(rigid={"noise_level": 0.1, "bogus": 1}), "bogus"),
    "missing-registry": (_edit_meta(watermark=_registry_ref), "no such registry"),
    "hub-inversion-model": (_edit_meta(inversion=_hub_inversion), "allow_external"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_untrusted_bundle_is_confined_verified_and_fails_in_one_clear_error(name, bundle, tmp_path):
    from detector.bundle import BundleError, ProvenanceDetector

    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    tamper, message = TAMPERINGS[name]
    tamper(folder, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(BundleError, match=message):
        ProvenanceDetector.load(folder)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # loading created nothing


@pytest.mark.slow
def test_score_cli_names_an_empty_folder_and_an_out_folder_before_any_work(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["score", str(tmp_path / "empty"), "-m", str(bundle), "-o", str(tmp_path / "s.jsonl")]
    )
    assert (
        result.exit_code == 1 and "empty" in result.output and "no image" in " ".join(result.output.split())
    )
    (tmp_path / "outdir").mkdir()
    result = runner.invoke(
        app, ["score", str(tmp_path / "empty"), "-m", str(bundle), "-o", str(tmp_path / "outdir")]
    )
    assert result.exit_code == 2 and "is a folder" in " ".join(result.output.split())
