"""Check every file of a corpus through the safe loader; keep the good, report the bad by reason."""

from __future__ import annotations

from collections.abc import Callable

from detector.corpus.manifest import Corpus, Record
from detector.io import (
    DEFAULT_MAX_PIXELS,
    KEEP_PIXELS,
    ImageLoadError,
    canonical_path,
    load_image,
    probe_image,
)


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
    corpus.check_duplicates()  # the same file with two labels: refused (CorpusError)
    seen: set[str] = set()
    for record in corpus.records:
        path = corpus.resolve(record)
        key = canonical_path(path)
        if key in seen:
            skipped.append((record.path, "listed twice (same file as an earlier record)"))
            if progress is not None:
                progress(1)
            continue
        seen.add(key)
        try:
            info = probe_image(path, max_pixels=max_pixels)
            if min(info.width, info.height) < min_side:
                raise ImageLoadError(path, f"too small: {info.width}x{info.height} (minimum side {min_side})")
            if decode:
                load_image(path, max_pixels=max_pixels, min_side=min_side, keep_pixels=KEEP_PIXELS)
        except ImageLoadError as exc:
            skipped.append((record.path, exc.reason))
        except Exception as exc:  # a decoder bug on a hostile file costs that file, not the index
            skipped.append((record.path, f"cannot decode ({type(exc).__name__}: {exc})"))
        else:
            record.width, record.height, record.format = info.width, info.height, info.format
            kept.append(record)
        if progress is not None:
            progress(1)
    return Corpus(kept, corpus.root, skipped)
