"""What a corpus holds, and the warnings that catch the classic shortcuts.

GenImage's reals are JPEG and its fakes PNG; a detector trained there learns the file format. The
summary compares real and fake on format and size and warns when they differ enough to carry the
label by themselves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from detector.corpus.manifest import Corpus, Record

#: Total-variation distance between real and fake distributions above which we warn.
SHORTCUT_TV_THRESHOLD = 0.10
SIZE_BUCKETS = (0, 64, 128, 256, 512, 1024, 2048, 10**9)


def _tv_distance(a: Counter, b: Counter) -> float:
    """Total variation distance between two categorical distributions (0 = same, 1 = disjoint)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def _size_bucket(record: Record) -> str:
    side = min(record.width, record.height)
    for lo, hi in zip(SIZE_BUCKETS, SIZE_BUCKETS[1:], strict=False):
        if lo <= side < hi:
            return f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"
    return "unknown"


@dataclass
class CorpusSummary:
    total: int
    by_label: dict[str, int]
    by_generator: dict[str, int]
    by_split: dict[str, dict[str, int]]
    formats: dict[str, dict[str, int]]
    sizes: dict[str, dict[str, float]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "by_label": self.by_label,
            "by_generator": self.by_generator,
            "by_split": self.by_split,
            "formats": self.formats,
            "sizes": self.sizes,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "warnings": self.warnings,
        }


def summarize(corpus: Corpus) -> CorpusSummary:
    records = corpus.records
    by_label = Counter(r.label for r in records)
    by_generator = Counter(r.generator for r in records)
    by_split: dict[str, Counter] = {}
    for record in records:
        by_split.setdefault(record.split or "unassigned", Counter())[record.label] += 1
    formats = {
        label: Counter(r.format or "?" for r in records if r.label == label) for label in ("real", "fake")
    }
    sizes = {}
    for label in ("real", "fake"):
        group = [r for r in records if r.label == label and r.width and r.height]
        if group:
            w = np.array([r.width for r in group])
            h = np.array([r.height for r in group])
            sizes[label] = {
                "width_median": float(np.median(w)),
                "height_median": float(np.median(h)),
                "min_side": float(np.minimum(w, h).min()),
                "max_side": float(np.maximum(w, h).max()),
            }

    warnings = []
    if by_label["real"] and by_label["fake"]:
        tv_format = _tv_distance(formats["real"], formats["fake"])
        if tv_format > SHORTCUT_TV_THRESHOLD:
            warnings.append(
                f"real and fake differ in file format (TV distance {tv_format:.2f}): "
                f"real {dict(formats['real'])} vs fake {dict(formats['fake'])}; a detector can learn the "
                "format instead of the generator: re-encode both classes identically"
            )
        real_sizes = Counter(_size_bucket(r) for r in records if r.label == "real" and r.width)
        fake_sizes = Counter(_size_bucket(r) for r in records if r.label == "fake" and r.width)
        tv_size = _tv_distance(real_sizes, fake_sizes)
        if tv_size > SHORTCUT_TV_THRESHOLD:
            warnings.append(
                f"real and fake differ in image size (TV distance {tv_size:.2f} over min-side buckets): "
                f"real {dict(real_sizes)} vs fake {dict(fake_sizes)}; resize or crop both classes alike"
            )
    elif records:
        warnings.append(f"only one class present ({dict(by_label)}): a detector needs both real and fake")
    if corpus.skipped:
        warnings.append(f"{len(corpus.skipped)} file(s) skipped; see the skipped list for reasons")
    return CorpusSummary(
        total=len(records),
        by_label=dict(by_label),
        by_generator=dict(sorted(by_generator.items())),
        by_split={k: dict(v) for k, v in sorted(by_split.items())},
        formats={k: dict(v) for k, v in formats.items()},
        sizes=sizes,
        skipped=list(corpus.skipped),
        warnings=warnings,
    )
