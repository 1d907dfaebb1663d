"""Scoring results as Parquet: a folder of part files with the CSV columns, typed, for large outputs.

Same contract as :class:`detector.scoring.stream.ResultWriter`: results go to ``OUT.partial/`` and the
folder is renamed to ``OUT`` only when the run finishes. Each part file is written whole and atomically
(temp file + rename) every ``rows_per_part`` results, so a kill loses at most the rows not yet in a part;
``resume`` reads the ``path`` column of the parts already there and those images are skipped.
Needs ``pyarrow`` (the ``ray`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from detector.result import ProvenanceResult

PART_GLOB = "part-*.parquet"
_BOOL_COLUMNS = {"watermark.detected", "attribution.is_unknown"}
_FLOAT_COLUMNS = {
    "p_ai",
    "watermark.p_value",
    "watermark.bit_accuracy",
    "attribution.top1_prob",
    "attribution.unknown_score",
}


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        from detector.scoring.stream import ScoringError

        raise ScoringError('Parquet output needs pyarrow: pip install "detector[ray]"') from None
    return pyarrow


def result_schema(columns: Sequence[str]):
    """A fixed Arrow schema for the CSV columns (so every part file has the same one)."""
    pa = _pyarrow()

    def kind(name: str):
        if name in _BOOL_COLUMNS:
            return pa.bool_()
        if name in _FLOAT_COLUMNS or name.startswith("branch."):
            return pa.float64()
        return pa.string()

    return pa.schema([(name, kind(name)) for name in columns])


class ParquetResultWriter:
    """``open(resume) -> done paths``, ``write(results)``, ``close(finished)``: as ``ResultWriter``."""

    def __init__(self, out: str | os.PathLike, columns: Sequence[str], rows_per_part: int = 10_000):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.columns = list(columns)
        self.schema = result_schema(self.columns)
        self.rows_per_part = max(1, int(rows_per_part))
        self._rows: list[dict] = []
        self._next = 0

    def _parts(self) -> list[Path]:
        return sorted(self.partial.glob(PART_GLOB))

    def open(self, resume: bool) -> set[str]:
        from detector.scoring.stream import ScoringError

        pa = _pyarrow()
        if resume and not self.partial.exists() and self.out.is_dir():
            os.replace(self.out, self.partial)  # a finished output grows: score only what is new
        elif not resume and self.out.exists():
            raise ScoringError(f"{self.out} exists; remove it or pass --resume to add to it")
        done: set[str] = set()
        if self.partial.exists() and not self.partial.is_dir():
            raise ScoringError(f"{self.partial} is not a Parquet output folder")
        if resume and self.partial.is_dir():
            for part in self._parts():
                table = pa.parquet.read_table(part)
                if table.schema.names != self.columns:
                    raise ScoringError(
                        f"{part}: its columns differ from this pipeline's; cannot resume into it"
                    )
                done.update(table.column("path").to_pylist())
        elif self.partial.is_dir():
            for part in self._parts():
                part.unlink()
        self.partial.mkdir(parents=True, exist_ok=True)
        for stale in self.partial.glob("*.tmp"):  # a part torn by a kill
            stale.unlink()
        parts = self._parts()
        self._next = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        return done

    def write(self, results: Sequence[ProvenanceResult]) -> None:
        from detector.scoring.stream import ScoringError

        for result in results:
            row = result.to_row()
            extra = sorted(set(row) - set(self.columns))
            if extra:
                raise ScoringError(f"result columns {extra} are not in the Parquet schema")
            self._rows.append(row)
        if len(self._rows) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = _pyarrow()

        def cell(name, value):
            if value is None or name not in self.schema.names:
                return value
            kind = self.schema.field(name).type
            return value if kind in (pa.bool_(), pa.float64()) else str(value)

        data = {name: [cell(name, row.get(name)) for row in self._rows] for name in self.columns}
        table = pa.table(data, schema=self.schema)
        target = self.partial / f"part-{self._next:06d}.parquet"
        temp = target.with_name(target.name + ".tmp")
        pa.parquet.write_table(table, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        self._next += 1
        self._rows = []

    def close(self, finished: bool) -> None:
        self._flush()  # rows scored before an exception are kept (resume skips them)
        if finished:
            os.replace(self.partial, self.out)


def read_results(folder: str | os.PathLike):
    """All rows of a Parquet output folder as one Arrow table."""
    pa = _pyarrow()
    parts = sorted(Path(folder).glob(PART_GLOB))
    return pa.concat_tables([pa.parquet.read_table(p) for p in parts]) if parts else None
