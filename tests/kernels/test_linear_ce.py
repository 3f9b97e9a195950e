"""Fused linear cross-entropy (chunked torch backend) vs full float64 logits + F.cross_entropy.

Covers sum and mean (own count and a given ``num_tokens``), ``ignore_index``, z-loss, chunk
sizes that do not divide T, all labels ignored, and the no-grad path.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from _refs import rel
from xt.kernels.loss import default_chunk_size, linear_cross_entropy


def _reference(h, W, labels, reduction, num_tokens, z):
    logits = h @ W.t()
    ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    valid = labels != -100
    zl = z * (torch.logsumexp(logits, -1)[valid] ** 2).sum()
    denom = 1.0 if reduction == "sum" else (num_tokens if num_tokens is not None else max(int(valid.sum()), 1))
    return (ce + zl) / denom, zl / denom


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 23), D=st.integers(1, 9), V=st.integers(2, 31), chunk=st.integers(1, 8),
       reduction=st.sampled_from(["sum", "mean"]), given_count=st.booleans(), z=st.sampled_from([0.0, 1e-2]),
       ignore_frac=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_matches_full_logits_float64(T, D, V, chunk, reduction, given_count, z, ignore_frac, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, D, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (T,), generator=g)
    labels[torch.rand(T, generator=g) < ignore_frac] = -100
    num_tokens = 7 if given_count else None
    loss, zl = linear_cross_entropy(h, W, labels, reduction=reduction, num_tokens=num_tokens, z_loss_coef=z,
                                    chunk_size=chunk, return_z_loss=True, backend="torch")
    ref, rz = _reference(h, W, labels, reduction, num_tokens, z)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    assert abs(zl.item() - rz.item()) <= 1e-6 * max(1.0, abs(rz.item()))
    gh, gW = torch.autograd.grad(loss * 1.5, (h, W))
    rh, rW = torch.autograd.grad(ref * 1.5, (h, W))
    assert rel(gh, rh) <= 1e-10 and rel(gW, rW) <= 1e-10


def test_reference_backend_and_fp32_chunked_agree():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    W = torch.randn(40, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (50,), generator=g)
    labels[::4] = -100
    a = linear_cross_entropy(h, W, labels, reduction="mean", backend="reference")
    b = linear_cross_entropy(h, W, labels, reduction="mean", chunk_size=16, backend="torch")
    ga = torch.autograd.grad(a, (h, W))
    gb = torch.autograd.grad(b, (h, W))
    assert abs(a.item() - b.item()) <= 1e-5 * abs(a.item())
    assert rel(gb[0], ga[0]) <= 1e-5 and rel(gb[1], ga[1]) <= 1e-5


def test_no_grad_and_frozen_weight():
    h = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 4, dtype=torch.float64)
    labels = torch.randint(0, 11, (9,))
    ref, _ = _reference(h, W, labels, "sum", None, 0.0)
    with torch.no_grad():
        assert abs(linear_cross_entropy(h, W, labels, backend="torch").item() - ref.item()) <= 1e-6 * abs(ref.item())
    loss = linear_cross_entropy(h, W, labels, chunk_size=4, backend="torch")
    (gh,) = torch.autograd.grad(loss, (h,))
    (rh,) = torch.autograd.grad(ref, (h,))
    assert rel(gh, rh) <= 1e-10


def test_default_chunk_size_bounds_the_logits_chunk():
    assert default_chunk_size(16384, 151936) * 151936 <= 1 << 28
    assert default_chunk_size(16384, 151936) % 128 == 0
    assert default_chunk_size(5, 100) == 5


def test_bad_inputs_raise():
    h, W = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h, W, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, W, torch.zeros(3, dtype=torch.int64), reduction="avg")
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, torch.randn(5, 3), torch.zeros(3, dtype=torch.int64))


def test_fused_loss_under_autocast_matches_autocast_reference():
    """Under CPU bf16 autocast the fused loss equals an nn.Linear head + F.cross_entropy under the
    same autocast (loss and fp32 gradients), and never builds a dtype-mismatched product."""
    import torch.nn.functional as F
    from xt.kernels.loss import linear_cross_entropy
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(101, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 101, (37,), generator=g)
    labels[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.t()).float(), labels, ignore_index=-100, reduction="sum")
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, labels, reduction="sum", chunk_size=8, backend="torch")
    gh, gw = torch.autograd.grad(got, (h, w))
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert abs(got.item() - ref.item()) / abs(ref.item()) < 1e-2
    assert (gh - gh_ref).norm() / gh_ref.norm() < 2e-2
    assert (gw - gw_ref).norm() / gw_ref.norm() < 2e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_chunk_writes_the_weight_gradient_like_adding_into_zeros(dtype):
    """No zero-fill of the [V, D] accumulator: the first chunk writes it, bit for bit what adding
    into a zeroed buffer gave, for a same-dtype (addmm) and a 16-bit (temporary) product."""
    from xt.kernels.loss._head import backprop_chunk, weight_grad_buffer
    gen = torch.Generator().manual_seed(0)
    T, D, V, C = 40, 12, 33, 16  # three chunks, the last one short
    g = torch.randn(T, V, generator=gen).to(dtype)
    h = torch.randn(T, D, generator=gen).to(dtype)
    w = torch.randn(V, D, generator=gen)
    new = weight_grad_buffer(w, T)
    old = torch.zeros(V, D)
    for s in range(0, T, C):
        backprop_chunk(g[s:s + C], h[s:s + C], w.to(dtype), slice(s, s + C), None, new, first=s == 0)
        backprop_chunk(g[s:s + C], h[s:s + C], w.to(dtype), slice(s, s + C), None, old)
    assert torch.equal(new, old)
    assert torch.equal(weight_grad_buffer(w, 0), torch.zeros(V, D))  # no chunk runs: zeros
