"""Paired training: the sampler keeps each fake beside its source crop; the ranking loss reads the pairs."""

from __future__ import annotations

import pytest
import torch

from detector.corpus.manifest import Record
from detector.training.pairing import PairedSampler, PairingError, pair_ranking_loss, source_indices


def corpus(n_real: int = 12) -> list[Record]:
    reals = [Record(f"real/p{i % 3}/c{i}.png", "real", group=f"p{i % 3}") for i in range(n_real)]
    # two conditional generators drawing sources, one unconditional
    ae = [
        Record(f"fake/ae/{i}.png", "fake", "ae", group=f"p{i % 3}", source=f"real/p{i % 3}/c{i}.png")
        for i in range(0, n_real, 2)
    ]
    sr = [
        Record(f"fake/sr/{i}.png", "fake", "sr", group=f"p{i % 3}", source=f"./real/p{i % 3}/c{i}.png")
        for i in range(0, n_real, 3)
    ]
    gan = [Record(f"fake/gan/{i}.png", "fake", "gan") for i in range(5)]
    return reals + gan + ae + sr


def test_sources_resolve_to_indices_of_the_split():
    records = corpus()
    sources = source_indices(records)
    for i, s in enumerate(sources):
        if records[i].source:
            assert records[s].path.endswith(records[i].source.lstrip("./"))
        else:
            assert s == -1
    # a source outside the split (e.g. held out) pairs with nothing
    assert source_indices([Record("fake/x.png", "fake", "ae", source="real/elsewhere.png")]) == [-1]


def test_each_epoch_is_a_permutation_with_every_fake_right_after_its_source_unit():
    records = corpus()
    sampler = PairedSampler(records, seed=3)
    sources = sampler.sources
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(records)))
        position = {index: p for p, index in enumerate(order)}
        for i, s in enumerate(sources):
            if s >= 0:  # the fake sits in its source's contiguous unit, after the source
                members = sorted(position[j] for j, t in enumerate(sources) if t == s)
                assert position[s] < position[i]
                assert members == list(range(position[s] + 1, position[s] + 1 + len(members)))
        orders.append(order)
    assert orders[0] != orders[1]  # reshuffled each epoch
    assert sampler.pairs == sum(1 for r in records if r.source)


def test_ranks_split_the_order_without_overlap():
    records = corpus()
    shares = []
    for rank in range(2):
        sampler = PairedSampler(records, num_replicas=2, rank=rank, seed=0)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    assert set(shares[0]) | set(shares[1]) == set(range(len(records)))


def test_a_corpus_without_sources_is_refused():
    with pytest.raises(PairingError, match="source"):
        PairedSampler([Record("a.png", "real"), Record("b.png", "fake", "gan")])


def test_ranking_loss_uses_only_pairs_present_in_the_batch():
    sources = [-1, -1, 0, 1, -1]  # 2 was made from 0, 3 from 1
    logits = torch.tensor([0.0, 2.0, 3.0, -1.0, 5.0])
    indices = torch.tensor([0, 1, 2, 3, 4])
    expected = (
        torch.nn.functional.softplus(torch.tensor(0.0 - 3.0))
        + torch.nn.functional.softplus(torch.tensor(2.0 + 1.0))
    ) / 2
    torch.testing.assert_close(pair_ranking_loss(logits, indices, sources), expected)
    # 3's source (1) is not in this batch: only the pair (0, 2) counts
    sub = torch.tensor([0, 2, 3])
    torch.testing.assert_close(
        pair_ranking_loss(logits[[0, 2, 3]], sub, sources), torch.nn.functional.softplus(torch.tensor(-3.0))
    )
    assert pair_ranking_loss(logits[[1, 4]], torch.tensor([1, 4]), sources) is None
