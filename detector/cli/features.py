"""``detector features``: backbone embeddings, diffusion-inversion features and RIGID scores for a corpus,
all through the content-addressed feature cache."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from detector.cli.choices import Dtype, Engine, InversionMode, choice_value
from detector.cli.common import console, fail, progress_bar, stdout, write_json
from detector.config import save_config
from detector.errors import DetectorError

app = typer.Typer(
    help=(
        "Features for the passive detector: `extract` (backbone embeddings or diffusion-inversion features, "
        "cached by file content), `rigid` (training-free score), `backbones`, `cache-info`."
    ),
    no_args_is_help=True,
)

DEFAULT_CACHE = Path(".cache/features")


@dataclass
class ExtractConfig:
    """What `detector features extract` ran with (saved beside its outputs)."""

    corpus: str = ""
    backbone: str = "effnet-lite0"
    pretrained: str | None = None
    inversion_model: str | None = None
    inversion_mode: str = "lare"
    inversion_steps: int = 20
    cache_dir: str = str(DEFAULT_CACHE)
    batch_size: int = 32
    workers: int = 0
    device: str = "cpu"
    dtype: str | None = None


def _load_corpus(path: Path):
    from detector.corpus import CorpusError, load_corpus

    try:
        return load_corpus(path)
    except CorpusError as exc:
        fail(str(exc))


def _build_backbone(name: str, pretrained: str | None, device: str, dtype: str | None):
    from detector.backbones import BackboneError, create_backbone

    kwargs = {} if pretrained is None else {"pretrained": pretrained}
    try:
        return create_backbone(name, device=device, dtype=dtype, **kwargs)
    except BackboneError as exc:
        fail(str(exc))


def _write_outputs(out: Path, corpus, matrix, valid, failed, extra_columns=None) -> None:
    """records.csv (one row per feature row, aligned) and errors.json beside features.npy."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(extra_columns or {})
    writer.writerow(["row", "index", "path", "label", "generator", "family", "group", "split", *names])
    for row, index in enumerate(valid):
        record = corpus.records[index]
        extras = [extra_columns[n][row] for n in names]
        writer.writerow(
            [
                row,
                index,
                record.path,
                record.label,
                record.generator,
                record.family,
                record.group,
                record.split,
                *extras,
            ]
        )
    from detector.io import atomic_write_text

    atomic_write_text(out / "records.csv", buffer.getvalue())
    write_json(out / "errors.json", [{"path": p, "reason": r} for p, r in failed])


def _report_failures(failed) -> None:
    if not failed:
        return
    table = Table(title=f"Skipped files ({len(failed)})")
    table.add_column("path")
    table.add_column("reason")
    for path, reason in failed[:50]:
        table.add_row(escape(path), escape(reason))
    if len(failed) > 50:
        table.add_row("...", f"{len(failed) - 50} more (see errors.json with --out)")
    console.print(table)


@app.command()
def backbones() -> None:
    """List the registered backbones."""
    from detector.backbones import describe_backbones
    from detector.backbones.registry import TINY_BACKBONES

    table = Table(title="Backbones")
    table.add_column("name")
    table.add_column("what")
    for name, text in describe_backbones().items():
        table.add_row(name, text)
    for name in TINY_BACKBONES:
        table.add_row(name, "tiny random-init model for tests and smoke runs")
    stdout.print(table)


