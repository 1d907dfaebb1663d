"""The docs stay true: every `--set key=value` they show is a real training config key with a valid value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.config import load_config
from detector.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SET_OVERRIDE = re.compile(r"--set ([a-z_][a-z0-9_.]*=[^\s`'\"]+)")


def shown_overrides() -> list[tuple[str, str]]:
    return [(path.name, match) for path in DOCS for match in SET_OVERRIDE.findall(path.read_text())]


def test_the_docs_show_overrides():
    assert len(shown_overrides()) >= 4


@pytest.mark.parametrize(("page", "override"), shown_overrides())
def test_every_override_in_the_docs_is_a_real_config_key(page, override):
    load_config(TrainConfig, None, [override])  # raises ConfigError on an unknown key or a bad value


def test_every_result_says_where_it_came_from():
    """Each experiments RESULTS.md names its commit near the top; each result JSON has a provenance."""
    import json

    results = sorted((ROOT / "experiments").rglob("RESULTS.md"))
    assert results
    for page in results:
        head = page.read_text()[:3000]
        assert "Provenance:" in head or re.search(r"[Cc]ommit:? `[0-9a-f]{7}", head), page
    for path in sorted((ROOT / "experiments").rglob("*.json")):
        if path.parent.name == "per_method" or path.parent.name == "report":
            continue  # per-method caches and build statistics, not result files
        data = json.loads(path.read_text())
        assert "provenance" in data or "commit" in data, path


def cli_commands() -> list[str]:
    """Every leaf command of the CLI, e.g. ``corpus photos fetch``."""
    import typer.main

    from detector.cli import app

    def walk(command, prefix):
        children = getattr(command, "commands", None)
        if not children:
            return [" ".join(prefix)]
        return [name for key, child in sorted(children.items()) for name in walk(child, [*prefix, key])]

    return walk(typer.main.get_command(app), [])


def test_the_command_reference_and_the_readme_table_name_every_command():
    reference = (ROOT / "docs" / "commands.md").read_text()
    table = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `detector ")
    ]
    commands = cli_commands()
    assert len(commands) > 30
    for command in commands:
        assert f"`detector {command}" in reference or f"/ `detector {command}" in reference, command
        *group, leaf = command.split(" ")
        prefix = " ".join(["detector", *group]) + " "
        assert any(f"detector {command}" in row or (prefix in row and f"/ {leaf}" in row) for row in table), (
            command
        )
