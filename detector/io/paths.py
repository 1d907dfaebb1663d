"""File names as they come from the file system, written to JSONL and CSV so they read back exactly.

POSIX file names are bytes; Python shows a name that is not valid UTF-8 as a ``str`` holding lone
surrogates (``os.fsdecode``, the "surrogateescape" error handler: byte ``0xE9`` becomes ``"\\udce9"``).
Such a string cannot be encoded as UTF-8, so it needs a documented escape wherever we write it:

* **JSONL**: the surrogate is written as the JSON escape ``\\udcXX`` (``XX`` = the raw byte). That is
  valid JSON, every JSON parser reads it, and ``json.loads`` gives back the same ``str``, which
  ``os.fsencode`` turns into the original bytes: the name round-trips exactly.
* **CSV** (text cells have no escape syntax): the ``path`` cell shows the byte as ``\\xE9``
  (readable, for people and spreadsheets) and the ``path_bytes`` column holds the exact name as hex
  (empty for every valid UTF-8 name). :func:`path_from_cells` reads a row back.

CSV cells are also neutralised against formula injection: a text cell starting with ``= + - @``, a tab
or a carriage return (or a ``'``, so the rule can be undone) gets a leading ``'``, which spreadsheet
programs show as text, never evaluate. :func:`csv_text_value` undoes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
#: Leading characters a spreadsheet would treat as a formula (OWASP's list), plus our own escape mark.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")


def has_undecodable(text: str) -> bool:
    """True for a name that is not valid UTF-8 (it holds surrogateescape code points)."""
    return _SURROGATE.search(text) is not None


def printable(path: str | os.PathLike) -> str:
    """A name that prints and encodes anywhere: undecodable bytes shown as ``\\xNN``."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    if not has_undecodable(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def path_hex(path: str | os.PathLike) -> str | None:
    """The exact file-system bytes of a non-UTF-8 name as hex; None for a valid UTF-8 name."""
    text = os.fspath(path)
    return os.fsencode(text).hex() if has_undecodable(text) else None


def json_line(data: Any, allow_nan: bool = False) -> str:
    """``json.dumps`` on one line, UTF-8 text kept, surrogates written as ``\\udcXX`` escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=allow_nan)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def canonical_path(path: str | os.PathLike) -> str:
    """One spelling per file: absolute, symbolic links and ``..`` resolved (what resume matches on)."""
    text = os.fspath(path)
    try:
        return os.path.realpath(os.path.abspath(text))
    except (OSError, ValueError):  # a link loop raises on some Pythons; NUL bytes raise ValueError
        return os.path.abspath(text)


def csv_cell(value: Any) -> Any:
    """A value ready for ``csv.writer``: text made printable and neutralised, numbers unchanged."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_text_value(cell: str) -> str:
    """The text a neutralised cell stood for (inverse of :func:`csv_cell` for printable text)."""
    return cell[1:] if cell.startswith("'") else cell


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """CSV text for ``rows`` (already passed through :func:`csv_cell`), one ``\\n`` per record. Python's
    writer leaves a carriage return inside a cell unquoted when lines end in ``\\n``, which tears the
    record for every reader; a row holding one is written with every cell quoted instead."""
    buffer = io.StringIO()
    minimal = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        needs = any(isinstance(cell, str) and "\r" in cell for cell in row)
        (quoted if needs else minimal).writerow(row)
    return buffer.getvalue()


def path_from_cells(path_cell: str, hex_cell: str | None) -> str:
    """The exact path a CSV row names: from ``path_bytes`` when set, else the (un-neutralised) cell."""
    if hex_cell:
        return os.fsdecode(bytes.fromhex(hex_cell))
    return csv_text_value(path_cell)


__all__ = [
    "FORMULA_PREFIXES",
    "canonical_path",
    "csv_cell",
    "csv_text",
    "csv_text_value",
    "has_undecodable",
    "json_line",
    "path_from_cells",
    "path_hex",
    "printable",
]
