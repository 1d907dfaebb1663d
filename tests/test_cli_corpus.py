"""The corpus CLI end to end: index a folder and a manifest, split with a holdout, --help everywhere."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from detector.cli import app
from detector.corpus import check_no_group_leak, read_manifest

runner = CliRunner()


def test_help_on_every_command():
    for args in (
        ["--help"],
        ["corpus", "--help"],
        ["corpus", "index", "--help"],
        ["corpus", "split", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_index_folder_then_manifest(folder_corpus, tmp_path):
    (folder_corpus / "real" / "junk.png").write_text("not an image")
    result = runner.invoke(
        app, ["corpus", "index", str(folder_corpus), "--summary-json", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    manifest = folder_corpus / "manifest.csv"
    assert len(read_manifest(manifest)) == 16
    assert "junk.png" in result.output
    out = tmp_path / "again.jsonl"
    result = runner.invoke(app, ["corpus", "index", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 16


def test_split_with_holdout(folder_corpus):
    runner.invoke(app, ["corpus", "index", str(folder_corpus), "--group-regex", r"^(photo\d+)_crop"])
    manifest = folder_corpus / "manifest.csv"
    result = runner.invoke(app, ["corpus", "split", str(manifest), "--seed", "1", "--holdout", "gen_b"])
    assert result.exit_code == 0, result.output
    corpus = read_manifest(manifest)
    check_no_group_leak(corpus.records)
    assert all(r.split in ("test", "excluded") for r in corpus if r.generator == "gen_b")
    saved = yaml.safe_load((folder_corpus / "manifest.split.yaml").read_text())
    assert saved["seed"] == 1 and saved["holdout"] == ["gen_b"]


@pytest.mark.parametrize(
    "args", [["corpus", "index", "/no/such/dir"], ["corpus", "split", "x.csv", "--fractions", "a"]]
)
def test_user_errors_exit_cleanly(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
