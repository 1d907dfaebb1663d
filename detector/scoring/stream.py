"""Streaming, resumable scoring of any number of images to JSONL or CSV.

Inputs (files, folders, globs, manifests) are expanded lazily and scored in batches; decoding can run on
worker threads one batch ahead of the model. Every input gets exactly one output line, a file that
cannot be read gets a line with its error, and memory stays flat: only the set of finished paths is
kept (for ``resume`` and de-duplication).

Crash safety: results are appended to ``OUT.partial`` one batch per write, flushed and fsynced; only a
finished run renames it to ``OUT`` (atomic). After a crash or a kill, ``resume=True`` drops any torn
last record of the partial file (quote-aware for CSV, whose cells may hold newlines), skips the inputs
already in it, matched by canonical path (another spelling of the same file is the same input), and
carries on. A partial file written by a different pipeline configuration (other branches, models,
watermark or attribution switched on or off) is refused, for JSONL as for CSV, rather than mixed.

File names that are not UTF-8 and CSV cells that a spreadsheet would run as formulas are escaped as
:mod:`detector.io.paths` documents; every path reads back exactly. Files a folder scan passes by
(hidden, other extensions, symlinked folders) and named folders holding no image are counted and named
in the summary, never dropped silently.

Sharding (``shard=(rank, world)``) gives every process the inputs whose running index is ``rank``
modulo ``world``; :func:`merge_outputs` joins the finished shard files into one output.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from detector.corpus import CorpusError, read_manifest
from detector.corpus.shards import is_sharded_corpus, shard_member_paths
from detector.errors import DetectorError
from detector.io import (
    DEFAULT_MAX_PIXELS,
    atomic_writer,
    canonical_path,
    csv_cell,
    csv_text,
    iter_image_files,
    path_from_cells,
    printable,
)
from detector.result import ProvenanceResult, csv_columns
from detector.scoring.pipeline import Pipeline

FORMATS = ("jsonl", "csv")
#: Every output format a scoring run can write (Parquet: a folder of part files, needs pyarrow).
OUTPUT_FORMATS = (*FORMATS, "parquet")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


class ScoringError(DetectorError, ValueError):
    """The scoring run cannot start (bad output, resume mismatch, unknown format)."""


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


SkipHandler = Callable[[str, str], None]
EMPTY_FOLDER = "named folder holds no image file"


def expand_inputs(
    sources: Iterable[str | os.PathLike], on_skip: SkipHandler | None = None, confine: bool = False
) -> Iterator[str]:
    """Image paths from files, folders (recursively), globs, manifests (.csv/.jsonl) and sharded corpus
    folders (member paths, see :mod:`detector.corpus.shards`), in order.

    A source that exists as none of these is passed through, so it gets its own "file not found" line.
    ``on_skip(path, reason)`` hears of every file a folder scan passes by and of every named folder or
    glob that yields no image. ``confine``: a manifest whose paths lead outside its folder is refused."""

    def scan(folder: str | os.PathLike) -> Iterator[str]:
        found = False
        for p in iter_image_files(folder, on_skip=None if on_skip is None else _relay(on_skip)):
            found = True
            yield str(p)
        if not found and on_skip is not None:
            on_skip(os.fspath(folder), EMPTY_FOLDER)

    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if is_sharded_corpus(path):
            yield from shard_member_paths(path)
        elif path.is_dir():
            yield from scan(path)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                corpus = read_manifest(path, confine=confine)
            except CorpusError as exc:
                raise ScoringError(f"{printable(path)}: not a usable manifest ({exc})") from None
            yield from (str(corpus.resolve(record)) for record in corpus.records)
        elif path.exists() or path.is_symlink() or not _is_glob(text):
            yield text
        else:
            matches = sorted(glob.iglob(text, recursive=True))
            if not matches and on_skip is not None:
                on_skip(text, "glob matches no file")
            for match in matches:
                if Path(match).is_dir():
                    yield from scan(match)
                else:
                    yield match


def _relay(on_skip: SkipHandler) -> Callable[[Path, str], None]:
    return lambda path, reason: on_skip(str(path), reason)


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    total: int = 0  # lines in the output (including earlier runs when resuming)
    scored: int = 0  # images scored in this run
    skipped: int = 0  # already in the output (resume) or repeated inputs
    errors: int = 0  # error lines written in this run
    verdicts: Counter = field(default_factory=Counter)
    generators: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    not_read: Counter = field(default_factory=Counter)  # files a folder scan passed by, per reason
    not_read_names: list[tuple[str, str]] = field(default_factory=list)  # the first NAMED_SKIPS of them

    NAMED_SKIPS = 1000

    def passed_by(self, path: str, reason: str) -> None:
        self.not_read[reason] += 1
        if len(self.not_read_names) < self.NAMED_SKIPS:
            self.not_read_names.append((path, reason))

    def add(self, result: ProvenanceResult) -> None:
        self.scored += 1
        if result.error is not None:
            self.errors += 1
            return
        self.verdicts[result.verdict] += 1
        if result.verdict != "real" and result.generator:
            self.generators[result.generator] += 1

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "scored": self.scored,
            "skipped": self.skipped,
            "errors": self.errors,
            "verdicts": dict(self.verdicts),
            "generators": dict(self.generators),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.scored / self.seconds, 3) if self.seconds > 0 else None,
            "not_read": sum(self.not_read.values()),
            "not_read_reasons": dict(self.not_read),
            "not_read_files": [{"path": printable(p), "reason": r} for p, r in self.not_read_names],
        }


class ResultWriter:
    """Appends results to ``OUT.partial`` (crash-safe), renames it to ``OUT`` when the run finishes.

    ``expect`` describes the pipeline (``branches``, ``versions``, ``watermark``, ``attribution``); a
    partial file whose lines disagree with it is refused on resume instead of mixed."""

    def __init__(
        self,
        out: str | os.PathLike,
        fmt: str = "jsonl",
        columns: Sequence[str] | None = None,
        expect: dict | None = None,
    ):
        if fmt not in FORMATS:
            raise ScoringError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.fmt = fmt
        self.columns = list(columns or csv_columns())
        self.expect = expect
        self._handle = None

    def _repair(self) -> None:
        """Drop a torn last record (a kill during a write) so the file ends on a whole record. In CSV a
        quoted cell may hold newlines, so the cut is the last newline outside quotes."""
        with open(self.partial, "rb+") as handle:
            data = handle.read()
            cut = _last_record_end(data) if self.fmt == "csv" else data.rfind(b"\n") + 1
            if cut != len(data):
                handle.truncate(cut)

    def _mismatch(self, where: str, what: str, found, wanted) -> ScoringError:
        return ScoringError(
            f"{printable(where)}: written by a different pipeline configuration ({what}: {found} in the "
            f"file, {wanted} now); resume with the same bundle and options, or write a new --out"
        )

    def _check_line(self, data: dict, where: str) -> None:
        expect = self.expect
        if not expect:
            return
        versions = data.get("versions")
        if versions is not None and versions != expect["versions"]:
            raise self._mismatch(where, "model versions", versions, expect["versions"])
        if data.get("error") is not None:
            return  # an error line carries no branch evidence to compare
        branches = sorted(data.get("branches") or {})
        if branches != expect["branches"]:
            raise self._mismatch(where, "branches", branches, expect["branches"])
        for part in ("watermark", "attribution"):
            if (data.get(part) is not None) != expect[part]:
                state = "on" if expect[part] else "off"
                raise self._mismatch(where, part, "on" if data.get(part) is not None else "off", state)

    def _read_done(self) -> set[str]:
        """Canonical paths of the inputs already in the partial file."""
        done: set[str] = set()
        with open(self.partial, encoding="utf-8", newline="") as handle:
            if self.fmt == "jsonl":
                for n, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                        path = data["path"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ScoringError(f"{self.partial}:{n}: not a result line; cannot resume") from None
                    self._check_line(data, f"{self.partial}:{n}")
                    done.add(canonical_path(path))
            else:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is not None and header != self.columns:
                    raise ScoringError(
                        f"{self.partial}: its CSV columns differ from this pipeline's (other branches or "
                        "models); cannot resume into it"
                    )
                path_at, hex_at = self.columns.index("path"), self.columns.index("path_bytes")
                version_cols = [(i, c) for i, c in enumerate(self.columns) if c.startswith("version.")]
                for row in reader:
                    if not row:
                        continue
                    if len(row) != len(self.columns):
                        raise ScoringError(
                            f"{self.partial}:{reader.line_num}: malformed CSV row; cannot resume"
                        )
                    if self.expect:
                        for i, column in version_cols:
                            wanted = str(self.expect["versions"].get(column[len("version.") :], ""))
                            if row[i] != wanted:
                                raise self._mismatch(
                                    f"{self.partial}:{reader.line_num}", column, row[i], wanted
                                )
                    done.add(canonical_path(path_from_cells(row[path_at], row[hex_at])))
        return done

    def open(self, resume: bool) -> set[str]:
        """Start writing; returns the canonical paths already in the output when resuming."""
        for target in (self.out, self.partial):
            if target.is_dir():
                raise ScoringError(f"{printable(target)}: is a folder; --out must name a file")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ScoringError(
                f"{printable(self.out)}: cannot create its folder ({exc.strerror or exc})"
            ) from None
        done: set[str] = set()
        if resume and not self.partial.exists() and self.out.exists():
            os.replace(self.out, self.partial)  # a finished output grows: score only what is new
        if resume and self.partial.exists():
            self._repair()
            done = self._read_done()
        else:
            self.partial.unlink(missing_ok=True)
        fresh = not self.partial.exists() or self.partial.stat().st_size == 0
        try:
            self._handle = open(self.partial, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise ScoringError(f"{printable(self.partial)}: cannot write ({exc.strerror or exc})") from None
        if fresh and self.fmt == "csv":
            self._write_text(self._csv_text([self.columns]))
        return done

    def _csv_text(self, rows: list[list]) -> str:
        return csv_text(rows)

    def _write_text(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, results: Sequence[ProvenanceResult]) -> None:
        if not results:
            return
        if self.fmt == "jsonl":
            text = "".join(result.to_json() + "\n" for result in results)
        else:
            rows = []
            for result in results:
                flat = result.to_row()
                extra = sorted(set(flat) - set(self.columns))
                if extra:
                    raise ScoringError(f"result columns {extra} are not in the CSV header")
                rows.append(["" if flat.get(c) is None else csv_cell(flat.get(c)) for c in self.columns])
            text = self._csv_text(rows)
        self._write_text(text)  # one write per batch: a kill tears at most the last record

    def close(self, finished: bool) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if finished:
            os.replace(self.partial, self.out)


def _last_record_end(data: bytes) -> int:
    """Offset just past the last newline that is outside a quoted CSV cell (0 when there is none)."""
    quoted, end = False, 0
    for match in re.finditer(rb'["\n]', data):
        if match.group() == b'"':
            quoted = not quoted  # an escaped quote ("") toggles twice: no change
        elif not quoted:
            end = match.end()
    return end


def expectations(pipeline: Pipeline) -> dict:
    """What every line a pipeline writes must agree with (checked when resuming)."""
    return {
        "branches": pipeline.branch_names,
        "versions": dict(pipeline.versions),
        "watermark": pipeline.watermark is not None,
        "attribution": pipeline.attribution is not None,
    }


def open_writer(out: str | os.PathLike, fmt: str, columns: Sequence[str], expect: dict | None = None):
    """The writer for ``fmt``: :class:`ResultWriter` (jsonl, csv) or the Parquet folder writer."""
    if fmt == "parquet":
        from detector.scoring.parquet import ParquetResultWriter

        return ParquetResultWriter(out, columns)
    return ResultWriter(out, fmt, columns, expect=expect)


def write_batch(writer, summary: ScoreSummary, results: Sequence[ProvenanceResult], progress=None) -> None:
    """Write one batch's results (one write: a kill tears at most its last record) and count them."""
    writer.write(results)
    for result in results:
        summary.add(result)
    summary.total += len(results)
    if progress:
        progress(len(results))


