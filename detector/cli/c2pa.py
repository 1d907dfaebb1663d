"""``detector c2pa``: read Content Credentials, make a local test certificate chain."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detector.cli.common import console, fail, stdout

app = typer.Typer(
    help="Content Credentials (C2PA): read and validate manifests; make a local test signing chain.",
    no_args_is_help=True,
)


@app.command("make-test-certs")
def make_test_certs(
    out_dir: Path = typer.Argument(..., help="Folder for root.pem, chain.pem and key.pem."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Write a local root CA and a signing certificate it issued (for tests and local use only)."""
    from detector.credentials import make_test_certificates

    existing = [out_dir / n for n in ("root.pem", "chain.pem", "key.pem") if (out_dir / n).exists()]
    if existing and not overwrite:
        fail(f"{existing[0]} already exists; pass --overwrite to replace")
    paths = make_test_certificates(out_dir)
    console.print(
        f"wrote {paths['chain']} and {paths['key']} (sign: detector watermark embed ... --c2pa-cert "
        f"{paths['chain']} --c2pa-key {paths['key']}); trust {paths['root']} with --c2pa-trust or "
        "$DETECTOR_C2PA_TRUST"
    )


@app.command("read")
def read(
    paths: list[Path] = typer.Argument(..., help="Image files."),
    trust: Path | None = typer.Option(
        None, "--trust", help="PEM file of trusted signer roots (default: $DETECTOR_C2PA_TRUST)."
    ),
) -> None:
    """Print each file's Content Credentials evidence as one JSON line (present, state, signer, source type)."""
    from dataclasses import asdict

    from detector.credentials import CredentialsReader, c2pa_available, default_trust_anchors

    if not c2pa_available():
        fail("c2pa-python is not installed (pip install c2pa-python)")
    try:
        reader = CredentialsReader(trust.read_text() if trust else default_trust_anchors())
    except OSError as exc:
        fail(f"cannot read trust anchors ({exc})")
    failed = 0
    for path in paths:
        try:
            evidence = reader.read_file(path)
            line = {"path": str(path), **(asdict(evidence) if evidence else {"present": None})}
        except OSError as exc:
            failed += 1
            line = {"path": str(path), "error": f"cannot read file ({exc.strerror or exc})"}
        stdout.print(json.dumps(line), markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
