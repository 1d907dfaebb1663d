"""The scoring pipeline: pluggable branch callables over a batch of images, fused into ProvenanceResults.

A branch is any callable that takes a :class:`Batch` and returns one value per image:

* a **passive** branch returns a score (a probability or any real number the fusion was fitted on), or
  ``None`` where it has no opinion;
* the **watermark** branch returns a :class:`WatermarkEvidence` (or ``None``);
* the **attribution** branch returns an :class:`AttributionEvidence` (or ``None``);
* the **c2pa** branch returns the image file's Content Credentials as :class:`C2PAEvidence` (or ``None``
  where there is no file to read, e.g. an in-memory image).

Branches that share work (one backbone forward feeding the detector head and the attribution head) share
it through :meth:`Batch.memo`: the first branch computes, the next reuses, so the pipeline costs one
forward, not one per branch. A branch that fails on a batch is re-run image by image so that one bad
image costs only its own result: it gets an ``error`` naming the branch, and the batch goes on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from detector.data import Decoded, decode, decode_or_error, decoded_batches
from detector.fusion import FusionConfig, FusionModel, fuse
from detector.io import DEFAULT_MAX_PIXELS, KEEP_PIXELS, ImageLoadError
from detector.result import AttributionEvidence, C2PAEvidence, ProvenanceResult, WatermarkEvidence


class Batch:
    """Decoded RGB images with their paths, and a per-batch memo for work branches share."""

    def __init__(self, paths: Sequence[str], images: Sequence[Image.Image]):
        if len(paths) != len(images):
            raise ValueError(f"{len(paths)} paths for {len(images)} images")
        self.paths = [str(p) for p in paths]
        self.images = list(images)
        self._memo: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.images)

    def memo(self, key: str, compute: Callable[[Batch], Any]) -> Any:
        """``compute(self)`` the first time ``key`` is asked for in this batch, the stored value after."""
        if key not in self._memo:
            self._memo[key] = compute(self)
        return self._memo[key]

    def subset(self, indices: Sequence[int]) -> Batch:
        return Batch([self.paths[i] for i in indices], [self.images[i] for i in indices])


PassiveBranch = Callable[[Batch], Sequence[float | None]]
WatermarkBranch = Callable[[Batch], Sequence[WatermarkEvidence | None]]
AttributionBranch = Callable[[Batch], Sequence[AttributionEvidence | None]]
CredentialsBranch = Callable[[Batch], Sequence[C2PAEvidence | None]]


class BranchError(RuntimeError):
    """A branch returned the wrong number of values for a batch."""


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImageLoadError) else f"{type(exc).__name__}: {exc}"


@dataclass
class Pipeline:
    """Branches + fusion: what turns decoded images into :class:`ProvenanceResult` objects."""

    passive: dict[str, PassiveBranch] = field(default_factory=dict)
    watermark: WatermarkBranch | None = None
    attribution: AttributionBranch | None = None
    fusion: FusionModel | None = None
    config: FusionConfig | None = None
    versions: dict[str, str] = field(default_factory=dict)
    c2pa: CredentialsBranch | None = None
    #: Images with a side below this get an error instead of a verdict (the bundle sets MIN_SCORE_SIDE).
    min_side: int = 1
    #: Decoded images above this many pixels are reduced right after decoding (bounded batch memory).
    keep_pixels: int | None = KEEP_PIXELS

    def __post_init__(self) -> None:
        if not self.passive and self.watermark is None:
            raise ValueError("a pipeline needs at least one passive branch or a watermark decoder")
        if self.fusion is not None:
            unknown = sorted(set(self.passive) - set(self.fusion.branches))
            if unknown:
                raise ValueError(
                    f"the fusion model was not fitted on branch(es) {unknown}: {self.fusion.branches}"
                )
        elif len(self.passive) > 1:
            raise ValueError(
                f"{len(self.passive)} passive branches need a fitted fusion model to combine them"
            )
        self.config = self.config or (self.fusion.config if self.fusion is not None else FusionConfig())

    @property
    def branch_names(self) -> list[str]:
        return sorted(self.passive)

    def _run(self, name: str, branch: Callable[[Batch], Sequence[Any]], batch: Batch, errors: dict[int, str]):
        """Values of one branch for every image of ``batch``; images it fails on land in ``errors``."""
        live = [i for i in range(len(batch)) if i not in errors]
        values: list[Any] = [None] * len(batch)
        if not live:
            return values
        sub = batch if len(live) == len(batch) else batch.subset(live)
        try:
            out = list(branch(sub))
            if len(out) != len(sub):
                raise BranchError(f"branch {name!r} returned {len(out)} values for {len(sub)} images")
            for i, value in zip(live, out, strict=True):
                values[i] = value
            return values
        except Exception as exc:  # a branch failure is reported per image, never fatal for the batch
            if len(live) == 1:
                errors[live[0]] = f"branch {name!r} failed: {_describe(exc)}"
                return values
        for i in live:  # isolate the image(s) the branch cannot handle
            try:
                out = list(branch(batch.subset([i])))
                if len(out) != 1:
                    raise BranchError(f"branch {name!r} returned {len(out)} values for 1 image")
                values[i] = out[0]
            except Exception as exc:
                errors[i] = f"branch {name!r} failed: {_describe(exc)}"
        return values

    def score_batch(self, batch: Batch) -> list[ProvenanceResult]:
        """One result per image of ``batch``, in order."""
        errors: dict[int, str] = {}
        passive = {name: self._run(name, fn, batch, errors) for name, fn in sorted(self.passive.items())}
        watermarks = (
            self._run("watermark", self.watermark, batch, errors) if self.watermark else [None] * len(batch)
        )
        attributions = (
            self._run("attribution", self.attribution, batch, errors)
            if self.attribution
            else [None] * len(batch)
        )
        credentials = self._run("c2pa", self.c2pa, batch, errors) if self.c2pa else [None] * len(batch)
        results = []
        for i, path in enumerate(batch.paths):
            if i in errors:
                results.append(ProvenanceResult.failed(path, errors[i], self.versions))
                continue
            scores = {name: _as_score(values[i]) for name, values in passive.items()}
            try:
                results.append(
                    fuse(
                        path,
                        scores,
                        self.fusion,
                        self.config,
                        watermarks[i],
                        attributions[i],
                        self.versions,
                        c2pa=credentials[i],
                    )
                )
            except (ValueError, TypeError) as exc:
                results.append(ProvenanceResult.failed(path, f"fusion failed: {exc}", self.versions))
        return results

    def with_watermark(
        self, result: ProvenanceResult, watermark: WatermarkEvidence | None
    ) -> ProvenanceResult:
        """``result`` fused again with other watermark evidence (what the service's probe guard uses
        when it contests a mark): the same branches, attribution and credentials."""
        return fuse(
            result.path,
            result.branches,
            self.fusion,
            self.config,
            watermark,
            result.attribution,
            result.versions,
            c2pa=result.c2pa,
        )

    def score_decoded(
        self, paths: Sequence[str], decoded: Sequence[Image.Image | ImageLoadError]
    ) -> list[ProvenanceResult]:
        """One result per path, in order, from what decoding gave: an image, or the error to report."""
        results: list[ProvenanceResult | None] = [None] * len(paths)
        good = [i for i, item in enumerate(decoded) if isinstance(item, Image.Image)]
        for i, item in enumerate(decoded):
            if isinstance(item, ImageLoadError):
                results[i] = ProvenanceResult.failed(paths[i], item.reason, self.versions)
        if good:
            scored = self.score_batch(Batch([paths[i] for i in good], [decoded[i] for i in good]))
            for i, result in zip(good, scored, strict=True):
                results[i] = result
        return results

    def decoder(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Callable[[str], Decoded]:
        """How this pipeline reads a file (:func:`detector.data.decode` with its minimum side and kept
        pixels): ``path -> image``, or the :class:`ImageLoadError` to report."""
        return functools.partial(
            decode_or_error, max_pixels=max_pixels, min_side=self.min_side, keep_pixels=self.keep_pixels
        )

    def score_paths(
        self,
        paths: Iterable[str],
        batch_size: int = 16,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        workers: int = 0,
    ) -> Iterator[list[ProvenanceResult]]:
        """One list of results per batch of ``paths``, in order (:func:`detector.data.decoded_batches`,
        decoding on ``workers`` threads one batch ahead); a file that cannot be read gets its error."""
        with closing(decoded_batches(paths, batch_size, self.decoder(max_pixels), workers)) as batches:
            for batch_paths, decoded in batches:
                results = self.score_decoded(batch_paths, decoded)
                del decoded  # free this batch's pixels before the next one is decoded
                yield results

    def score(
        self, image: str | os.PathLike | Image.Image | np.ndarray, path: str | None = None
    ) -> ProvenanceResult:
        """Score one image given as a path, a PIL image or an H x W x 3 uint8 array."""
        if isinstance(image, (str, os.PathLike)):
            path = path or os.fspath(image)
            try:
                image = decode(image, min_side=self.min_side, keep_pixels=self.keep_pixels)
            except ImageLoadError as exc:
                return ProvenanceResult.failed(path, exc.reason, self.versions)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
        elif isinstance(image, Image.Image):
            image = image.convert("RGB")
        else:
            raise TypeError(f"cannot score a {type(image).__name__}; give a path, a PIL image or an array")
        if min(image.size) < self.min_side:
            w, h = image.size
            return ProvenanceResult.failed(
                path or "<image>", f"too small: {w}x{h} (minimum side {self.min_side})", self.versions
            )
        return self.score_batch(Batch([path or "<image>"], [image]))[0]


def _as_score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