@app.command()
def extract(
    corpus: Path = typer.Argument(..., help="Corpus folder (real/, fake/<generator>/) or manifest."),
    backbone: str = typer.Option("effnet-lite0", help="Backbone name (see `detector features backbones`)."),
    pretrained: str = typer.Option(
        None, help="open_clip tag, 'timm' (hub), or a local checkpoint; default: the backbone's default."
    ),
    inversion: Path = typer.Option(
        None,
        "--inversion",
        help="Instead of a backbone: diffusion-inversion statistics from this diffusers model (folder or hub id).",
    ),
    mode: InversionMode = typer.Option(
        InversionMode.lare,
        help="Inversion features: lare is a single step; all is dire + fakeinversion + lare.",
    ),
    steps: int = typer.Option(20, help="DDIM inversion steps (dire/fakeinversion/all)."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE, help="Feature cache folder (shared by all runs)."),
    batch_size: int = typer.Option(32, min=1),
    workers: int = typer.Option(
        0, min=0, help="local: DataLoader worker processes; ray: encoding actors (default 1)."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ... (mixed precision on CUDA)."),
    dtype: Dtype | None = typer.Option(None, help="Model dtype (default float32)."),
    out: Path = typer.Option(
        None, help="Also write features.npy (memory-mapped), records.csv, errors.json, config.yaml here."
    ),
    engine: Engine = typer.Option(
        Engine.local,
        help="local, or ray: decode and encode on a Ray cluster (the cache must be on a shared disk).",
    ),
    address: str = typer.Option(None, help="ray: cluster to join (auto, ray://HOST:10001)."),
    cpus_per_worker: float = typer.Option(1.0, help="ray: CPUs per encoding actor."),
    num_gpus_per_worker: float = typer.Option(0.0, help="ray: GPUs per encoding actor."),
    decode_cpus: float = typer.Option(0.25, help="ray: CPUs per decoding task."),
) -> None:
    """Compute (or look up) features for every image of a corpus; a second run is a cache lookup."""
    from detector.features.extract import ExtractionReport, compute_missing, extract_features, hash_records

    mode, dtype, engine = mode.value, choice_value(dtype), engine.value

    config = ExtractConfig(
        corpus=str(corpus),
        backbone=backbone,
        pretrained=pretrained,
        inversion_model=str(inversion) if inversion else None,
        inversion_mode=mode,
        inversion_steps=steps,
        cache_dir=str(cache_dir),
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
    )
    compute, hasher = compute_missing, hash_records
    if engine == "ray":
        from detector.features.ray_extract import BackboneRecipe, RayCompute
        from detector.scoring import ScoringError
        from detector.scoring.ray_engine import require_ray

        if inversion is not None:
            fail("--engine ray extracts backbone features; run inversion features with --engine local")
        try:
            require_ray()
        except ScoringError as exc:
            fail(str(exc))
        gpu_device = "cuda" if num_gpus_per_worker > 0 and device == "cpu" else device
        compute = RayCompute(
            BackboneRecipe(backbone, pretrained, gpu_device, dtype),
            workers=max(1, workers),
            cpus_per_worker=cpus_per_worker,
            num_gpus_per_worker=num_gpus_per_worker,
            decode_cpus=decode_cpus,
            address=address,
        )
        hasher = compute.hash
        device = "cpu"  # the driver's copy only names the cache namespace and the transform
    data = _load_corpus(corpus)
    if inversion is not None:
        extractor = _build_inversion(str(inversion), mode, steps, device, dtype)
    else:
        extractor = _build_backbone(backbone, pretrained, device, dtype)
    report = ExtractionReport()
    matrix, valid, failed = extract_features(
        data,
        extractor,
        cache_dir,
        batch_size=batch_size,
        num_workers=workers,
        out=out / "features.npy" if out else None,
        progress=progress_bar,
        report=report,
        compute=compute,
        hasher=hasher,
    )
    _report_failures(failed)
    for problem in report.cache_problems:
        console.print(f"[bold yellow]warning:[/] {problem}")
    if out:
        _write_outputs(out, data, matrix, valid, failed)
        save_config(config, out / "config.yaml")
        write_json(out / "report.json", report.to_dict())
    stdout.print(
        f"{escape(extractor.name)}: {len(valid)} of {report.total} images -> {matrix.shape[1]}-d features "
        f"({report.cached} from cache, {report.computed} computed, {len(failed)} skipped); "
        f"cache {escape(report.cache_dir)}"
    )


def _build_inversion(model: str, mode: str, steps: int, device: str, dtype: str | None):
    from detector.features.inversion import InversionConfig, InversionExtractor, load_diffusion_model

    try:
        config = InversionConfig(mode=mode, num_steps=steps)
        diffusion = load_diffusion_model(model, device=device, dtype=dtype)
    except (DetectorError, OSError) as exc:
        fail(str(exc))
    return InversionExtractor(diffusion, config)


@app.command()
def rigid(
    corpus: Path = typer.Argument(..., help="Corpus folder or manifest."),
    backbone: str = typer.Option("effnet-lite0", help="Backbone whose embedding space is probed."),
    pretrained: str = typer.Option(None, help="As for `extract`."),
    noise_level: float = typer.Option(0.05, help="lambda: noise scale in normalised input units."),
    draws: int = typer.Option(4, min=1, help="Noise draws averaged per image."),
    seed: int = typer.Option(0),
    cache_dir: Path = typer.Option(DEFAULT_CACHE),
    batch_size: int = typer.Option(32, min=1),
    device: str = typer.Option("cpu"),
    out: Path = typer.Option(None, help="Write scores.csv (and errors.json) here."),
) -> None:
    """RIGID, training-free: 1 - cos(f(x), f(x + lambda*noise)) per image; AUROC when both classes are present."""
    from detector.features.extract import extract_features
    from detector.features.rigid import RigidConfig, RigidExtractor

    data = _load_corpus(corpus)
    extractor = RigidExtractor(
        _build_backbone(backbone, pretrained, device, None), RigidConfig(noise_level, draws, seed)
    )
    matrix, valid, failed = extract_features(
        data, extractor, cache_dir, batch_size=batch_size, progress=progress_bar
    )
    _report_failures(failed)
    similarity = matrix[:, 0]
    score = 1.0 - similarity
    targets = np.array([data.records[i].target for i in valid])
    line = f"RIGID ({backbone}, lambda={noise_level:g}, {draws} draws): {len(valid)} images"
    summary = {
        "n": len(valid),
        "backbone": backbone,
        "noise_level": noise_level,
        "draws": draws,
        "seed": seed,
    }
    if len(set(targets.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(targets, score))
        summary["auroc"] = auc
        line += f", AUROC {auc:.3f} (fake = positive)"
    for label, name in ((0, "real"), (1, "fake")):
        if (targets == label).any():
            summary[f"mean_similarity_{name}"] = float(similarity[targets == label].mean())
    if out:
        out.mkdir(parents=True, exist_ok=True)
        _write_outputs(
            out, data, matrix, valid, failed, {"similarity": similarity.tolist(), "score": score.tolist()}
        )
        (out / "records.csv").rename(out / "scores.csv")
        write_json(out / "summary.json", summary)
    stdout.print(line)


@app.command("cache-info")
def cache_info(
    cache_dir: Path = typer.Argument(DEFAULT_CACHE, help="Feature cache folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """What the cache holds: one row per (extractor, weights, preprocessing) namespace."""
    import json

    from detector.features.cache import FeatureCache

    if not cache_dir.is_dir():
        fail(f"{cache_dir} is not a folder")
    table = Table(title=f"Feature cache {cache_dir}")
    for column in ("extractor", "weights", "dim", "entries", "shards", "MB", "problems"):
        table.add_column(column)
    rows = []
    for meta_path in sorted(cache_dir.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        with FeatureCache(meta_path.parent, meta) as cache:
            stats = cache.stats()
        rows.append({**meta, "folder": str(meta_path.parent), **stats.__dict__})
        table.add_row(
            meta["extractor"],
            meta["weights_id"],
            str(stats.feature_dim),
            str(stats.entries),
            str(stats.shards),
            f"{stats.bytes / 1e6:.1f}",
            "; ".join(stats.problems) or "-",
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        stdout.print(table)
