"""Issue 14 guards one by one (fast): names, CSV safety, resume, memory bounds, file kinds, keys, registry,
manifests, training data. The whole bad-input corpus over every entry point is tests/test_badinputs.py."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.corpus import CorpusError, Record, read_manifest, write_manifest
from detector.corpus.manifest import Corpus
from detector.errors import DetectorError
from detector.io import (
    ImageLoadError,
    csv_cell,
    iter_image_files,
    load_image,
    path_from_cells,
    probe_image,
)
from detector.result import ProvenanceResult
from detector.scoring import Batch, Pipeline, ScoringError, score_stream
from detector.scoring.stream import ResultWriter, expand_inputs
from tests.conftest import write_rgb

ODD_NAMES = [
    "café.png",
    "new\nline.png",
    "carriage\rreturn.png",
    'quo"te,comma.png',
    '=HYPERLINK("http:__evil.example_x","click").png',
    "+cmd.png",
    "-1.png",
    "@x.png",
    "'quoted.png",
]


def brightness(batch: Batch) -> list[float]:
    return [float(np.asarray(img, dtype=np.float32).mean() / 255) for img in batch.images]


def odd_folder(root: Path) -> list[str]:
    folder = root / "odd"
    paths = [str(write_rgb(folder / name, size=(20, 18), seed=i)) for i, name in enumerate(ODD_NAMES)]
    raw = os.fsencode(folder) + b"/caf\xe9-latin1.png"
    Image.fromarray(np.zeros((18, 20, 3), np.uint8)).save(raw, format="PNG")
    return sorted([*paths, os.fsdecode(raw)])


def read_paths(out: Path, fmt: str) -> list[str]:
    if fmt == "jsonl":
        return [
            ProvenanceResult.from_json(line).path for line in out.read_text(encoding="utf-8").splitlines()
        ]
    with open(out, encoding="utf-8", newline="") as handle:
        return [path_from_cells(row["path"], row["path_bytes"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_every_file_name_reads_back_exactly_and_resume_never_duplicates(tmp_path, fmt):
    paths = odd_folder(tmp_path)
    pipeline = Pipeline(passive={"bright": brightness})
    out = tmp_path / f"scores.{fmt}"
    summary = score_stream([tmp_path / "odd"], pipeline, out, fmt=fmt, batch_size=3)
    assert summary.total == len(paths) and summary.errors == 0
    assert sorted(read_paths(out, fmt)) == paths  # non-UTF-8, CR, newline, quotes: all exact
    out.read_bytes().decode("utf-8")  # the file itself stays valid UTF-8
    # Resume with another spelling of the same folder: nothing is scored twice.
    other = str(tmp_path / "odd" / ".." / "odd")
    again = score_stream([other], pipeline, out, fmt=fmt, resume=True)
    assert again.scored == 0 and again.skipped == len(paths)
    assert len(read_paths(out, fmt)) == len(paths)


def test_csv_cells_are_neutralised_against_formulas(tmp_path, monkeypatch):
    odd_folder(tmp_path)
    monkeypatch.chdir(tmp_path / "odd")  # relative inputs: the cell starts with the file name
    out = tmp_path / "scores.csv"
    names = sorted(n for n in os.listdir(".") if n.endswith(".png"))
    score_stream(names, Pipeline(passive={"bright": brightness}), out, fmt="csv")
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(row["path"].startswith("'") for row in rows) == 5  # = + - @ and the ' escape itself
    assert all(not row["path"].startswith(("=", "+", "-", "@")) for row in rows)
    assert sorted(path_from_cells(row["path"], row["path_bytes"]) for row in rows) == names
    assert csv_cell("=1+1") == "'=1+1" and csv_cell(-0.5) == -0.5  # numbers stay numbers
    assert csv_cell("'a") == "''a" and path_from_cells("''a", "") == "'a"  # the escape itself round-trips


def test_non_utf8_name_in_json_is_an_escape_that_round_trips():
    path = os.fsdecode(b"/x/caf\xe9.png")
    line = ProvenanceResult.failed(path, "some error").to_json()
    assert "\\udce9" in line and line.encode("utf-8")
    assert os.fsencode(ProvenanceResult.from_json(line).path) == b"/x/caf\xe9.png"
    assert os.fsencode(json.loads(line)["path"]) == b"/x/caf\xe9.png"  # any JSON reader, same bytes


def test_torn_csv_record_with_a_quoted_newline_is_dropped_whole(tmp_path):
    out = tmp_path / "s.csv"
    writer = ResultWriter(out, "csv")
    writer.open(resume=False)
    writer.write([ProvenanceResult.failed("/a/first.png", "e1")])
    writer.close(finished=False)
    partial = out.with_name("s.csv.partial")
    with open(partial, "a", encoding="utf-8", newline="") as handle:  # a kill mid-record: "...new\nli|"
        handle.write('"/a/new\nli')
    writer = ResultWriter(out, "csv")
    done = writer.open(resume=True)
    writer.close(finished=True)
    assert len(done) == 1 and out.read_text(encoding="utf-8").count("first.png") == 1
    assert "new" not in out.read_text(encoding="utf-8")


def test_resume_refuses_a_jsonl_written_by_another_pipeline(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(3):
        write_rgb(folder / f"{i}.png", size=(20, 16), seed=i)
    out = tmp_path / "s.jsonl"
    first = Pipeline(passive={"bright": brightness}, versions={"bright": "v1"})
    score_stream([folder], first, out)
    with pytest.raises(ScoringError, match="different pipeline configuration"):
        score_stream(
            [folder], Pipeline(passive={"bright": brightness}, versions={"bright": "v2"}), out, resume=True
        )
    with pytest.raises(ScoringError, match="different pipeline configuration"):
        score_stream(
            [folder], Pipeline(passive={"other": brightness}, versions={"bright": "v1"}), out, resume=True
        )
    assert score_stream([folder], first, out, resume=True).scored == 0


def test_out_that_is_a_folder_fails_before_scoring(tmp_path):
    calls = []

    def counting(batch: Batch) -> list[float]:
        calls.append(len(batch))
        return brightness(batch)

    write_rgb(tmp_path / "imgs" / "a.png", size=(20, 16))
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(ScoringError, match="is a folder"):
        score_stream([tmp_path / "imgs"], Pipeline(passive={"b": counting}), tmp_path / "out.jsonl")
    assert not calls


def test_folder_scans_name_what_they_pass_by(tmp_path):
    folder = tmp_path / "scan"
    write_rgb(folder / "a.png", size=(20, 16))
    write_rgb(folder / ".hidden.png", size=(20, 16))
    (folder / "vector.svg").write_text("<svg/>")
    (folder / "noext").write_bytes((folder / "a.png").read_bytes())
    (folder / "linked").symlink_to(tmp_path)
    (tmp_path / "empty").mkdir()
    skipped: list[tuple[str, str]] = []
    found = list(expand_inputs([folder, tmp_path / "empty"], on_skip=lambda p, r: skipped.append((p, r))))
    assert found == [str(folder / "a.png")]
    names = {Path(p).name: reason for p, reason in skipped}
    assert set(names) == {".hidden.png", "vector.svg", "noext", "linked", "empty"}
    assert "symbolic link" in names["linked"] and "no image" in names["empty"]


def test_odd_files_are_named_for_what_they_are(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="FIFO"):
        load_image(fifo)
    (tmp_path / "dev.png").symlink_to("/dev/zero")
    with pytest.raises(ImageLoadError, match="device"):
        load_image(tmp_path / "dev.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    with pytest.raises(ImageLoadError, match="loop"):
        load_image(tmp_path / "loop.png")
    assert issubclass(ImageLoadError, DetectorError)


def test_shape_limits_and_reduced_decoding(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 150_000)).save(thin)
    with pytest.raises(ImageLoadError, match="aspect"):
        probe_image(thin)
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(write_rgb(tmp_path / "tiny.png", size=(15, 15)), min_side=16)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(big, quality=90)
    reduced = load_image(big, keep_pixels=1_000_000)
    assert (
        reduced.size[0] * reduced.size[1] <= 1_000_000 and abs(reduced.size[0] / reduced.size[1] - 1.5) < 0.01
    )
    assert load_image(big).size == (3000, 2000)  # no reduction unless asked


def test_pipeline_minimum_side_gives_an_error_not_a_verdict():
    pipeline = Pipeline(passive={"b": brightness}, min_side=16)
    assert "too small" in pipeline.score(np.zeros((15, 15, 3), np.uint8)).error
    assert pipeline.score(np.zeros((16, 16, 3), np.uint8)).ok


def test_corrupt_jpeg_claiming_a_large_picture_is_refused(tmp_path):
    array = np.full((800, 800, 3), 90, np.uint8)
    array[:80] = np.random.default_rng(0).integers(0, 256, (80, 800, 3))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    (tmp_path / "grey.jpg").write_bytes(data[: len(data) // 8] + b"\xff\xd9")
    with pytest.raises(ImageLoadError, match="truncated or corrupt JPEG"):
        load_image(tmp_path / "grey.jpg")
    (tmp_path / "ok.jpg").write_bytes(data)
    assert load_image(tmp_path / "ok.jpg").size == (800, 800)


@pytest.mark.parametrize("fmt,ext", [("HEIF", ".heic"), ("JXL", ".jxl")])
def test_heic_and_jxl_are_readable(tmp_path, fmt, ext):
    path = tmp_path / f"x{ext}"
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(path, format=fmt)
    assert load_image(path).size == (32, 24)
    assert list(iter_image_files(tmp_path)) == [path]


def test_manifest_round_trips_odd_names_and_confines_paths(tmp_path):
    root = tmp_path / "corpus"
    paths = odd_folder(root)
    records = [Record(os.path.relpath(p, root), "real") for p in paths]
    for name in ("m.csv", "m.jsonl"):
        write_manifest(records, root / name, root)
        assert sorted(str(root / r.path) for r in read_manifest(root / name).records) == paths
    text = (root / "m.csv").read_text(encoding="utf-8")
    assert "\n=HYPERLINK" not in text and ",=HYPERLINK" not in text
    outside = tmp_path / "elsewhere.png"
    write_rgb(outside)
    (root / "evil.csv").write_text(f"path,label\n../elsewhere.png,real\n{outside},real\n")
    assert len(read_manifest(root / "evil.csv").records) == 2
    with pytest.raises(CorpusError, match="outside"):
        read_manifest(root / "evil.csv", confine=True)
    with pytest.raises(ScoringError, match="outside"):  # detector score --confine
        score_stream(
            [root / "evil.csv"], Pipeline(passive={"b": brightness}), tmp_path / "s.jsonl", confine=True
        )
    unconfined = score_stream([root / "evil.csv"], Pipeline(passive={"b": brightness}), tmp_path / "s.jsonl")
    assert unconfined.scored == 1 and unconfined.skipped == 1  # two spellings of one file: scored once


def test_one_file_with_two_labels_is_refused(tmp_path):
    corpus = Corpus([Record("a.png", "real"), Record("./a.png", "fake", generator="g")], tmp_path)
    with pytest.raises(CorpusError, match="conflicting labels"):
        corpus.check_duplicates()
    assert Corpus([Record("a.png", "real"), Record("./a.png", "real")], tmp_path).check_duplicates() == 1


def test_key_files_refused_or_warned_and_keygen_is_private_from_the_start(tmp_path, monkeypatch):
    from detector.watermark.payload import KeyFileError, KeyFileWarning, generate_key, load_key

    modes = []
    real_replace = os.replace

    def spy(src, dst):  # the mode of the temporary file at the moment it becomes the key
        modes.append(os.stat(src).st_mode & 0o777)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    key = tmp_path / "k.key"
    generate_key(key)
    monkeypatch.setattr(os, "replace", real_replace)
    assert modes == [0o600] and key.stat().st_mode & 0o777 == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_key(key)  # private: no warning
    key.chmod(0o644)
    with pytest.warns(KeyFileWarning, match="readable by other users"):
        load_key(key)
    key.chmod(0o666)
    with pytest.raises(KeyFileError, match="world-writable"):
        load_key(key)
    empty = tmp_path / "empty.key"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(KeyFileError, match="empty"):
        load_key(empty)


def test_registry_is_never_created_by_a_read_and_names_are_bounded(tmp_path):
    from detector.watermark.registry import PayloadRegistry, RegistryError

    missing = tmp_path / "typo" / "registry.db"
    with pytest.raises(RegistryError, match="no such registry"):
        PayloadRegistry(missing, create=False)
    assert not (tmp_path / "typo").exists()
    with PayloadRegistry(tmp_path / "r.db") as reg:
        reg.register("k", "sdxl")
        for bad in ("x" * 129, "gen\nname", "gen\u202ename", ""):
            with pytest.raises(RegistryError):
                reg.register("k", bad)
    with PayloadRegistry(tmp_path / "r.db", create=False) as reg:
        assert reg.lookup("k", 0).generator == "sdxl"
    (tmp_path / "other.db").write_bytes(b"")
    with pytest.raises(RegistryError):
        PayloadRegistry(tmp_path / "other.db", create=False)


def test_watermark_detect_cli_reads_no_registry_into_existence(tmp_path):
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    key = tmp_path / "k.key"
    assert runner.invoke(app, ["watermark", "keygen", str(key)]).exit_code == 0
    write_rgb(tmp_path / "a.png", size=(32, 32))
    result = runner.invoke(
        app,
        [
            "watermark",
            "detect",
            str(tmp_path / "a.png"),
            "-k",
            str(key),
            "--registry",
            str(tmp_path / "no" / "r.db"),
        ],
    )
    assert result.exit_code == 2 and "no such registry" in " ".join(result.output.split())
    assert not (tmp_path / "no").exists()


def test_only_raster_photo_formats_reach_a_decoder(tmp_path):
    eps = tmp_path / "postscript.png"  # EPS is decoded by running Ghostscript: never opened
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto stroke\n%%EOF\n")
    with pytest.raises(ImageLoadError, match="format we do not read"):
        load_image(eps)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "targa.png", format="TGA")
    with pytest.raises(ImageLoadError, match="format we do not read"):
        load_image(tmp_path / "targa.png")
