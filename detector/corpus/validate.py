"""Check every file of a corpus through the safe loader; keep the good, report the bad by reason."""

from __future__ import annotations

from collections.abc import Callable

from detector.corpus.manifest import Corpus, Record
from detector.io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, probe_image


def validate_corpus(
    corpus: Corpus,
    decode: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 16,
    progress: Callable[[int], None] | None = None,
) -> Corpus:
    """Return a corpus of the loadable records, with ``width/height/format`` filled in and every
    refused file listed in ``skipped`` as ``(path, reason)``.

    ``decode=True`` decodes every image (finds truncated files); ``False`` reads headers only.
    """
    kept: list[Record] = []
    skipped: list[tuple[str, str]] = list(corpus.skipped)
    for record in corpus.records:
        path = corpus.resolve(record)
        try:
            info = probe_image(path, max_pixels=max_pixels)
            if min(info.width, info.height) < min_side:
                raise ImageLoadError(path, f"too small: {info.width}x{info.height} (minimum side {min_side})")
            if decode:
                load_image(path, max_pixels=max_pixels, min_side=min_side)
        except ImageLoadError as exc:
            skipped.append((record.path, exc.reason))
        else:
            record.width, record.height, record.format = info.width, info.height, info.format
            kept.append(record)
        if progress is not None:
            progress(1)
    return Corpus(kept, corpus.root, skipped)
