"""The ``detector`` command line. Each command group lives in its own module and is mounted here."""

from __future__ import annotations

import typer

from detector import __version__
from detector.cli import (
    attribute,
    bundle,
    c2pa,
    corpus,
    demo,
    evaluate,
    features,
    models,
    score,
    serve,
    train,
    watermark,
)

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
app.add_typer(features.app, name="features")
app.add_typer(attribute.app, name="attribute")
# Single commands (not groups): `detector train ...`, `detector eval CHECKPOINT CORPUS`.
app.command("train")(train.train_command)
app.command("eval")(evaluate.eval_command)
# Scoring: `detector bundle RUN --corpus C --out B`, `detector score PATHS --model B`.
app.command("bundle")(bundle.bundle_command)
app.command("score")(score.score_command)
app.command("demo")(demo.demo_command)
app.add_typer(models.app, name="models")
app.add_typer(watermark.app, name="watermark")
app.add_typer(c2pa.app, name="c2pa")
# The verification service: `detector serve`, and `detector serve-key KEYS --name N` to make an API key.
app.command("serve")(serve.serve_command)
app.command("serve-key")(serve.serve_key_command)


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
