"""`detector score --engine ray`: the same scoring run on a Ray cluster (``pip install "detector[ray]"``).

The driver (this process) does what the local engine does around the model: it expands the inputs,
opens the output through the local engine's writers (:func:`detector.scoring.stream.open_writer`: same
JSONL/CSV lines, Parquet parts, ``OUT.partial`` + rename, ``--resume``), skips what is already written,
and writes results as they come back, one fsynced write per batch. Ray Data does the rest: the pending
paths, cut into batches of ``batch_size``, are decoded by CPU tasks (``decode_cpus`` each) and scored by
a pool of ``workers`` actors that each load the bundle once (``cpus_per_worker``, ``num_gpus_per_worker``).
Order is preserved, so the output is line for line what the local engine writes. An actor that dies
is restarted and its batch retried (Ray Data's default for actor pools: without limit); a killed driver
loses only unwritten batches, which ``resume`` scores again.

A batch here is exactly a local-engine batch (the same paths, decoded by the same loader), so scores
are bit-identical on the same hardware. Paths with ``://`` are read with pyarrow's file systems (s3://,
gs://, hdfs://, file://) on the workers; everything else is a local or shared-disk path.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from detector.data import decode
from detector.io import DEFAULT_MAX_PIXELS, ImageLoadError
from detector.result import ProvenanceResult, csv_columns
from detector.scoring.pipeline import Pipeline
from detector.scoring.stream import (
    OUTPUT_FORMATS,
    ScoreSummary,
    ScoringError,
    open_writer,
    pending_inputs,
    write_batch,
)

RAY_MISSING = 'the Ray engine needs Ray Data: pip install "detector[ray]" (ray[data] and pyarrow)'
#: Pending paths handed to Ray per dataset: bounds the driver's memory; actors reload once per window.
DEFAULT_WINDOW = 1_000_000


def require_ray():
    """``ray`` (with Ray Data), or a :class:`ScoringError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ScoringError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class BundleScorer:
    """A picklable recipe for the pipeline: each actor calls it once to load the bundle."""

    model: str
    device: str = "cpu"
    watermark: bool = True
    rigid: bool = True
    inversion: bool = True
    watermark_search: str | None = None

    def __call__(self) -> Pipeline:
        from detector.bundle import ProvenanceDetector

        return ProvenanceDetector.load(
            self.model,
            device=self.device,
            watermark=self.watermark,
            rigid=self.rigid,
            inversion=self.inversion,
            watermark_search=self.watermark_search,
        ).pipeline


def _source(path: str):
    """A local path as it is; a URI (``s3://...``) as its bytes, read through pyarrow's file systems."""
    if "://" not in path:
        return path
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except Exception as exc:  # pyarrow raises OSError or ArrowInvalid for unreachable or bad URIs
        raise ImageLoadError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def decode_batch(row: dict, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """A Ray Data row ``{"index", "paths"}`` -> the decoded pixels (raw RGB bytes + shape) or the error."""
    paths = [str(p) for p in row["paths"]]
    pixels, heights, widths, errors = [], [], [], []
    for path in paths:
        try:
            # decoded as every scorer reads a file (detector.data.decode: minimum side, kept pixels)
            image = decode(_source(path), max_pixels=max_pixels)
        except ImageLoadError as exc:
            pixels.append(b"")
            heights.append(0)
            widths.append(0)
            errors.append(exc.reason)
            continue
        array = np.asarray(image, dtype=np.uint8)
        pixels.append(array.tobytes())
        heights.append(array.shape[0])
        widths.append(array.shape[1])
        errors.append(None)
    return {
        "index": row["index"],
        "paths": paths,
        "pixels": pixels,
        "heights": heights,
        "widths": widths,
        "errors": errors,
    }


def undecode(row: dict) -> tuple[list[str], list]:
    """The paths of a decoded row and, per path, a PIL image or the :class:`ImageLoadError` to report."""
    from PIL import Image

    paths = [str(p) for p in row["paths"]]
    decoded = []
    for path, data, height, width, error in zip(
        paths, row["pixels"], row["heights"], row["widths"], row["errors"], strict=True
    ):
        if error is not None:
            decoded.append(ImageLoadError(path, str(error)))
        else:
            array = np.frombuffer(data, dtype=np.uint8).reshape(int(height), int(width), 3)
            decoded.append(Image.fromarray(array))
    return paths, decoded


class ScoreActor:
    """One Ray actor: loads the pipeline once, scores one batch (one Ray row) per call."""

    def __init__(self, factory: Callable[[], Pipeline], threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.pipeline = factory()

    def __call__(self, batch: dict) -> dict:
        lines = []
        for i in range(len(batch["index"])):
            row = {key: batch[key][i] for key in ("paths", "pixels", "heights", "widths", "errors")}
            paths, decoded = undecode(row)
            lines.append([result.to_json() for result in self.pipeline.score_decoded(paths, decoded)])
        return {"index": batch["index"], "lines": lines}


def check_resources(ray, workers: int, cpus_per_worker: float, num_gpus: float, decode_cpus: float) -> None:
    """Warn when the cluster, as it is now, cannot hold the actors and still run a decoding task: Ray
    would wait (for an autoscaler to add nodes, or for ever)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if workers * cpus_per_worker + decode_cpus > cpus or workers * num_gpus > gpus:
        warnings.warn(
            f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s) now; {workers} actor(s) x "
            f"({cpus_per_worker:g} CPU, {num_gpus:g} GPU) plus decoding tasks of {decode_cpus:g} CPU do not fit: "
            "the run waits until nodes are added (lower --workers / --cpus-per-worker otherwise)",
            stacklevel=3,
        )


def block_count(rows: int, workers: int, per_block: int) -> int:
    """How many blocks to cut ``rows`` into: enough for every actor to have work queued, and no more than
    ``per_block`` rows a block (a decoding task's unit of work, and of retry)."""
    return max(1, min(rows, max(4 * workers, -(-rows // per_block))))


def _chunks(paths: Iterator[str], size: int, window: int) -> Iterator[list[list[str]]]:
    """Windows of batches of paths: ``window`` paths at most per window, ``size`` per batch."""
    batches: list[list[str]] = []
    batch: list[str] = []
    count = 0
    for path in paths:
        batch.append(path)
        count += 1
        if len(batch) == size:
            batches.append(batch)
            batch = []
        if count >= window and not batch:
            yield batches
            batches, count = [], 0
    if batch:
        batches.append(batch)
    if batches:
        yield batches


def score_ray(
    sources: Iterable[str | os.PathLike],
    factory: Callable[[], Pipeline],
    out: str | os.PathLike,
    fmt: str = "jsonl",
    resume: bool = False,
    batch_size: int = 16,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    num_gpus_per_worker: float = 0.0,
    decode_cpus: float = 0.25,
    address: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    columns: list[str] | None = None,
    window: int = DEFAULT_WINDOW,
    progress: Callable[[int], None] | None = None,
    expect: dict | None = None,
) -> ScoreSummary:
    """Score every input once into ``out`` on Ray; the local engine's output and resume contract.

    ``factory()`` builds the pipeline (called once per actor; once on the driver too unless ``columns``
    gives the CSV/Parquet columns). ``address``: a running cluster (``auto``, ``ray://host:10001``);
    None joins the cluster this process is already connected to, or starts a local one."""
    ray = require_ray()
    if fmt not in OUTPUT_FORMATS:
        raise ScoringError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if batch_size < 1 or workers < 1:
        raise ScoringError("batch_size and workers must be at least 1")
    if columns is None:
        pipeline = factory()
        columns = csv_columns(pipeline.branch_names, pipeline.versions)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=True)
    check_resources(ray, workers, cpus_per_worker, num_gpus_per_worker, decode_cpus)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # lines in input order, as the local engine writes
    context.enable_progress_bars = False

    writer = open_writer(out, fmt, columns, expect=expect)
    done = writer.open(resume)  # canonical paths
    summary = ScoreSummary(total=len(done))
    start = time.perf_counter()

    def todo() -> Iterator[str]:
        return pending_inputs(sources, done, summary, progress)

    finished = False
    try:
        for window_batches in _chunks(todo(), batch_size, window):
            rows = [{"index": i, "paths": paths} for i, paths in enumerate(window_batches)]
            dataset = (
                ray.data.from_items(rows, override_num_blocks=block_count(len(rows), workers, per_block=64))
                .map(decode_batch, fn_kwargs={"max_pixels": max_pixels}, num_cpus=decode_cpus)
                .map_batches(
                    ScoreActor,
                    fn_constructor_args=(factory, int(cpus_per_worker)),
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=workers),
                    num_cpus=cpus_per_worker,
                    num_gpus=num_gpus_per_worker,
                )
            )
            expected = 0
            for row in dataset.iter_rows():
                if int(row["index"]) != expected:
                    raise ScoringError(f"Ray returned batch {row['index']} where {expected} was due")
                expected += 1
                results = [ProvenanceResult.from_json(line) for line in row["lines"]]
                write_batch(writer, summary, results, progress)
            if expected != len(rows):
                raise ScoringError(f"Ray returned {expected} of {len(rows)} batches")
        finished = True
    finally:
        writer.close(finished)
        summary.seconds = time.perf_counter() - start
        if started_here:
            ray.shutdown()
    return summary
