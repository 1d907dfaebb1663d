"""``detector score PATHS [--model BUNDLE]``: score images with a bundle."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from detector.cli.choices import (
    DEVICE_OPT,
    NO_WATERMARK_OPT,
    WATERMARK_SEARCH_OPT,
    Engine,
    OutputFormat,
    WatermarkSearch,
    choice_value,
)
from detector.cli.common import console, fail, plain, progress_bar, stdout, write_json
from detector.errors import DetectorError


def score_command(
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive), globs or manifests."),
    model: str = typer.Option(
        "default",
        "--model",
        "-m",
        help="A bundle folder (detector bundle / detector demo) or a model name (`detector models list`); "
        "default: the shipped default detector.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Results file (one line per image). Default: print to stdout."
    ),
    fmt: OutputFormat = typer.Option(
        OutputFormat.jsonl, "--format", "-f", help="parquet writes a folder of parts; table prints to stdout."
    ),
    resume: bool = typer.Option(False, "--resume", help="Skip images already in --out (after a kill)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(
        0, "--workers", help="local: decode threads (0: the main thread); ray: scoring actors (default 1)."
    ),
    engine: Engine = typer.Option(
        Engine.local, "--engine", help="local (this process) or ray (a Ray cluster)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="ray: cluster to join (auto, ray://HOST:10001); default: start a local one."
    ),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="ray: CPUs per scoring actor."),
    num_gpus_per_worker: float = typer.Option(
        0.0, "--num-gpus-per-worker", help="ray: GPUs per scoring actor (fractions share a GPU)."
    ),
    decode_cpus: float = typer.Option(0.25, "--decode-cpus", help="ray: CPUs per decoding task."),
    device: str = DEVICE_OPT,
    no_watermark: bool = NO_WATERMARK_OPT,
    watermark_search: WatermarkSearch | None = WATERMARK_SEARCH_OPT,
    no_rigid: bool = typer.Option(
        False, "--no-rigid", help="Skip the RIGID branch (saves its extra backbone forwards)."
    ),
    no_inversion: bool = typer.Option(
        False, "--no-inversion", help="Skip the diffusion-inversion branch (the slowest passive branch)."
    ),
    summary_json: Path | None = typer.Option(None, "--summary", help="Also write the run summary as JSON."),
    confine: bool = typer.Option(
        False, "--confine", help="Refuse a manifest input whose paths lead outside its folder (untrusted)."
    ),
    allow_external: bool = typer.Option(
        False,
        "--allow-external",
        help="Let the bundle load a diffusion model it only references (a hub id: may use the network).",
    ),
) -> None:
    """Score images with a bundle: calibrated p_ai, verdict, watermark and attribution evidence per image.

    Every input gets one line, an unreadable file a line with its error (the run goes on). Output is
    written to OUT.partial and renamed when complete; --resume continues a killed run. Under torchrun
    each rank scores a shard and rank 0 merges them into OUT; --engine ray scores on a Ray cluster
    (same lines, same --resume; pip install "detector[ray]"). A branch switched off (--no-rigid,
    --no-inversion) is scored with the fusion model the bundle fitted without it.
    """
    from detector.bundle import ProvenanceDetector, resolve_model
    from detector.io import printable
    from detector.scoring import ScoringError, count_inputs
    from detector.scoring.ray_engine import BundleScorer

    fmt, engine, watermark_search = fmt.value, engine.value, choice_value(watermark_search)
    if resume and out is None:
        fail("--resume needs --out (the file to continue)")
    if fmt == "table" and out is not None:
        fail("--format table prints to stdout; use jsonl or csv with --out")
    if fmt == "parquet" and out is None:
        fail("--format parquet writes a folder: give it with --out")
    if engine == "ray":
        from detector.scoring.ray_engine import require_ray

        try:
            require_ray()
        except ScoringError as exc:
            fail(str(exc))
        if num_gpus_per_worker > 0 and device == "cpu":
            device = "cuda"  # Ray gives each actor its GPU(s) through CUDA_VISIBLE_DEVICES
    if out is not None and out.is_dir():
        fail(f"--out {printable(out)} is a folder; name the results file")
    try:
        model_path = resolve_model(model)
        det = ProvenanceDetector.load(
            model_path,
            device="cpu" if engine == "ray" else device,  # ray: the driver only checks it and reads columns
            watermark=not no_watermark,
            rigid=not no_rigid,
            inversion=not no_inversion,
            watermark_search=watermark_search,
            allow_external=allow_external,
        )
    except (DetectorError, OSError) as exc:
        fail(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp) / ("scores.csv" if fmt == "csv" else "scores.jsonl")
        file_fmt = "jsonl" if fmt == "table" else fmt
        try:
            total = count_inputs(paths, confine=confine)
            with progress_bar("score", total) as advance:
                if engine == "ray":
                    summary = _score_on_ray(
                        paths,
                        det,
                        BundleScorer(
                            str(model_path),
                            device=device,
                            watermark=not no_watermark,
                            rigid=not no_rigid,
                            inversion=not no_inversion,
                            watermark_search=watermark_search,
                        ),
                        target,
                        fmt=file_fmt,
                        resume=resume,
                        batch_size=batch_size,
                        workers=max(1, workers),
                        cpus_per_worker=cpus_per_worker,
                        num_gpus_per_worker=num_gpus_per_worker,
                        decode_cpus=decode_cpus,
                        address=address,
                        progress=advance,
                    )
                else:
                    summary = det.score_files(
                        paths,
                        target,
                        fmt=file_fmt,
                        resume=resume,
                        batch_size=batch_size,
                        workers=workers,
                        progress=advance,
                        confine=confine,
                    )
        except DetectorError as exc:
            fail(str(exc))
        if out is None and fmt != "table":
            stdout.file.write(target.read_text())
            stdout.file.flush()
        elif fmt == "table":
            _print_results(target)
    _print_summary(summary.to_dict(), out)
    if summary_json is not None:
        write_json(summary_json, summary.to_dict())
    if summary.total == 0:
        fail("no image to score in the inputs (see the files passed by above)", code=1)


def _score_on_ray(paths, det, scorer, out, **kwargs):
    """The Ray engine with the CSV/Parquet columns of the detector the driver loaded."""
    from detector.result import csv_columns
    from detector.scoring.ray_engine import score_ray
    from detector.scoring.stream import expectations

    pipeline = det.pipeline
    columns = csv_columns(pipeline.branch_names, pipeline.versions)
    return score_ray(paths, scorer, out, columns=columns, expect=expectations(pipeline), **kwargs)


def _print_results(path: Path) -> None:
    from rich.table import Table

    from detector.result import ProvenanceResult

    table = Table(title="provenance")
    for column in ("path", "verdict", "p_ai", "generator", "watermark p", "error"):
        table.add_column(column, overflow="fold")
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            r = ProvenanceResult.from_json(line)
            wm = r.watermark.p_value if r.watermark and r.watermark.p_value is not None else None
            table.add_row(
                plain(r.path),
                r.verdict or "-",
                "-" if r.p_ai is None else f"{r.p_ai:.3f}",
                r.generator or "-",
                "-" if wm is None else f"{wm:.1e}",
                plain(r.error or ""),
            )
    stdout.print(table)


def _print_summary(summary: dict, out: Path | None) -> None:
    if summary["not_read"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(summary["not_read_reasons"].items()))
        console.print(f"[yellow]passed by {summary['not_read']} file(s) that are not images:[/] {reasons}")
        for item in summary["not_read_files"][:10]:
            console.print(f"  {item['path']}: {item['reason']}", markup=False, highlight=False)
        if summary["not_read"] > 10:
            console.print(f"  ... {summary['not_read'] - 10} more (all named in --summary)")
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items())) or "none"
    console.print(
        f"scored {summary['scored']} (skipped {summary['skipped']} already done, {summary['errors']} errors) "
        f"in {summary['seconds']:.1f} s; verdicts: {verdicts}" + (f"; wrote {out}" if out else "")
    )


__all__ = ["score_command"]
