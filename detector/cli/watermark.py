"""``detector watermark``: make a key, embed, detect, register payloads, train the model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detector.cli.choices import WatermarkSearch
from detector.cli.common import console, fail, parse_list, plain, progress_bar, stdout
from detector.errors import DetectorError

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
    help="Payload registry: SQLite path/URL or postgresql:// URL. Names the generator of a payload found; "
    "detection also tests the key's registered payloads on their own, so their marks need fewer "
    "agreeing bits (the FPR holds).",
)


def _images(path: Path, passed_by: list[tuple[str, str]] | None = None) -> list[Path]:
    """The image files of ``path`` (itself when it is not a folder: a missing or unreadable file gets its
    own error line); files a folder scan passes by are appended to ``passed_by``."""
    from detector.io import iter_image_files

    def note(skipped: Path, reason: str) -> None:
        if passed_by is not None:
            passed_by.append((str(skipped), reason))

    if path.is_dir():
        files = sorted(iter_image_files(path, on_skip=note))
        if not files:
            note(path, "folder holds no image file")
        return files
    return [path]


def _watermarker(
    key_file: Path,
    checkpoint: Path | None,
    registry: str | None,
    fpr: float = 1e-6,
    payload_bits: int = 16,
    search: str = "full",
    create_registry: bool = True,
    scheme: str | None = None,
):
    from detector.watermark.api import Watermarker
    from detector.watermark.registry import PayloadRegistry

    try:
        if registry is not None:  # a read (detect) opens an existing registry only
            registry = PayloadRegistry(registry, create=create_registry)
        return Watermarker(
            key_file,
            checkpoint=checkpoint,
            registry=registry,
            fpr=fpr,
            payload_bits=payload_bits,
            search=search,
            **({} if scheme is None else {"scheme": scheme}),
        )
    except DetectorError as exc:
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
    refine_steps: int = typer.Option(
        0,
        "--refine-steps",
        min=0,
        help="Optimise each image's mark for this many steps (15 recommended) so that it survives JPEG "
        "and downscaling better at the same PSNR (about 1 s for a 384 px image, bounded beyond 1024 px). "
        "0: the plain mark (instant; weaker on grey, dark and smooth photos). See "
        "experiments/watermark_refine/RESULTS.md for what it gains and costs.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    checkpoint: Path | None = CKPT_OPT,
    c2pa_cert: Path | None = typer.Option(
        None,
        "--c2pa-cert",
        help="Also sign each output with Content Credentials declaring it AI-generated (c2pa.created, "
        "trainedAlgorithmicMedia) bound to the watermark: the certificate chain, PEM, signing cert first "
        "(a local test chain: `detector c2pa make-test-certs DIR`).",
    ),
    c2pa_key: Path | None = typer.Option(
        None, "--c2pa-key", help="The signing certificate's private key (PEM)."
    ),
) -> None:
    """Embed a payload into an image or every image of a folder, keeping each file's format."""
    from detector.credentials import CredentialsError
    from detector.io import ImageLoadError, file_sha256
    from detector.watermark.api import WatermarkError
    from detector.watermark.registry import RegistryError

    signer = _c2pa_signer(c2pa_cert, c2pa_key)
    if (payload is None) == (generator is None):
        fail("give exactly one of --payload ID or --generator NAME (with --registry)")
    if generator is not None and not registry:
        fail("--generator needs a --registry to record the new payload id in")
    wm = _watermarker(key_file, checkpoint, registry)
    wm.refine_steps = refine_steps
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
                if signer is not None:
                    signer.sign_file(t, soft_binding=(wm.key.key_id, payload))
            except (ImageLoadError, WatermarkError, CredentialsError) as exc:
                failed += 1
                console.print(f"[yellow]skipped[/] {plain(exc)}")
            advance()
    if generator is not None and len(files) == 1 and not failed:
        console.print(f"output sha256 {file_sha256(targets[0])}")
    signed = " with Content Credentials" if signer is not None else ""
    console.print(f"embedded payload {payload} into {len(files) - failed} image(s){signed}; {failed} failed")
    if failed:
        raise typer.Exit(1)


