"""What every CLI module shares: the console, error exits, progress bars."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
stdout = Console()


def plain(text) -> str:
    """A file name or message for rich output: undecodable bytes as ``\\xNN``, brackets escaped (a file
    named ``[/].png`` must print as itself, not break the markup)."""

    from detector.io import printable

    return escape(printable(str(text)))


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (no traceback for user errors)."""
    console.print(f"[bold red]error:[/] {plain(message)}")
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str, total: int | None):
    """A rich progress bar on stderr; yields ``advance(n)``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def parse_list(text: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def write_json(path: Path, data) -> None:
    from detector.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
