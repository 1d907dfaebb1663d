"""Group-aware, seeded splits and the leave-generators-out protocol.

Invariant: every image of a ``group`` lands in the same split, so crops of one photo, or a fake and
the real it was made from, never sit on both sides of train/test.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.corpus.manifest import EXCLUDED, SPLITS, CorpusError, Record


@dataclass
class SplitConfig:
    """How to split a corpus. ``holdout`` names generators or families kept out of train and val."""

    seed: int = 0
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    holdout: list[str] | None = None
    #: What the fractions count: "images", or "groups" (leave-photos-out: a share of the *source photos*,
    #: so that a few large photos cannot leave the test split with only two of them).
    unit: str = "images"

    def fractions(self) -> tuple[float, float, float]:
        values = (self.train, self.val, self.test)
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise CorpusError(f"split fractions must be non-negative and not all zero, got {values}")
        total = sum(values)
        return tuple(v / total for v in values)  # type: ignore[return-value]


def _is_held_out(record: Record, holdout: set[str]) -> bool:
    return record.is_fake and (record.generator in holdout or record.family in holdout)


def assign_splits(records: Sequence[Record], config: SplitConfig) -> list[Record]:
    """Set ``record.split`` on every record (in place; also returned).

    Groups are stratified by their most common generator, shuffled with ``config.seed`` and filled
    into train/val/test greedily by image count. With ``holdout``, held-out generators never appear in
    train or val: their images in test groups stay in test, and those whose group fell in train/val
    are marked ``excluded`` (dropping them is the only way to keep both the group rule and the
    holdout rule).
    """
    holdout = set(config.holdout or [])
    known = {r.generator for r in records} | {r.family for r in records}
    missing = sorted(holdout - known)
    if missing:
        raise CorpusError(f"holdout names not in the corpus: {missing}; generators: {sorted(known)}")
    fractions = np.array(config.fractions())
    if config.unit not in ("images", "groups"):
        raise CorpusError(f"split unit must be 'images' or 'groups', got {config.unit!r}")
    by_group: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_group[record.group].append(record)

    strata: dict[str, list[str]] = defaultdict(list)
    for group in sorted(by_group):
        counts = Counter(r.generator for r in by_group[group] if not _is_held_out(r, holdout))
        key = min(counts, key=lambda g: (-counts[g], g)) if counts else "<holdout>"
        strata[key].append(group)

    rng = np.random.default_rng(config.seed)
    split_of_group: dict[str, str] = {}
    for key in sorted(strata):
        groups = strata[key]
        order = rng.permutation(len(groups))
        weight = {g: (1 if config.unit == "groups" else len(by_group[g])) for g in groups}
        filled = np.zeros(3)
        total = sum(weight.values())
        for index in order:
            group = groups[index]
            # Put the group where the split is furthest below its target share.
            deficit = fractions * max(total, 1) - filled
            deficit[fractions == 0] = -np.inf
            choice = int(np.argmax(deficit))
            split_of_group[group] = SPLITS[choice]
            filled[choice] += weight[group]

    for group, members in by_group.items():
        split = split_of_group[group]
        for record in members:
            record.split = EXCLUDED if (_is_held_out(record, holdout) and split != "test") else split
    return list(records)


def check_no_group_leak(records: Sequence[Record]) -> None:
    """Raise :class:`CorpusError` if a group appears in more than one of train/val/test."""
    seen: dict[str, str] = {}
    for record in records:
        if record.split not in SPLITS:
            continue
        previous = seen.setdefault(record.group, record.split)
        if previous != record.split:
            raise CorpusError(f"group {record.group!r} is in both {previous} and {record.split}")