def pending_inputs(
    sources: Iterable[str | os.PathLike],
    done: set[str],
    summary: ScoreSummary,
    progress: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    confine: bool = False,
) -> Iterator[str]:
    """The inputs still to score: this shard's, minus those whose canonical path is in ``done`` (already
    in the output, or met earlier under another spelling); ``done`` grows as paths are handed out."""
    rank, world = shard
    for index, path in enumerate(expand_inputs(sources, on_skip=summary.passed_by, confine=confine)):
        if index % world != rank:
            continue
        key = canonical_path(path)
        if key in done:
            summary.skipped += 1
            if progress:
                progress(1)
            continue
        done.add(key)
        yield path


def score_stream(
    sources: Iterable[str | os.PathLike],
    pipeline: Pipeline,
    out: str | os.PathLike,
    fmt: str = "jsonl",
    resume: bool = False,
    batch_size: int = 16,
    workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int], None] | None = None,
    confine: bool = False,
) -> ScoreSummary:
    """Score every input once into ``out``; see the module docstring for the guarantees. ``confine``
    refuses a manifest input whose paths lead outside its folder."""
    if batch_size < 1:
        raise ScoringError("batch_size must be at least 1")
    rank, world = shard
    if not 0 <= rank < world:
        raise ScoringError(f"shard rank {rank} is not in [0, {world})")
    writer = open_writer(
        out, fmt, csv_columns(pipeline.branch_names, pipeline.versions), expect=expectations(pipeline)
    )
    done = writer.open(resume)
    summary = ScoreSummary(total=len(done))
    start = time.perf_counter()

    def todo() -> Iterator[str]:
        return pending_inputs(sources, done, summary, progress, shard=(rank, world), confine=confine)

    finished = False
    try:
        # the one batching loop (detector.data.decoded_batches): decoding runs one batch ahead on worker
        # threads; without workers the next batch is decoded only once this one is written and released
        with closing(pipeline.score_paths(todo(), batch_size, max_pixels, workers)) as batches:
            for results in batches:
                write_batch(writer, summary, results, progress)
        finished = True
    finally:
        writer.close(finished)
        summary.seconds = time.perf_counter() - start
    return summary


