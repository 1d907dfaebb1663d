"""A provenance bundle on disk and the detector it loads into: ``load_detector(path).score(image)``.

A bundle is a folder::

    bundle.json              format, what each part is, versions (sha256 of every weights file)
    detector/                the trained passive detector checkpoint, as ``detector train`` wrote it
    attribution.safetensors  the open-set attribution head, fitted on the detector's backbone features
    fusion.safetensors       the fusion of the passive branch scores, fitted on validation
    fusion_report.json       what the fusion was fitted on (validation metrics per branch)

and, optionally, a *reference* to a watermark decoder (checkpoint, key, registry: paths, not copies:
the key is a secret and belongs where its owner keeps it).

The pipeline it runs: one backbone forward per batch (at the checkpoint's input size) feeds the
detector head (calibrated P(fake), branch ``detector``) and the attribution head (top-k generators and
the distance to the nearest known generator, which is also a passive branch: ``attribution_distance``);
two optional passive branches add RIGID (``rigid``: the same backbone's embedding stability under noise)
and diffusion inversion (``inversion``: a reconstruction-error score, when the bundle was fitted with a
diffusion model, :mod:`detector.bundle.inversion`); each can be switched off at load time, and the fusion
then uses its model fitted without that branch. Every branch is one of the adapters of
:mod:`detector.scoring.branches`, and the pixels are those of :mod:`detector.data` at the checkpoint's
input size: what training, evaluation and bundle fitting saw. The watermark decoder, when referenced,
adds its evidence; the fusion turns it all into one :class:`~detector.result.ProvenanceResult`.
Everything is safetensors or JSON: loading a bundle runs no pickled code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detector.attribution import AttributionHead
from detector.bundle.inversion import InversionBranch
from detector.bundle.safety import UnsafeBundle, check_fields, confined_part, verify_hashes
from detector.devices import resolve_device as _device
from detector.errors import DetectorError
from detector.features.rigid import RigidConfig
from detector.fusion import FusionConfig, FusionModel
from detector.io import MIN_SCORE_SIDE, canonical_path, file_sha256
from detector.result import ProvenanceResult
from detector.scoring import Pipeline
from detector.scoring.branches import (
    DETECTOR_BRANCH,
    DISTANCE_BRANCH,
    INVERSION_BRANCH,
    RIGID_BRANCH,
    BackboneFeatures,
    PassiveBranch,
    attribution_branch,
    detector_branch,
    distance_branch,
    inversion_branch,
    rigid_branch,
    watermark_branch,
)

FORMAT = "detector.bundle/1"
MANIFEST = "bundle.json"
DETECTOR_DIR = "detector"
ATTRIBUTION_FILE = "attribution.safetensors"
FUSION_FILE = "fusion.safetensors"


class BundleError(DetectorError, ValueError):
    """A bundle folder is missing a part, has an unknown format, or cannot be built as asked."""


def load_watermarker(reference: dict[str, Any], base: Path | None = None):
    """A :class:`detector.watermark.Watermarker` from a bundle's watermark reference (relative paths are
    resolved against the bundle folder). Only reads: a registry that does not exist is an error, never
    created."""
    try:
        from detector.watermark import Watermarker
        from detector.watermark.registry import PayloadRegistry
    except ImportError as exc:
        raise BundleError(
            f"this bundle references a watermark decoder, but detector.watermark cannot be imported ({exc})"
        ) from None

    def resolve(value):
        if value is None:
            return None
        if not isinstance(value, str):
            raise BundleError(f"watermark reference: expected a path, got {value!r}")
        path = Path(value)
        return path if path.is_absolute() or base is None else base / path

    key = resolve(reference.get("key"))
    if key is None or not key.is_file():
        raise BundleError(f"watermark key not found: {key}")
    registry = resolve(reference.get("registry"))
    try:
        if registry is not None:
            registry = PayloadRegistry(registry, create=False)
        return Watermarker(
            key,
            checkpoint=resolve(reference.get("checkpoint")),
            registry=registry,
            fpr=float(reference.get("fpr", 1e-6)),
            search=str(reference.get("search", "full")),
        )
    except DetectorError as exc:
        raise BundleError(f"watermark reference: {exc}") from None


def _credentials_reader(trust: str | os.PathLike | None):
    """The Content Credentials reader, or None when c2pa-python is not installed."""
    from detector.credentials import CredentialsReader, c2pa_available, default_trust_anchors

    if not c2pa_available():
        return None
    try:
        anchors = Path(trust).read_text() if trust is not None else default_trust_anchors()
    except OSError as exc:
        raise BundleError(f"cannot read the C2PA trust anchors ({exc})") from None
    return CredentialsReader(anchors)


class ProvenanceDetector:
    """The trained passive detector + attribution head + fusion (+ a watermark decoder), as one scorer.

    Not to be confused with :class:`detector.training.RealFakeModel`, the trainable ``nn.Module`` inside it."""

    def __init__(
        self,
        model: torch.nn.Module,
        calibrator,
        card: dict[str, Any],
        attribution: AttributionHead | None = None,
        fusion: FusionModel | None = None,
        watermarker=None,
        fusion_config: FusionConfig | None = None,
        versions: dict[str, str] | None = None,
        path: str | Path | None = None,
        top_k: int = 3,
        rigid: RigidConfig | None = None,
        inversion: InversionBranch | None = None,
        credentials=None,
    ):
        self.model = model.eval()
        self.calibrator = calibrator
        self.card = dict(card)
        self.image_size = int(card["image_size"])
        self.attribution = attribution
        self.fusion = fusion
        self.watermarker = watermarker
        self.fusion_config = fusion_config or (fusion.config if fusion is not None else FusionConfig())
        self.versions = dict(versions or {})
        self.path = Path(path) if path is not None else None
        self.top_k = top_k
        self.rigid = rigid
        self.inversion = inversion
        self.credentials = credentials  # a detector.credentials.CredentialsReader, or None
        #: ``batch -> N x D`` backbone features at the checkpoint's input size, one forward per batch
        self.features = BackboneFeatures(self.model.backbone, self.image_size)
        self._pipeline: Pipeline | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        watermark: bool = True,
        rigid: bool = True,
        inversion: bool = True,
        watermark_search: str | None = None,
        c2pa: bool = True,
        c2pa_trust: str | os.PathLike | None = None,
        allow_external: bool = False,
    ) -> ProvenanceDetector:
        """Load a bundle folder (see the module docstring). ``watermark=False`` skips the decoder,
        ``watermark_search`` ("full" / "fast") overrides the bundle's decoder search;
        ``rigid=False`` / ``inversion=False`` switch those branches off (faster; the fusion falls back to
        its model fitted without them). Content Credentials are read when ``c2pa-python`` is installed
        (``c2pa=False`` skips them); ``c2pa_trust`` is a PEM file of trusted signer roots (default:
        ``$DETECTOR_C2PA_TRUST``).

        Loading is safe on an untrusted folder (:mod:`detector.bundle.safety`): parts confined to the
        bundle, recorded hashes verified, nothing created, no network; a diffusion model the bundle only
        references (a hub id or an outside folder) is loaded only with ``allow_external=True``. Any
        malformation is one :class:`BundleError`."""
        folder = Path(path)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise BundleError(f"{folder}: not a detector bundle ({MANIFEST} is missing)")
        try:
            det = cls._load(folder, device, watermark, rigid, inversion, watermark_search, allow_external)
            det.credentials = _credentials_reader(c2pa_trust) if c2pa else None
            return det
        except BundleError:
            raise
        except UnsafeBundle as exc:
            raise BundleError(f"{folder}: unsafe or malformed bundle: {exc}") from None
        except DetectorError as exc:
            raise BundleError(f"{folder}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{folder}: malformed bundle ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _load(cls, folder, device, watermark, rigid, inversion, watermark_search, allow_external):
        from detector.io.tensors import check_safetensors_header
        from detector.training.checkpoint import load_checkpoint

        manifest = folder / MANIFEST
        if manifest.stat().st_size > 1 << 20:
            raise UnsafeBundle(f"{MANIFEST} is larger than 1 MiB")
        try:
            meta = check_fields(json.loads(manifest.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest}: not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT:
            raise BundleError(f"{manifest}: unsupported bundle format {meta.get('format')!r} (want {FORMAT})")
        detector_dir = confined_part(folder, meta.get("detector") or DETECTOR_DIR, "detector", kind="folder")
        weights = confined_part(folder, f"{detector_dir.name}/model.safetensors", "detector weights")
        for name in ("config.yaml", "calibration.json", "model_card.json"):
            confined_part(folder, f"{detector_dir.name}/{name}", f"detector {name}")
        parts = {name: meta.get(name) for name in ("attribution", "fusion", "inversion") if meta.get(name)}
        files = {name: confined_part(folder, rel, name) for name, rel in parts.items()}
        for path in (weights, *files.values()):
            check_safetensors_header(path)
        verify_hashes(folder, meta, weights)
        model, _, calibrator, card = load_checkpoint(detector_dir, _device(device))
        attribution = AttributionHead.load(files["attribution"]) if "attribution" in files else None
        fusion = FusionModel.load(files["fusion"]) if "fusion" in files else None
        watermarker = None
        if watermark and meta.get("watermark"):
            reference = dict(meta["watermark"])
            if watermark_search is not None:
                reference["search"] = watermark_search
            watermarker = load_watermarker(reference, folder)
        rigid_config = RigidConfig(**meta["rigid"]) if rigid and meta.get("rigid") else None
        inversion_branch = None
        if inversion and "inversion" in files:
            inversion_branch = InversionBranch.load(
                folder, device=_device(device), allow_external=allow_external
            )
        return cls(
            model,
            calibrator,
            card,
            attribution=attribution,
            fusion=fusion,
            watermarker=watermarker,
            versions=meta.get("versions", {}),
            path=folder,
            rigid=rigid_config,
            inversion=inversion_branch,
        )

    # ------------------------------------------------------------------ branches
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def passive_branches(self) -> dict[str, PassiveBranch]:
        """Every passive branch this detector has, by name (the fusion uses those it was fitted on)."""
        branches = {DETECTOR_BRANCH: detector_branch(self.model.head, self.calibrator, self.features)}
        if self.attribution is not None:
            branches[DISTANCE_BRANCH] = distance_branch(self.attribution, self.features)
        if self.rigid is not None:
            branches[RIGID_BRANCH] = rigid_branch(self.features, self.rigid)
        if self.inversion is not None:
            branches[INVERSION_BRANCH] = inversion_branch(self.inversion)
        return branches

    @property
    def pipeline(self) -> Pipeline:
        """The scoring pipeline (built once): the passive branches the fusion knows, attribution, watermark."""
        if self._pipeline is None:
            passive = self.passive_branches()
            if self.fusion is not None:
                passive = {k: v for k, v in passive.items() if k in self.fusion.branches}
            else:
                passive = {DETECTOR_BRANCH: passive[DETECTOR_BRANCH]}  # calibrated: fine on its own
            self._pipeline = Pipeline(
                passive=passive,
                watermark=watermark_branch(self.watermarker) if self.watermarker is not None else None,
                attribution=attribution_branch(self.attribution, self.features, self.top_k)
                if self.attribution is not None
                else None,
                fusion=self.fusion,
                config=self.fusion_config,
                versions=self.versions,
                c2pa=self.credentials,
                min_side=MIN_SCORE_SIDE,
            )
        return self._pipeline

    # ------------------------------------------------------------------ scoring
    def score(
        self, image: str | os.PathLike | Image.Image | np.ndarray, path: str | None = None
    ) -> ProvenanceResult:
        """Score one image (a path, a PIL image or an H x W x 3 uint8 array)."""
        return self.pipeline.score(image, path=path)

    def score_many(
        self, images: Iterable[str | os.PathLike], batch_size: int = 16
    ) -> Iterator[ProvenanceResult]:
        """Results for many image paths (files, folders, globs, manifests), in order, batched; an
        unreadable file yields a result with ``error`` set. For millions of images and resumable output
        use :meth:`score_files` (``detector score``)."""
        from detector.scoring import expand_inputs

        def unique(paths: Iterable[str]) -> Iterator[str]:
            seen: set[str] = set()  # canonical paths: another spelling of a file already scored is skipped
            for path in paths:
                key = canonical_path(path)
                if key not in seen:
                    seen.add(key)
                    yield path

        sources = [images] if isinstance(images, (str, os.PathLike)) else images
        for results in self.pipeline.score_paths(unique(expand_inputs(sources)), batch_size):
            yield from results

    def score_files(self, sources, out, **kwargs):
        """:func:`detector.scoring.score_stream` (or ``score_distributed`` under torchrun) with this
        detector's pipeline: JSONL/CSV, one line per input, resumable."""
        from detector.scoring import distributed_shard, score_distributed, score_stream

        if distributed_shard()[1] > 1:
            return score_distributed(sources, self.pipeline, out, **kwargs)
        return score_stream(sources, self.pipeline, out, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "backbone": self.card.get("backbone"),
            "method": self.card.get("method"),
            "image_size": self.image_size,
            "branches": self.pipeline.branch_names,
            "attribution_classes": list(self.attribution.classes) if self.attribution else [],
            "watermark": self.watermarker is not None,
            "c2pa": self.credentials is not None,
            "c2pa_trust_configured": bool(self.credentials is not None and self.credentials.trusted),
            "versions": self.versions,
        }


def versions_for(folder: Path, card: dict[str, Any], parts: dict[str, str | None]) -> dict[str, str]:
    """Model name -> version string: package version, backbone weights id, sha256 of every weights file."""
    from detector import __version__

    versions = {
        "detector": __version__,
        "backbone": f"{card.get('backbone')}@{card.get('weights_id')}",
        "passive": "sha256:" + file_sha256(folder / DETECTOR_DIR / "model.safetensors")[:16],
    }
    for name, file in parts.items():
        if file:
            versions[name] = "sha256:" + file_sha256(folder / file)[:16]
    return versions
