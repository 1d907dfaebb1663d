"""``detector watermark``: make a key, embed, detect, register payloads, train the model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detector.cli.common import console, fail, parse_list, progress_bar, stdout

app = typer.Typer(
    help=(
        "Invisible watermark with a keyed, error-corrected payload and a hypothesis test at a set false-positive "
        "rate. Start with `detector watermark keygen key.txt`."
    ),
    no_args_is_help=True,
)

KEY_OPT = typer.Option(
    ..., "--key-file", "-k", help="Secret key file (make one with `detector watermark keygen`)."
)
CKPT_OPT = typer.Option(
    None, "--checkpoint", help="Model (safetensors); default: the shipped checkpoints/watermark/."
)
REGISTRY_OPT = typer.Option(
    None,
    "--registry",
    envvar="DETECTOR_WATERMARK_REGISTRY",
    help="Payload registry: SQLite path/URL or postgresql:// URL.",
)


def _images(path: Path) -> list[Path]:
    from detector.io import iter_image_files

    if path.is_dir():
        return sorted(iter_image_files(path))
    return [path]


def _watermarker(
    key_file: Path,
    checkpoint: Path | None,
    registry: str | None,
    fpr: float = 1e-6,
    payload_bits: int = 16,
    search: str = "full",
):
    from detector.watermark.api import Watermarker, WatermarkError
    from detector.watermark.payload import KeyFileError
    from detector.watermark.registry import RegistryError

    try:
        return Watermarker(
            key_file,
            checkpoint=checkpoint,
            registry=registry,
            fpr=fpr,
            payload_bits=payload_bits,
            search=search,
        )
    except (KeyFileError, WatermarkError, RegistryError, ValueError) as exc:
        fail(str(exc))


@app.command()
def keygen(
    key_file: Path = typer.Argument(..., help="Where to write the new secret key."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing key file (old marks become unreadable)."
    ),
) -> None:
    """Write a new random 256-bit secret key (readable by you only). Keep it secret; back it up."""
    from detector.watermark.payload import KeyFileError, generate_key

    try:
        key = generate_key(key_file, overwrite=overwrite)
    except KeyFileError as exc:
        fail(str(exc))
    console.print(f"wrote key {key_file} (key id {key.key_id})")


@app.command()
def embed(
    src: Path = typer.Argument(..., exists=True, help="Image file or folder of images."),
    dst: Path = typer.Argument(..., help="Output file (for a file) or folder (for a folder; tree mirrored)."),
    key_file: Path = KEY_OPT,
    payload: int | None = typer.Option(None, "--payload", "-p", help="Payload id to embed (0..65535)."),
    generator: str | None = typer.Option(
        None,
        "--generator",
        help="Allocate a new payload id in the registry for this generator (instead of --payload).",
    ),
    model_version: str = typer.Option(
        "", "--model-version", help="Registry record: the generator's model version."
    ),
    registry: str | None = REGISTRY_OPT,
    strength: float | None = typer.Option(
        None,
        "--psnr",
        help="Strength as target PSNR in dB (lower = stronger, more visible); default: the model's.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    checkpoint: Path | None = CKPT_OPT,
) -> None:
    """Embed a payload into an image or every image of a folder, keeping each file's format."""
    from detector.io import ImageLoadError, file_sha256
    from detector.watermark.api import WatermarkError
    from detector.watermark.registry import RegistryError

    if (payload is None) == (generator is None):
        fail("give exactly one of --payload ID or --generator NAME (with --registry)")
    if generator is not None and not registry:
        fail("--generator needs a --registry to record the new payload id in")
    wm = _watermarker(key_file, checkpoint, registry)
    files = _images(src)
    if not files:
        fail(f"{src}: no image files found")
    targets = [dst if src.is_file() else dst / f.relative_to(src) for f in files]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        fail(f"{existing[0]} already exists ({len(existing)} output(s) in all); pass --overwrite to replace")
    if payload is None:
        try:
            record = wm.register(generator, model_version)
        except (RegistryError, WatermarkError) as exc:
            fail(str(exc))
        payload = record.payload_id
        console.print(f"registered payload {payload} for generator {generator!r} (key id {wm.key.key_id})")
    elif not 0 <= payload <= wm.codec.max_payload:
        fail(f"--payload must be in 0..{wm.codec.max_payload}, got {payload}")
    failed = 0
    with progress_bar("embedding", len(files)) as advance:
        for f, t in zip(files, targets, strict=True):
            try:
                wm.embed_file(f, t, payload, overwrite=overwrite, target_psnr=strength)
            except (ImageLoadError, WatermarkError) as exc:
                failed += 1
                console.print(f"[yellow]skipped[/] {exc}")
            advance()
    if generator is not None and len(files) == 1 and not failed:
        console.print(f"output sha256 {file_sha256(targets[0])}")
    console.print(f"embedded payload {payload} into {len(files) - failed} image(s); {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command()
def detect(
    paths: list[Path] = typer.Argument(..., help="Image files or folders."),
    key_file: Path = KEY_OPT,
    registry: str | None = REGISTRY_OPT,
    fpr: float = typer.Option(1e-6, "--fpr", help="False-positive rate at which 'watermarked' is declared."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON lines to this file."),
    checkpoint: Path | None = CKPT_OPT,
    search: str = typer.Option(
        "full",
        "--search",
        help="full: undo a 0.5x resize and rotations up to 6 degrees; fast: native grid only (~10x cheaper "
        "on unmarked images). The FPR holds for both.",
    ),
) -> None:
    """Decode and test each image; one JSON line per image on stdout (bits, bit accuracy, p-value, payload...)."""
    from detector.io import ImageLoadError, atomic_write_text

    wm = _watermarker(key_file, checkpoint, registry, fpr=fpr, search=search)
    files: list[Path] = []
    for p in paths:
        if not p.exists():
            fail(f"{p}: no such file or folder")
        files += _images(p)
    lines, failed, found = [], 0, 0
    for f in files:
        try:
            result = wm.detect_file(f).to_dict()
            found += bool(result["watermarked"])
        except ImageLoadError as exc:
            failed += 1
            console.print(f"[yellow]skipped[/] {exc}")
            result = {"path": str(f), "error": str(exc)}
        line = json.dumps(result)
        lines.append(line)
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        atomic_write_text(out, "\n".join(lines) + "\n")
    console.print(
        f"{found} of {len(files) - failed} image(s) watermarked at FPR {fpr:g}; {failed} unreadable"
    )
    if failed:
        raise typer.Exit(1)


@app.command()
def register(
    key_file: Path = KEY_OPT,
    generator: str = typer.Option(..., "--generator", help="Generator name to record."),
    model_version: str = typer.Option("", "--model-version"),
    payload: int | None = typer.Option(
        None, "--payload", help="Record this id (default: allocate the next free)."
    ),
    registry: str = typer.Option(..., "--registry", envvar="DETECTOR_WATERMARK_REGISTRY"),
) -> None:
    """Record a payload id for a generator in the registry; prints the record as JSON."""
    from detector.watermark.api import default_binding_tag
    from detector.watermark.payload import KeyFileError, load_key
    from detector.watermark.registry import PayloadRegistry, RegistryError

    try:
        key = load_key(key_file)
        with PayloadRegistry(registry) as reg:
            record = reg.register(
                key.key_id, generator, model_version, payload_id=payload, binding=default_binding_tag()
            )
    except (KeyFileError, RegistryError) as exc:
        fail(str(exc))
    stdout.print(json.dumps(record.to_dict()), markup=False, highlight=False)


@app.command()
def train(
    run_dir: Path = typer.Argument(..., help="Run folder (resumed if it holds state.pt)."),
    config: Path | None = typer.Option(None, "--config", help="YAML WatermarkTrainConfig."),
    overrides: list[str] = typer.Option([], "--set", help="Dotted overrides, e.g. --set steps=2000."),
    holdout: str | None = typer.Option(
        None, "--holdout", help="Comma-separated photo names kept out of training."
    ),
    export: Path | None = typer.Option(
        None, "--export", help="Copy the final model here (e.g. checkpoints/watermark/)."
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore an existing state.pt and start over."),
) -> None:
    """Train the embedder/decoder on crops of the bundled photos (CPU; resumable; wandb offline)."""
    import shutil

    from detector.config import ConfigError, load_config, save_config
    from detector.watermark.train import WatermarkTrainConfig
    from detector.watermark.train import train as run_training

    try:
        cfg = load_config(WatermarkTrainConfig, config, overrides)
    except ConfigError as exc:
        fail(str(exc))
    if holdout is not None:
        cfg.holdout = parse_list(holdout)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    try:
        run_training(
            cfg, run_dir, resume=not fresh, log=lambda msg: console.print(msg, markup=False, highlight=False)
        )
    except ValueError as exc:  # e.g. resuming a state trained for another number of steps
        fail(str(exc))
    if export is not None:
        target = export / "model.safetensors" if export.suffix != ".safetensors" else export
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "model.safetensors", target)
        console.print(f"exported {target}")
