"""Packing against a straightforward list-based reference (hypothesis over document lengths)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xt.data.loader import PackedLoader

from xtdata_helpers import make_dataset


def reference_epoch(docs, masks, chunk_len, budget, order):
    """Plain-Python packing: split docs, lay chunks out in `order`, close a batch when full."""
    chunks = []
    for d, m in zip(docs, masks if masks is not None else [[True] * len(d) for d in docs]):
        for s in range(0, len(d), chunk_len):
            chunks.append((d[s:s + chunk_len], m[s:s + chunk_len]))
    groups, cur, used = [], [], 0
    for c in order:
        n = len(chunks[c][0])
        if used + n > budget and cur:
            groups.append(cur)
            cur, used = [], 0
        cur.append(c)
        used += n
    groups.append(cur)
    batches = []
    for g in groups:
        ids, labels, pos, cu = [], [], [], [0]
        for c in g:
            d, m = chunks[c]
            ids += d
            labels += [d[i + 1] if m[i + 1] else -100 for i in range(len(d) - 1)] + [-100]
            pos += list(range(len(d)))
            cu.append(cu[-1] + len(d))
        batches.append({"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu,
                        "max_seqlen": max(b - a for a, b in zip(cu, cu[1:]))})
    return batches, len(chunks)


docs_strategy = st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=40), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(docs=docs_strategy, budget=st.integers(2, 64), frac=st.floats(0.0, 1.0), with_mask=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 5), data=st.data())
def test_packing_matches_reference(docs, budget, frac, with_mask, shuffle, seed, data):
    chunk_len = max(1, round(frac * budget))
    masks = None
    if with_mask:
        masks = [data.draw(st.lists(st.booleans(), min_size=len(d), max_size=len(d))) for d in docs]
    loader = PackedLoader(make_dataset(docs, masks), budget, chunk_len, seed=seed, shuffle=shuffle)
    for epoch in range(2):
        order = loader.plan(epoch)[0].tolist()
        expected, n_chunks = reference_epoch(docs, masks, chunk_len, budget, order)
        assert sorted(order) == list(range(n_chunks))  # each chunk exactly once per epoch
        if not shuffle:
            assert order == list(range(n_chunks))
        assert loader.batches_in_epoch(epoch) == len(expected)
        for ref in expected:
            got = next(loader)
            assert loader.epoch == epoch
            assert got["input_ids"].dtype == torch.int64 and got["labels"].dtype == torch.int64
            assert got["position_ids"].dtype == torch.int64 and got["cu_seqlens"].dtype == torch.int32
            for key in ("input_ids", "labels", "position_ids", "cu_seqlens"):
                assert got[key].tolist() == ref[key], key
            assert got["max_seqlen"] == ref["max_seqlen"]
            assert int(got["cu_seqlens"][-1]) == len(got["input_ids"]) <= budget


@settings(max_examples=40, deadline=None)
@given(docs=docs_strategy, budget=st.integers(2, 50), frac=st.floats(0.0, 1.0))
def test_every_token_once_in_order_and_labels_consistent(docs, budget, frac):
    """Unshuffled, one epoch's batches laid end to end reproduce the documents exactly; labels are
    the next token of the same chunk, -100 at every chunk end; chunks never exceed chunk_len."""
    chunk_len = max(1, round(frac * budget))
    loader = PackedLoader(make_dataset(docs, None), budget, chunk_len, shuffle=False)
    ids, n_batches = [], loader.batches_in_epoch(0)
    for _ in range(n_batches):
        b = next(loader)
        cu = b["cu_seqlens"].tolist()
        lengths = [e - s for s, e in zip(cu, cu[1:])]
        assert min(lengths) >= 1 and max(lengths) <= chunk_len and b["max_seqlen"] == max(lengths)
        x, y, p = b["input_ids"].tolist(), b["labels"].tolist(), b["position_ids"].tolist()
        for s, e in zip(cu, cu[1:]):
            assert p[s:e] == list(range(e - s))
            assert y[s:e - 1] == x[s + 1:e] and y[e - 1] == -100
        ids += x
    assert ids == [t for d in docs for t in d]
    next(loader)
    assert loader.epoch == 1  # the data ran out: the next batch starts epoch 1


def test_long_document_is_split_not_dropped():
    """A 10-token document with budget 4 becomes chunks 4+4+2, all tokens kept."""
    doc = list(range(100, 110))
    loader = PackedLoader(make_dataset([doc], None), 4, shuffle=False)
    batches = [next(loader) for _ in range(loader.batches_in_epoch(0))]
    assert [b["input_ids"].tolist() for b in batches] == [doc[0:4], doc[4:8], doc[8:10]]
    assert [b["labels"].tolist() for b in batches] == [[101, 102, 103, -100], [105, 106, 107, -100],
                                                       [109, -100]]
