"""The masked core attention with sinks and sliding windows against a direct float64 reference."""
from __future__ import annotations

import pytest
import torch

from xt.models.common.sinks_attention import SinksCoreAttention
from zoo_helpers import rel_err


def _reference(q, k, v, cu, scale, window, sinks):
    """Token by token: softmax over [allowed scores, sink] of the query's own document (float64)."""
    q, k, v = q.double(), k.double(), v.double()
    H, G = q.shape[1], k.shape[1]
    out = torch.zeros(q.shape[0], H, v.shape[-1], dtype=torch.float64)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        for t in range(s, e):
            lo = s if window is None else max(s, t - window + 1)
            for h in range(H):
                kv = h // (H // G)
                sc = (k[lo:t + 1, kv] @ q[t, h]) * scale
                if sinks is not None:
                    sc = torch.cat([sc, sinks[h].double().view(1)])
                p = torch.softmax(sc, 0)[: t + 1 - lo]
                out[t, h] = p @ v[lo:t + 1, kv]
    return out


@pytest.mark.parametrize("lengths", [[5, 9, 1, 6], [2] * 10])  # per-document loop and one [T, T] mask
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_sinks_attention_matches_reference(lengths, window, with_sinks):
    T = sum(lengths)
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    q, k, v = torch.randn(T, 4, 8), torch.randn(T, 2, 8), torch.randn(T, 2, 6)
    sinks = torch.randn(4) if with_sinks else None
    got = SinksCoreAttention(0.4)(q, k, v, cu, max(lengths), sliding_window=window, sinks=sinks)
    assert rel_err(got, _reference(q, k, v, cu, 0.4, window, sinks)) <= 1e-6
