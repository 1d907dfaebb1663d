"""``detector serve``: the verification service and its web page; ``detector serve-key``: make an API key."""

from __future__ import annotations

from pathlib import Path

import typer

from detector.cli.choices import (
    DEVICE_OPT,
    NO_WATERMARK_OPT,
    WATERMARK_SEARCH_OPT,
    PageMode,
    WatermarkSearch,
    choice_value,
)
from detector.cli.common import console, fail, stdout
from detector.errors import DetectorError


def _load(
    model: str | None, device: str, no_watermark: bool, watermark_search: str | None, fast: bool, trust
):
    """The bundle to serve: ``--model`` (a bundle folder or a model name), else the shipped default."""
    from detector.bundle import ProvenanceDetector, resolve_model

    try:
        return ProvenanceDetector.load(
            resolve_model(model),
            device=device,
            watermark=not no_watermark,
            watermark_search=watermark_search,
            rigid=not fast,
            inversion=not fast,
            c2pa_trust=trust,
        )
    except (DetectorError, OSError) as exc:
        fail(str(exc))


def serve_command(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Bundle folder or model name to serve (`detector models list`; default: the shipped default).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    keys: Path | None = typer.Option(
        None,
        "--keys",
        help="API key file (name:sha256 per line; `detector serve-key`). Also $DETECTOR_API_KEYS. "
        "No keys: anyone who can reach the port may score.",
    ),
    page: PageMode = typer.Option(
        PageMode.keyed,
        "--page",
        help="keyed: every score request needs a key (the page asks for it); "
        "open: requests without a key are allowed, rate limited per client address.",
    ),
    rate_limit: float = typer.Option(
        600, "--rate-limit", help="Score requests per minute per key (0: none)."
    ),
    anonymous_rate_limit: float = typer.Option(
        60, "--anonymous-rate-limit", help="Score requests per minute per address without a key (0: none)."
    ),
    max_upload_mb: float = typer.Option(32, "--max-upload-mb", help="Largest request body, in MiB."),
    max_files: int = typer.Option(16, "--max-files", help="Most images per request."),
    max_pixels: int = typer.Option(
        64_000_000, "--max-pixels", help="Pixel budget per image (checked before decoding)."
    ),
    timeout: float = typer.Option(60, "--timeout", help="Seconds before a request is answered 504."),
    batch_size: int = typer.Option(
        16, "--batch-size", help="Images per forward pass across concurrent requests."
    ),
    batch_wait_ms: float = typer.Option(5, "--batch-wait-ms", help="How long a batch waits for more images."),
    max_queue: int = typer.Option(64, "--max-queue", help="Images in flight before requests get 503."),
    decode_workers: int = typer.Option(2, "--decode-workers", help="Threads decoding uploads."),
    score_workers: int = typer.Option(
        1, "--score-workers", help="Threads running the model, each on its own micro-batch (several cores)."
    ),
    probe_memory: int = typer.Option(
        1000,
        "--probe-memory",
        help="Probe guard against copy attackers (docs/service.md): pictures it remembers once an upload's "
        "mark reads `forged`; a later `watermarked` reading of the same picture is taken as one more "
        "copied mark. 0: the guard is off.",
    ),
    probe_similarity: float = typer.Option(
        0.98, "--probe-similarity", help="Cosine of content features above which two uploads are one picture."
    ),
    probe_state: Path | None = typer.Option(
        None,
        "--probe-state",
        help="File where the probe guard keeps what it remembers across restarts (saved at most once a "
        "minute and at shutdown). Without it a restart forgets.",
    ),
    forged_per_day: float = typer.Option(
        20,
        "--forged-per-day",
        help="Forged readings a caller (key or address) may cause a day before none of their marks is "
        "taken as genuine (0: no budget).",
    ),
    device: str = DEVICE_OPT,
    no_watermark: bool = NO_WATERMARK_OPT,
    watermark_search: WatermarkSearch | None = WATERMARK_SEARCH_OPT,
    fast: bool = typer.Option(False, "--fast", help="Skip the RIGID and inversion branches (with --model)."),
    c2pa_trust: Path | None = typer.Option(
        None, "--c2pa-trust", help="PEM file of trusted C2PA signer roots (default: $DETECTOR_C2PA_TRUST)."
    ),
) -> None:
    """Serve the detector over HTTP: POST /v1/score, GET /v1/health, /v1/version, /docs, and a web page at /."""
    import uvicorn

    from detector.service import KeyStore, ServiceConfig, create_app

    page, watermark_search = page.value, choice_value(watermark_search)
    try:
        config = ServiceConfig(
            host=host,
            port=port,
            keys_file=str(keys) if keys else None,
            page=page,
            rate_limit=rate_limit,
            anonymous_rate_limit=anonymous_rate_limit,
            max_request_bytes=int(max_upload_mb * 1024 * 1024),
            max_files=max_files,
            max_pixels=max_pixels,
            timeout_s=timeout,
            batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
            max_queue=max_queue,
            decode_workers=decode_workers,
            score_workers=score_workers,
            probe_memory=probe_memory,
            probe_similarity=probe_similarity,
            forged_per_day=forged_per_day,
            probe_state=str(probe_state) if probe_state else None,
        )
        key_store = KeyStore.load(config.keys_file)
    except DetectorError as exc:
        fail(str(exc))
    detector = _load(model, device, no_watermark, watermark_search, fast, c2pa_trust)
    if host not in ("127.0.0.1", "localhost", "::1") and not key_store:
        console.print(f"[yellow]warning:[/] binding {host} without API keys: anyone who reaches it may score")
    access = "keyed" if key_store and page == "keyed" else "open"
    console.print(
        f"serving {detector.path or 'the default bundle'} on http://{host}:{port}/ (access {access})"
    )
    # Beyond this many open connections uvicorn answers 503 itself: bounds the memory bodies can take.
    concurrency = max(100, 4 * max_queue)
    try:
        app = create_app(detector, config, key_store)
    except DetectorError as exc:
        fail(str(exc))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=concurrency,
        timeout_keep_alive=30,
    )


def serve_key_command(
    keys: Path = typer.Argument(..., help="Key file to append the new key's hash to (created if missing)."),
    name: str = typer.Option(..., "--name", help="Who the key is for (shown in logs and rate limits)."),
) -> None:
    """Make an API key: prints it once on stdout and stores only its SHA-256 in KEYS."""
    from detector.service import ApiKeyFileError, add_key

    try:
        key = add_key(keys, name)
    except (ApiKeyFileError, OSError) as exc:
        fail(str(exc))
    stdout.print(key, markup=False, highlight=False)
    console.print(f"added key {name!r} to {keys} (only its hash is stored; keep the key now)")