def _c2pa_signer(cert: Path | None, key: Path | None):
    """The Content Credentials signer for --c2pa-cert/--c2pa-key, or None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        fail("--c2pa-cert and --c2pa-key go together")
    from detector.credentials import CredentialsError, CredentialsSigner

    try:
        return CredentialsSigner(cert, key)
    except CredentialsError as exc:
        fail(str(exc))


@app.command()
def detect(
    paths: list[Path] = typer.Argument(..., help="Image files or folders."),
    key_file: Path = KEY_OPT,
    registry: str | None = REGISTRY_OPT,
    fpr: float = typer.Option(1e-6, "--fpr", help="False-positive rate at which 'watermarked' is declared."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON lines to this file."),
    checkpoint: Path | None = CKPT_OPT,
    search: WatermarkSearch = typer.Option(
        WatermarkSearch.full,
        "--search",
        help="full: undo resizes, rotations and flips (two passes); fast: native grid only (several times "
        "cheaper on unmarked images); exhaustive: every candidate at every phase (slowest). The FPR holds "
        "for each.",
    ),
    binding_scheme: str | None = typer.Option(
        None,
        "--binding-scheme",
        help="The content hash the marks carry: dct-simhash-v2 (the default, marks made since "
        "2026-11-30) or dct-simhash-v1 (older marks; the registry's binding tag says which).",
    ),
) -> None:
    """Decode and test each image; one JSON line per image on stdout (bits, bit accuracy, p-value, payload...).

    A file that cannot be read (or is smaller than MIN_SCORE_SIDE) gets a line with its error and the
    command goes on; --out is written as it goes (OUT.partial, renamed when complete). A --registry
    that does not exist is an error: detection never creates one."""
    import os

    from detector.io import (
        KEEP_PIXELS,
        MIN_SCORE_SIDE,
        ImageLoadError,
        json_line,
        load_image_array,
        printable,
    )

    if out is not None and out.is_dir():
        fail(f"--out {printable(out)} is a folder; name the results file")
    wm = _watermarker(
        key_file,
        checkpoint,
        registry,
        fpr=fpr,
        search=search.value,
        create_registry=False,
        scheme=binding_scheme,
    )
    passed_by: list[tuple[str, str]] = []
    files: list[Path] = []
    for p in paths:
        files += _images(p, passed_by)
    partial = None if out is None else out.with_name(out.name + ".partial")
    handle = None
    if partial is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            handle = open(partial, "w", encoding="utf-8")  # noqa: SIM115 - closed below, renamed when complete
        except OSError as exc:
            fail(f"--out {printable(out)}: cannot write ({exc.strerror or exc})")
    failed = found = 0
    try:
        for f in files:
            try:
                image = load_image_array(f, min_side=MIN_SCORE_SIDE, keep_pixels=KEEP_PIXELS)
                result = wm.detect_array(image, path=str(f)).to_dict()
                found += bool(result["watermarked"])
            except DetectorError as exc:
                failed += 1
                reason = exc.reason if isinstance(exc, ImageLoadError) else str(exc)
                console.print(f"[yellow]skipped[/] {plain(f)}: {plain(reason)}", highlight=False)
                result = {"path": str(f), "error": reason}
            except Exception as exc:  # a decoder failure on one hostile file costs that file only
                failed += 1
                reason = f"watermark decoder failed ({type(exc).__name__}: {exc})"
                console.print(f"[yellow]skipped[/] {plain(f)}: {plain(reason)}", highlight=False)
                result = {"path": str(f), "error": reason}
            line = json_line(result)
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)
            if handle is not None:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        if handle is not None:
            handle.close()
    if partial is not None:
        os.replace(partial, out)
    for name, reason in passed_by:
        console.print(f"[yellow]passed by[/] {plain(name)}: {plain(reason)}", highlight=False)
    console.print(
        f"{found} of {len(files) - failed} image(s) watermarked at FPR {fpr:g}; {failed} unreadable; "
        f"{len(passed_by)} file(s) passed by"
    )
    if failed or not files:
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
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Start from this checkpoint (model.safetensors or a run's state.pt)."
    ),
    freeze_embedder: bool = typer.Option(
        False,
        "--freeze-embedder",
        help="Train the decoder only (needs --init-from): the embedder stays bit-identical, so marks "
        "made with that checkpoint still decode.",
    ),
) -> None:
    """Train the embedder/decoder on crops of the bundled photos (CPU; resumable; wandb offline).

    Decoder fine-tuning on real codecs (tried, not shipped: experiments/watermark_finetune):
    ``--init-from checkpoints/watermark/model.safetensors --freeze-embedder --set codecs=true``."""
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
    if init_from is not None:
        cfg.init = str(init_from)
    cfg.freeze_embedder = cfg.freeze_embedder or freeze_embedder
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    try:
        run_training(
            cfg, run_dir, resume=not fresh, log=lambda msg: console.print(msg, markup=False, highlight=False)
        )
    except DetectorError as exc:  # e.g. resuming a state trained for another number of steps
        fail(str(exc))
    if export is not None:
        target = export / "model.safetensors" if export.suffix != ".safetensors" else export
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "model.safetensors", target)
        console.print(f"exported {target}")
