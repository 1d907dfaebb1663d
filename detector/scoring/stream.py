"""Streaming, resumable scoring of any number of images to JSONL or CSV.

Inputs (files, folders, globs, manifests) are expanded lazily and scored in batches; decoding can run on
worker threads one batch ahead of the model. Every input gets exactly one output line, a file that
cannot be read gets a line with its error, and memory stays flat: only the set of finished paths is
kept (for ``resume`` and de-duplication).

Crash safety: results are appended to ``OUT.partial`` one batch per write, flushed and fsynced; only a
finished run renames it to ``OUT`` (atomic). After a crash or a kill, ``resume=True`` drops any torn
last line of the partial file, skips the paths already in it, and carries on.

Sharding (``shard=(rank, world)``) gives every process the inputs whose running index is ``rank``
modulo ``world``; :func:`merge_outputs` joins the finished shard files into one output.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from detector.corpus import CorpusError, read_manifest
from detector.corpus.shards import is_sharded_corpus, shard_member_paths
from detector.io import DEFAULT_MAX_PIXELS, ImageLoadError, atomic_writer, iter_image_files, load_image
from detector.result import ProvenanceResult, csv_columns
from detector.scoring.pipeline import Pipeline

FORMATS = ("jsonl", "csv")
#: Every output format a scoring run can write (Parquet: a folder of part files, needs pyarrow).
OUTPUT_FORMATS = (*FORMATS, "parquet")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


class ScoringError(ValueError):
    """The scoring run cannot start (bad output, resume mismatch, unknown format)."""


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_inputs(sources: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Image paths from files, folders (recursively), globs, manifests (.csv/.jsonl) and sharded corpus
    folders (member paths, see :mod:`detector.corpus.shards`), in order.

    A source that exists as none of these is passed through, so it gets its own "file not found" line."""
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if is_sharded_corpus(path):
            yield from shard_member_paths(path)
        elif path.is_dir():
            yield from (str(p) for p in iter_image_files(path))
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                corpus = read_manifest(path)
            except CorpusError as exc:
                raise ScoringError(f"{path}: not a usable manifest ({exc})") from None
            yield from (str(corpus.resolve(record)) for record in corpus.records)
        elif path.exists() or not _is_glob(text):
            yield text
        else:
            for match in sorted(glob.iglob(text, recursive=True)):
                if Path(match).is_dir():
                    yield from (str(p) for p in iter_image_files(match))
                else:
                    yield match


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
        }


class ResultWriter:
    """Appends results to ``OUT.partial`` (crash-safe), renames it to ``OUT`` when the run finishes."""

    def __init__(self, out: str | os.PathLike, fmt: str = "jsonl", columns: Sequence[str] | None = None):
        if fmt not in FORMATS:
            raise ScoringError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.fmt = fmt
        self.columns = list(columns or csv_columns())
        self._handle = None

    def _repair(self) -> None:
        """Drop a torn last line (a kill during a write) so the file ends on a whole record."""
        with open(self.partial, "rb+") as handle:
            data = handle.read()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                handle.truncate(cut)

    def _read_done(self) -> set[str]:
        done: set[str] = set()
        with open(self.partial, encoding="utf-8", newline="") as handle:
            if self.fmt == "jsonl":
                for n, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            done.add(json.loads(line)["path"])
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise ScoringError(
                                f"{self.partial}:{n}: not a result line; cannot resume"
                            ) from None
            else:
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is not None and header != self.columns:
                    raise ScoringError(
                        f"{self.partial}: its CSV columns differ from this pipeline's; cannot resume into it"
                    )
                done.update(row[0] for row in reader if row)
        return done

    def open(self, resume: bool) -> set[str]:
        """Start writing; returns the paths already in the output when resuming."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        done: set[str] = set()
        if resume and not self.partial.exists() and self.out.exists():
            os.replace(self.out, self.partial)  # a finished output grows: score only what is new
        if resume and self.partial.exists():
            self._repair()
            done = self._read_done()
        else:
            self.partial.unlink(missing_ok=True)
        fresh = not self.partial.exists() or self.partial.stat().st_size == 0
        self._handle = open(self.partial, "a", encoding="utf-8", newline="")
        if fresh and self.fmt == "csv":
            self._write_text(self._csv_text([self.columns]))
        return done

    def _csv_text(self, rows: list[list]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(rows)
        return buffer.getvalue()

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
                rows.append(["" if flat.get(c) is None else flat.get(c) for c in self.columns])
            text = self._csv_text(rows)
        self._write_text(text)  # one write per batch: a kill tears at most the last line

    def close(self, finished: bool) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if finished:
            os.replace(self.partial, self.out)


def open_writer(out: str | os.PathLike, fmt: str, columns: Sequence[str]):
    """The writer for ``fmt``: :class:`ResultWriter` (jsonl, csv) or the Parquet folder writer."""
    if fmt == "parquet":
        from detector.scoring.parquet import ParquetResultWriter

        return ParquetResultWriter(out, columns)
    return ResultWriter(out, fmt, columns)


def _decode(path: str, max_pixels: int | None) -> Image.Image | ImageLoadError:
    try:
        return load_image(path, max_pixels=max_pixels)
    except ImageLoadError as exc:
        return exc


def _batches(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
) -> ScoreSummary:
    """Score every input once into ``out``; see the module docstring for the guarantees."""
    if batch_size < 1:
        raise ScoringError("batch_size must be at least 1")
    rank, world = shard
    if not 0 <= rank < world:
        raise ScoringError(f"shard rank {rank} is not in [0, {world})")
    writer = open_writer(out, fmt, csv_columns(pipeline.branch_names, pipeline.versions))
    done = writer.open(resume)
    summary = ScoreSummary(total=len(done))
    start = time.perf_counter()

    def todo() -> Iterator[str]:
        for index, path in enumerate(expand_inputs(sources)):
            if index % world != rank:
                continue
            if path in done:
                summary.skipped += 1
                if progress:
                    progress(1)
                continue
            done.add(path)
            yield path

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None

    def submit(paths: list[str]) -> list[Future] | list:
        if pool is None:
            return [_decode(p, max_pixels) for p in paths]
        return [pool.submit(_decode, p, max_pixels) for p in paths]

    finished = False
    try:
        batches = _batches(todo(), batch_size)
        current = next(batches, None)
        pending = submit(current) if current else []
        while current:
            upcoming = next(batches, None)
            queued = submit(upcoming) if upcoming else []  # decode ahead while this batch is scored
            decoded = [item.result() if isinstance(item, Future) else item for item in pending]
            results = pipeline.score_decoded(current, decoded)
            writer.write(results)
            for result in results:
                summary.add(result)
            summary.total += len(results)
            if progress:
                progress(len(results))
            current, pending = upcoming, queued
        finished = True
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        writer.close(finished)
        summary.seconds = time.perf_counter() - start
    return summary


def count_inputs(sources: Iterable[str | os.PathLike], shard: tuple[int, int] = (0, 1)) -> int:
    """How many inputs a run will see (one cheap pass over the file system, for progress bars)."""
    rank, world = shard
    return sum(1 for index, _ in enumerate(expand_inputs(sources)) if index % world == rank)


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
