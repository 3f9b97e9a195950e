"""permute / unpermute (reference backend) vs a float64 one-hot-matrix formulation.

``x_sorted = P x`` where ``P[i, t] = 1`` iff permuted row ``i`` is a copy of token ``t``, rows
ordered by (expert, token, k); ``out = Σ_k w[t, k] · y[row(t, k)]``. Gradients by autograd of
both. Shapes from hypothesis: empty experts, all tokens on one expert, T = 0.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _refs import rel
from xt.kernels.moe import permute, unpermute


def _one_hot_reference(topk_ids: torch.Tensor, E: int) -> torch.Tensor:
    """``P[R, T]`` with rows ordered by expert, then token, then k (independent of argsort)."""
    T, K = topk_ids.shape
    order = sorted(((int(topk_ids[t, k]), t, k) for t in range(T) for k in range(K)))
    P = torch.zeros(T * K, T, dtype=torch.float64)
    for i, (_, t, _) in enumerate(order):
        P[i, t] = 1.0
    return P, order


@st.composite
def routing(draw):
    E = draw(st.integers(1, 6))
    T = draw(st.integers(0, 9))
    K = draw(st.integers(1, min(3, E)))
    one_expert = draw(st.booleans())
    ids = [[draw(st.integers(0, E - 1)) for _ in range(K)] for _ in range(T)]
    if one_expert:
        ids = [[0] * K for _ in range(T)]
    return E, torch.tensor(ids, dtype=torch.int64).reshape(T, K)


@settings(max_examples=25, deadline=None)
@given(r=routing(), d=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_permute_unpermute_match_one_hot_reference(r, d, seed):
    E, ids = r
    T, K = ids.shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(T, K, generator=g, dtype=torch.float64, requires_grad=True)
    P, order = _one_hot_reference(ids, E)
    xs, info = permute(x, ids, E, backend="reference")
    assert torch.equal(info.tokens_per_expert, torch.bincount(ids.reshape(-1), minlength=E))
    assert rel(xs, P @ x) == 0.0
    y = torch.randn(T * K, d, generator=g, dtype=torch.float64, requires_grad=True)
    out = unpermute(y, info, w, backend="reference")
    ref = torch.zeros(T, d, dtype=torch.float64)
    for i, (_, t, k) in enumerate(order):
        ref = ref + torch.nn.functional.one_hot(torch.tensor(t), T).double()[:, None] * (w[t, k] * y[i])[None, :]
    assert rel(out, ref) <= 1e-12
    if T == 0:
        return
    go = torch.randn(T, d, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((xs * 1.0).sum() + (out * go).sum(), (x, w, y))
    want = torch.autograd.grad((P @ x).sum() + (ref * go).sum(), (x, w, y))
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-12


def test_unpermute_computes_in_float32_and_returns_input_dtype():
    ids = torch.tensor([[0, 1], [1, 0]])
    y = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.bfloat16)
    xs, info = permute(torch.zeros(2, 1, dtype=torch.bfloat16), ids, 2, backend="reference")
    out = unpermute(y, info, torch.tensor([[0.25, 0.75], [0.5, 0.5]]), backend="reference")
    assert out.dtype == torch.bfloat16
    # rows: expert 0 gets slots (t0,k0),(t1,k1); expert 1 gets (t0,k1),(t1,k0)
    assert out.float().flatten().tolist() == [0.25 * 1 + 0.75 * 3, 0.5 * 4 + 0.5 * 2]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="topk_ids"):
        permute(torch.randn(3, 4), torch.zeros(2, 2, dtype=torch.int64), 2)
    xs, info = permute(torch.randn(3, 4), torch.zeros(3, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="topk_weights"):
        unpermute(xs, info, torch.rand(3, 1))


def test_unpermute_accepts_info_without_inverse_index():
    """A PermuteInfo built with the original four fields (no ``row_of_slot``) still unpermutes."""
    from xt.kernels.moe import PermuteInfo
    ids = torch.tensor([[2, 0], [0, 1], [2, 2]])
    x = torch.randn(3, 5, dtype=torch.float64)
    xs, info = permute(x, ids, 3, backend="reference")
    w = torch.rand(3, 2, dtype=torch.float64)
    bare = PermuteInfo(info.sorted_row_ids, info.tokens_per_expert, info.num_tokens, info.top_k)
    assert torch.equal(unpermute(xs, bare, w, backend="reference"), unpermute(xs, info, w, backend="reference"))
    assert rel(unpermute(xs, info, w), (x * w.sum(1, keepdim=True))) <= 1e-12
