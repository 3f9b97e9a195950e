"""Loader: exact resume across epoch boundaries, data-parallel sharding, seeded shuffling."""
from __future__ import annotations

import json

import pytest
import torch

from xt.data.errors import DataError
from xt.data.loader import PackedLoader

from xtdata_helpers import make_dataset


def tiny_dataset(seed: int = 0, n_docs: int = 9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (n_docs,), generator=g).tolist()
    docs = [torch.randint(0, 5000, (n,), generator=g).tolist() for n in lengths]
    masks = [torch.rand(n, generator=g).gt(0.3).tolist() for n in lengths]
    return make_dataset(docs, masks)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_resume_yields_the_next_batch_across_epochs():
    """For every n over 4+ epochs, a loader restored from the state after batch n yields n+1..."""
    ds = tiny_dataset()
    ref = PackedLoader(ds, 24, 10, seed=3)
    n_total = sum(ref.batches_in_epoch(e) for e in range(4)) + 2
    states, batches = [], []
    for _ in range(n_total):
        batches.append(next(ref))
        states.append(json.loads(json.dumps(ref.state_dict())))  # states survive JSON
    assert ref.epoch >= 4
    for n in range(n_total - 3):
        fresh = PackedLoader(ds, 24, 10, seed=3)
        fresh.load_state_dict(states[n])
        for k in range(1, 4):
            assert same(next(fresh), batches[n + k]), (n, k)
        assert fresh.steps == n + 4


def test_epochs_counted_and_reshuffled():
    ds = tiny_dataset(1)
    loader = PackedLoader(ds, 30, 12, seed=0)
    n0 = loader.batches_in_epoch(0)
    first = [next(loader) for _ in range(n0)]
    assert loader.epoch == 0
    nxt = next(loader)
    assert loader.epoch == 1
    assert not torch.equal(loader.plan(0)[0], loader.plan(1)[0])  # a new order each epoch
    # same seed, new loader: identical stream; different seed: different order
    again = PackedLoader(ds, 30, 12, seed=0)
    assert all(same(next(again), b) for b in first + [nxt])
    assert not torch.equal(PackedLoader(ds, 30, 12, seed=1).plan(0)[0], loader.plan(0)[0])


@pytest.mark.parametrize("dp_size", [2, 3])
def test_data_parallel_ranks_share_the_stream_disjointly(dp_size):
    """Rank r at step s gets global batch s*R + r of the single-rank stream; R=1 is unchanged."""
    ds = tiny_dataset(2)
    single = PackedLoader(ds, 20, 8, seed=5)
    stream = [next(single) for _ in range(dp_size * 12)]
    ranks = [PackedLoader(ds, 20, 8, seed=5, dp_rank=r, dp_size=dp_size) for r in range(dp_size)]
    for s in range(12):
        for r, loader in enumerate(ranks):
            assert same(next(loader), stream[s * dp_size + r])
    assert same(next(PackedLoader(ds, 20, 8, seed=5, dp_rank=0, dp_size=1)), stream[0])


def test_resume_with_a_different_dp_size_continues_the_stream():
    """State after 5 steps on 2 ranks = 10 global batches consumed; 1 rank continues at batch 10."""
    ds = tiny_dataset(3)
    single = PackedLoader(ds, 20, 8, seed=1)
    stream = [next(single) for _ in range(14)]
    r1 = PackedLoader(ds, 20, 8, seed=1, dp_rank=1, dp_size=2)
    for _ in range(5):
        next(r1)
    one = PackedLoader(ds, 20, 8, seed=1)
    one.load_state_dict(r1.state_dict())
    assert [same(next(one), stream[10 + k]) for k in range(4)] == [True] * 4


def test_mismatched_state_is_refused():
    ds = tiny_dataset(4)
    state = PackedLoader(ds, 20, 8, seed=1).state_dict()
    with pytest.raises(DataError, match="seed=1 vs 2"):
        PackedLoader(ds, 20, 8, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="tokens_per_micro_batch"):
        PackedLoader(ds, 16, 8, seed=1).load_state_dict(state)


def test_bad_loader_arguments():
    ds = tiny_dataset(5)
    with pytest.raises(DataError, match="dp_rank=2 / dp_size=2"):
        PackedLoader(ds, 20, dp_rank=2, dp_size=2)
    with pytest.raises(DataError, match="chunk_len"):
        PackedLoader(ds, 20, 30)