def count_inputs(
    sources: Iterable[str | os.PathLike], shard: tuple[int, int] = (0, 1), confine: bool = False
) -> int:
    """How many inputs a run will see (one cheap pass over the file system, for progress bars)."""
    rank, world = shard
    return sum(1 for index, _ in enumerate(expand_inputs(sources, confine=confine)) if index % world == rank)


def merge_outputs(parts: Sequence[str | os.PathLike], out: str | os.PathLike, fmt: str = "jsonl") -> Path:
    """Join finished shard outputs into ``out`` (atomically; a CSV header is written once)."""
    out = Path(out)
    with atomic_writer(out, "w", encoding="utf-8") as target:
        header = None
        for part in parts:
            with open(part, encoding="utf-8", newline="") as handle:
                if fmt == "csv":
                    first = handle.readline()
                    if header is None:
                        header = first
                        target.write(first)
                    elif first != header:
                        raise ScoringError(f"{part}: CSV header differs from the first shard's")
                for line in handle:
                    target.write(line)
    return out


def distributed_shard() -> tuple[int, int]:
    """(rank, world size) from the environment torchrun sets (``RANK``, ``WORLD_SIZE``); (0, 1) alone."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ScoringError("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < world:
        raise ScoringError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def shard_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}-of-{world}")


def score_distributed(
    sources: Iterable[str | os.PathLike],
    pipeline: Pipeline,
    out: str | os.PathLike,
    fmt: str = "jsonl",
    barrier: Callable[[], None] | None = None,
    shard: tuple[int, int] | None = None,
    **kwargs,
) -> ScoreSummary:
    """:func:`score_stream` under torchrun: each rank scores its shard into its own (resumable) file,
    waits at ``barrier`` (default: ``torch.distributed.barrier`` on a gloo group it creates if needed),
    and rank 0 merges the shard files into ``out`` and removes them. ``shard`` overrides the environment."""
    rank, world = shard or distributed_shard()
    if world == 1:
        return score_stream(sources, pipeline, out, fmt=fmt, **kwargs)
    part = shard_path(out, rank, world)
    summary = score_stream(sources, pipeline, part, fmt=fmt, shard=(rank, world), **kwargs)
    if barrier is None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        barrier = dist.barrier
    barrier()
    if rank == 0:
        parts = [shard_path(out, r, world) for r in range(world)]
        merge_outputs(parts, out, fmt)
        for path in parts:
            path.unlink()
    barrier()
    return summary
