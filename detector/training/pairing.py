"""Paired training: each content-preserving fake beside the real crop it was made from.

A fake made from a real crop (an autoencoder round trip, a super-resolved downscale, an img2img edit)
shares its content with that crop; only the generator's trace differs. Putting both in one batch, and
optionally asking the model to rank the fake above its own source, leaves the loss nothing to learn
from content within a pair. The pairs come from the manifest's ``source`` column
(``detector corpus build`` writes it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from detector.corpus.manifest import Record
from detector.errors import DetectorError


class PairingError(DetectorError, ValueError):
    """Paired training was asked for on a corpus whose fakes name no source in the training split."""


def source_indices(records: Sequence[Record]) -> list[int]:
    """For each record, the index of its source crop among ``records`` (-1: none, or not in this split)."""
    index = {os.path.normpath(r.path): i for i, r in enumerate(records)}
    return [index.get(os.path.normpath(r.source), -1) if r.source else -1 for r in records]


class PairedSampler(Sampler[int]):
    """A training order that keeps every fake next to its source crop, reshuffled each epoch.

    Units (a real crop followed by the fakes made from it; any other image alone) are shuffled and
    concatenated, so consecutive batches hold both sides of nearly every pair (a unit cut by a batch
    boundary is the exception). Every image comes once per epoch. Like ``DistributedSampler`` it has
    ``set_epoch`` and shards by rank: the order is padded to a multiple of the world size by repeating
    its start, and each rank takes one contiguous share.
    """

    def __init__(self, records: Sequence[Record], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.sources = source_indices(records)
        if all(s < 0 for s in self.sources):
            raise PairingError(
                "paired training needs fakes that name their source crop in the training split (the "
                "manifest's 'source' column, written by `detector corpus build`); none does here"
            )
        units: dict[int, list[int]] = {}
        for i, source in enumerate(self.sources):
            units.setdefault(i if source < 0 else source, []).append(i)
        # the source first, then its fakes in manifest order
        self.units = [sorted(members, key=lambda i: (i != head, i)) for head, members in units.items()]
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.per_rank = math.ceil(len(records) / num_replicas)

    @property
    def pairs(self) -> int:
        return sum(1 for s in self.sources if s >= 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [i for u in torch.randperm(len(self.units), generator=gen).tolist() for i in self.units[u]]
        total = self.per_rank * self.num_replicas
        order += order[: total - len(order)]
        return iter(order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank])


def pair_ranking_loss(
    logits: torch.Tensor, indices: torch.Tensor, sources: Sequence[int]
) -> torch.Tensor | None:
    """Mean ``softplus(logit(source) - logit(fake))`` over the pairs present in this batch (None if none):
    the fake must score above the crop it was made from."""
    position = {int(index): p for p, index in enumerate(indices.tolist())}
    fake_pos, real_pos = [], []
    for p, index in enumerate(indices.tolist()):
        source = sources[index]
        if source >= 0 and source in position:
            fake_pos.append(p)
            real_pos.append(position[source])
    if not fake_pos:
        return None
    return F.softplus(logits[real_pos] - logits[fake_pos]).mean()
