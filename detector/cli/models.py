"""``detector models list``: the named bundles available here."""

from __future__ import annotations

import typer

from detector.cli.common import stdout

app = typer.Typer(help="Named bundles: the shipped default detector and those in $DETECTOR_MODELS.")


@app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every named model available here, where it lives and what it was trained on."""
    from rich.table import Table

    from detector.bundle import list_models

    cards = list_models()
    if as_json:
        stdout.print_json(data=[c.to_dict() for c in cards])
        return
    table = Table(title=f"{len(cards)} named model(s)")
    for column in ("name", "origin", "trained on", "path"):
        table.add_column(column)
    for card in cards:
        table.add_row(card.name, card.origin, card.summary, str(card.path))
    stdout.print(table)
