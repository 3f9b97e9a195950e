"""`MixedLoader`: weighted sources in one deterministic, resumable, data-parallel stream."""
from __future__ import annotations

import pytest
import torch

from xt.data import DataError, MixedLoader, PackedLoader, TokenizedDataset


def _dataset(seed: int, docs: int = 30) -> TokenizedDataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (docs,), generator=g)
    offsets = torch.zeros(docs + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    tokens = torch.randint(0, 1000, (int(offsets[-1]),), generator=g, dtype=torch.int32) + 1000 * seed
    return TokenizedDataset(tokens, offsets, None, key=f"ds{seed}")


def _mixed(rank: int = 0, size: int = 1, weights=(3.0, 1.0)) -> MixedLoader:
    loaders = [PackedLoader(_dataset(s), 24, seed=s) for s in (1, 2)]
    return MixedLoader(loaders, list(weights), ["a", "b"], rank, size)


def _source(batch: dict) -> int:
    return int(batch["input_ids"][0]) // 1000  # tokens of dataset s are in [1000 s, 1000 s + 1000)


def test_shares_follow_the_weights_and_each_source_keeps_its_own_order():
    mixed = _mixed()
    drawn = [next(mixed) for _ in range(40)]
    assert [_source(b) for b in drawn[:8]] == [1, 1, 2, 1, 1, 1, 2, 1]  # smooth weighted round-robin, 3:1
    assert mixed.realised_mix() == {"a": 0.75, "b": 0.25}
    for s in (1, 2):
        own = PackedLoader(_dataset(s), 24, seed=s)
        for b in (b for b in drawn if _source(b) == s):
            assert torch.equal(b["input_ids"], next(own)["input_ids"])


def test_resumes_exactly_and_re_splits_over_ranks():
    one = _mixed()
    for _ in range(7):
        next(one)
    state = one.state_dict()
    ref = [next(one)["input_ids"] for _ in range(6)]
    again = _mixed()
    again.load_state_dict(state)
    assert all(torch.equal(next(again)["input_ids"], r) for r in ref[:3])
    # the same state on 3 ranks: step s of rank r is global micro-batch 3 s + r
    ranks = [_mixed(r, 3) for r in range(3)]
    for ld in ranks:
        ld.load_state_dict(state)
    got = [next(ranks[r])["input_ids"] for _ in range(2) for r in range(3)]
    for ld in ranks:
        next(ld)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    assert ranks[0].state_dict() == ranks[1].state_dict() == ranks[2].state_dict()
    with pytest.raises(DataError, match="another data mix"):
        _mixed(weights=(1.0, 1.0)).load_state_dict(state)
