"""The one data path: file -> decoded RGB image -> resized ``N x 3 x S x S`` tensor batch.

Training, evaluation, feature extraction, bundle fitting, attribution and scoring all read pixels
through this module, so a file gives every one of them the same tensor:

* **decode** (:func:`decode`): :func:`detector.io.load_image` with the scoring rule: refused above
  ``max_pixels`` or below ``min_side``, reduced right after decoding to about ``KEEP_PIXELS`` (a batch's
  memory does not depend on the files' sizes; a 12 MP phone photo is untouched).
* **resize** (:func:`resize_transform`): shorter side to ``S`` with area interpolation, centre crop to
  ``S x S``. One rule for every backbone and every input size; :data:`TRANSFORM_VERSION` and
  :data:`INTERPOLATION` name it in feature-cache keys (bump the version when the rule changes).
* **tensor** (:func:`to_tensor`, :func:`image_batch`): ``uint8`` HWC -> float CHW in ``[0, 1]``, never
  normalised here (each backbone normalises itself).
* **batch** (:func:`decoded_batches`): paths in fixed-size batches, each decoded (optionally on worker
  threads, one batch ahead), a file that cannot be read standing in its place as an
  :class:`~detector.io.ImageLoadError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from detector.io import DEFAULT_MAX_PIXELS, KEEP_PIXELS, MIN_SCORE_SIDE, ImageLoadError, load_image

#: Names the resize rule of :func:`resize_transform`; part of every feature-cache key.
TRANSFORM_VERSION = "shortest-side-resize+center-crop/v1"
#: The resize interpolation, for every backbone (the one the shipped detectors were trained with).
INTERPOLATION = "area"

T = TypeVar("T")
Decoded = Image.Image | ImageLoadError


def decode(
    source,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SCORE_SIDE,
    keep_pixels: int | None = KEEP_PIXELS,
) -> Image.Image:
    """One input as every consumer reads it: an 8-bit RGB ``PIL.Image`` (see :func:`load_image`),
    reduced to about ``keep_pixels``. Any failure, a decoder bug on a hostile file included, is an
    :class:`ImageLoadError` naming the file."""
    try:
        return load_image(source, max_pixels=max_pixels, min_side=min_side, keep_pixels=keep_pixels)
    except ImageLoadError:
        raise
    except Exception as exc:  # a decoder bug on one hostile file costs that file, not the run
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        raise ImageLoadError(name, f"cannot decode ({type(exc).__name__}: {exc})") from None


def decode_or_error(source, **rule) -> Decoded:
    """:func:`decode`, with the error returned instead of raised (what a batch keeps in the file's place)."""
    try:
        return decode(source, **rule)
    except ImageLoadError as exc:
        return exc


def decode_array(source, **rule) -> np.ndarray:
    """:func:`decode` as an ``H x W x 3`` ``uint8`` array (what albumentations takes)."""
    return np.asarray(decode(source, **rule), dtype=np.uint8)


@functools.lru_cache(maxsize=32)
def resize_transform(size: int):
    """The albumentations pipeline bringing any ``H x W x 3`` uint8 image to ``size x size`` without
    distortion: shorter side to ``size`` (area interpolation), then centre crop."""
    import albumentations as A
    import cv2

    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return A.Compose(
        [A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA), A.CenterCrop(size, size)]
    )


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``3 x H x W`` float32 in [0, 1]."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only memory
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def stack_images(images: Iterable, transform) -> torch.Tensor:
    """Decoded images (PIL or ``H x W x 3`` uint8) through an albumentations ``transform``, stacked as
    ``N x 3 x H x W`` float in [0, 1]."""
    return torch.stack([to_tensor(transform(image=np.asarray(im, dtype=np.uint8))["image"]) for im in images])


def image_batch(images: Iterable, size: int) -> torch.Tensor:
    """Decoded images resized by :func:`resize_transform`: the ``N x 3 x size x size`` batch a backbone
    takes."""
    return stack_images(images, resize_transform(int(size)))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), pulled lazily."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def decoded_batches(
    paths: Iterable[str],
    batch_size: int,
    decoder: Callable[[str], Decoded] = decode_or_error,
    workers: int = 0,
) -> Iterator[tuple[list[str], list[Decoded]]]:
    """``(paths, decoded)`` per batch of ``batch_size`` inputs, in order; ``decoded[i]`` is the image of
    ``paths[i]`` or the :class:`ImageLoadError` to report for it.

    With ``workers`` > 0, worker threads decode the next batch while the caller works on this one (at
    most one batch ahead); without, the next batch is decoded only once the caller asks for it, so at
    most one batch of pixels is held. Close the iterator (``contextlib.closing``) to stop the workers
    early."""
    chunks = batched(paths, batch_size)
    if workers <= 0:
        for chunk in chunks:
            yield chunk, [decoder(p) for p in chunk]
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        current = next(chunks, None)
        pending = [pool.submit(decoder, p) for p in current] if current else []
        while current:
            upcoming = next(chunks, None)
            queued = [pool.submit(decoder, p) for p in upcoming] if upcoming else []
            done, pending = [future.result() for future in pending], None
            yield current, done
            del done  # the caller has finished with this batch: hold only the one being decoded
            current, pending = upcoming, queued
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
