"""Where a result came from: the commit, the corpus (its manifest's hash) and the command that made it.

Every experiment script stamps its result file with :func:`provenance`, so a table can be traced to the
code and the exact photo list it was measured on, and a result older than its corpus can be spotted.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date
from pathlib import Path


def git_commit() -> str:
    """The short commit of the working tree, ``+dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def corpus_hash(manifest: str | Path) -> str:
    """sha256 (16 hex digits) of a manifest: its paths, labels, groups (the photo names) and splits, so it
    names the corpus and its photo list exactly."""
    return hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]


def provenance(corpus: str | Path | None = None, argv: list[str] | None = None) -> dict:
    """``{"commit", "corpus", "corpus_sha256", "command", "date"}`` for a result file. ``corpus`` is a
    manifest (or a folder holding ``manifest.csv``); None for results that read no corpus."""
    manifest = None
    if corpus is not None:
        manifest = Path(corpus)
        if manifest.is_dir():
            manifest = manifest / "manifest.csv"
    args = sys.argv[1:] if argv is None else argv
    return {
        "commit": git_commit(),
        "corpus": None if manifest is None else str(manifest),
        "corpus_sha256": corpus_hash(manifest) if manifest is not None and manifest.is_file() else None,
        "command": " ".join(["python", sys.argv[0], *args]),
        "date": date.today().isoformat(),
    }


__all__ = ["corpus_hash", "git_commit", "provenance"]
