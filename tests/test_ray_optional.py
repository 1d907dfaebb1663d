"""Ray stays optional: the base package never imports it, and asking for it without it is a clear error."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from detector.cli import app


def test_the_cli_and_the_scale_out_modules_import_without_ray():
    code = (
        "import sys, detector.cli, detector.scoring.ray_engine, detector.features.ray_extract, "
        "detector.corpus.shards, detector.scoring.parquet; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(app, ["score", str(tmp_path), "--engine", "ray", "--model", str(tmp_path)])
    assert result.exit_code == 2 and 'pip install "detector[ray]"' in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["features", "extract", str(tmp_path), "--engine", "ray"])
    assert result.exit_code == 2 and 'pip install "detector[ray]"' in " ".join(result.output.split())
