"""What loading an untrusted bundle may and may not do.

A bundle is a folder someone else may have written. Loading one must read only inside that folder,
only files whose recorded hash matches, never create a file, never reach the network, and answer any
malformation with one :class:`~detector.bundle.detector.BundleError` instead of a traceback:

* :func:`confined_part` - a part path in ``bundle.json`` is relative, has no ``..``, and resolves
  (symbolic links followed) to a regular file inside the bundle folder;
* :func:`verify_hashes` - the ``sha256:`` prefixes ``bundle.json`` records for the detector weights,
  the attribution head, the fusion and the inversion head match the files;
* :func:`check_fields` - ``bundle.json`` is a JSON object with known fields of the right types;
* every safetensors part has its header length checked before a parser reads it
  (:func:`detector.io.tensors.check_safetensors_header`).

The watermark reference (key, decoder checkpoint, registry) is the one part a bundle points outside
itself by design: a key is a secret its owner keeps elsewhere. Those files are only read (a missing
registry is an error, never created).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from detector.io import file_sha256

#: bundle.json fields and the JSON types each may hold (None allowed for the optional parts).
FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "detector": (str,),
    "attribution": (str, type(None)),
    "fusion": (str, type(None)),
    "watermark": (dict, type(None)),
    "rigid": (dict, type(None)),
    "inversion": (str, type(None)),
    "branches": (list,),
    "versions": (dict,),
}
WATERMARK_FIELDS = {"key", "checkpoint", "registry", "fpr", "search"}
#: versions entry -> bundle.json field naming the file it hashes ("passive" is the detector weights).
HASHED_PARTS = {"attribution": "attribution", "fusion": "fusion", "inversion": "inversion"}


class UnsafeBundle(ValueError):
    """Raised by the checks here; the loader turns it into a BundleError naming the bundle."""


def check_fields(meta: Any) -> dict[str, Any]:
    """``bundle.json`` as a dict with known, well-typed fields (UnsafeBundle otherwise)."""
    if not isinstance(meta, dict):
        raise UnsafeBundle(f"must hold a JSON object, not {type(meta).__name__}")
    unknown = sorted(set(meta) - set(FIELDS))
    if unknown:
        raise UnsafeBundle(f"unknown field(s) {unknown}")
    for name, types in FIELDS.items():
        if name in meta and not isinstance(meta[name], types):
            raise UnsafeBundle(f"field {name!r} has the wrong type ({type(meta[name]).__name__})")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get("versions", {}).items()):
        raise UnsafeBundle("field 'versions' must map names to strings")
    if isinstance(meta.get("watermark"), dict):
        extra = sorted(set(meta["watermark"]) - WATERMARK_FIELDS)
        if extra:
            raise UnsafeBundle(f"unknown watermark field(s) {extra}")
    return meta


def confined_part(folder: Path, relative: str, what: str, kind: str = "file") -> Path:
    """The path of a bundle part, refused unless it stays inside ``folder`` (no absolute path, no
    ``..``, no symbolic link leading out) and is a regular file (``kind="file"``) or a folder."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafeBundle(f"{what}: invalid part path {relative!r}")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(relative) or ".." in pure.parts:
        raise UnsafeBundle(f"{what}: part path {relative!r} leaves the bundle (absolute or '..')")
    root = folder.resolve()
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise UnsafeBundle(f"{what}: part path {relative!r} resolves outside the bundle (symbolic link)")
    ok = target.is_file() if kind == "file" else target.is_dir()
    if not ok:
        raise UnsafeBundle(f"{what}: {relative!r} is not a {kind} in the bundle")
    return target


def verify_hashes(folder: Path, meta: dict[str, Any], weights: Path) -> None:
    """Every ``sha256:<prefix>`` the bundle records for its own files matches the file's hash."""
    versions = meta.get("versions", {})
    checks = []
    if "passive" in versions:
        checks.append(("passive", weights))
    for name, field in HASHED_PARTS.items():
        if name in versions and meta.get(field):
            checks.append((name, confined_part(folder, meta[field], field)))
    for name, path in checks:
        recorded = versions[name]
        if not recorded.startswith("sha256:") or len(recorded) < 7 + 16:
            raise UnsafeBundle(f"versions.{name}: expected 'sha256:<16+ hex digits>', got {recorded!r}")
        prefix = recorded[len("sha256:") :].lower()
        if not file_sha256(path).startswith(prefix):
            raise UnsafeBundle(f"{path.name}: its sha256 does not match the one bundle.json records ({name})")
