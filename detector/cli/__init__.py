"""The ``detector`` command line. Each command group lives in its own module and is mounted here."""

from __future__ import annotations

import typer

from detector import __version__
from detector.cli import corpus, watermark

app = typer.Typer(
    name="detector",
    help=(
        "Image provenance: is an image AI-generated, does it carry our watermark, which generator made it.\n\n"
        "Start with `detector corpus index ROOT` to check a corpus of real/ and fake/<generator>/ images."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(corpus.app, name="corpus")
app.add_typer(watermark.app, name="watermark")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"detector {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Image provenance detector."""
