"""Grouped GEMM backends (reference, torch._grouped_mm, custom-op loop, auto) vs a float64 formula.

Shapes from hypothesis: counts with zeros, one expert taking all rows, odd sizes, R = 0; both
weight layouts; forward and both gradients. Tolerances (docs/architecture.md, Numerics): float64 1e-12,
float32 1e-5. Experts with no rows must get exactly zero weight gradient.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _refs import counts_strategy, grouped_gemm_f64, rel
from xt.kernels.moe import gg_op, grouped_gemm

# (backend, dtype, tolerance); "loop" goes through the custom op (autograd of the op itself).
CASES = [("reference", torch.float64, 1e-12), ("loop", torch.float64, 1e-12), ("torch", torch.float32, 1e-5),
         ("auto", torch.float32, 1e-5), ("torch", torch.bfloat16, 1e-2)]


def _run(backend, x, w, counts, trans_b):
    if backend == "loop":
        return gg_op.grouped_mm(x, w, counts, trans_b, "loop")
    return grouped_gemm(x, w, counts, trans_b=trans_b, backend=backend)


@pytest.mark.parametrize("backend,dtype,tol", CASES)
@settings(max_examples=12, deadline=None)
@given(counts=counts_strategy(st), k=st.sampled_from([8, 16, 24]), n=st.sampled_from([8, 16, 40]),
       trans_b=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_and_grads_match_float64(backend, dtype, tol, counts, k, n, trans_b, seed):
    g = torch.Generator().manual_seed(seed)
    E, R = len(counts), sum(counts)
    c = torch.tensor(counts, dtype=torch.int64)
    x64 = torch.randn(R, k, generator=g, dtype=torch.float64)
    w64 = torch.randn(E, n, k, generator=g, dtype=torch.float64) if trans_b else \
        torch.randn(E, k, n, generator=g, dtype=torch.float64)
    dy = torch.randn(R, n, generator=g, dtype=torch.float64)
    x = x64.to(dtype).requires_grad_()
    w = w64.to(dtype).requires_grad_()
    y = _run(backend, x, w, c, trans_b)
    assert y.shape == (R, n) and y.dtype == dtype
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yr = grouped_gemm_f64(xr, wr, c, trans_b)
    assert rel(y, yr) <= tol
    if R == 0:
        return
    dx, dw = torch.autograd.grad(y, (x, w), dy.to(dtype))
    rdx, rdw = torch.autograd.grad(yr, (xr, wr), dy)
    assert rel(dx, rdx) <= tol
    assert rel(dw, rdw) <= tol
    empty = [e for e, cnt in enumerate(counts) if cnt == 0]
    assert bool((dw[empty] == 0).all())


@pytest.mark.parametrize("backend", ["torch", "loop", "reference"])
def test_zero_rows_gives_zero_weight_grad(backend):
    c = torch.zeros(3, dtype=torch.int64)
    x = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(3, 8, 16, requires_grad=True)
    y = _run(backend, x, w, c, False)
    assert y.shape == (0, 16)
    (y.sum() + 0 * w.sum()).backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_inputs_raise_clear_errors():
    c = torch.tensor([2, 1])
    with pytest.raises(ValueError, match="inner sizes"):
        grouped_gemm(torch.randn(3, 8), torch.randn(2, 9, 4), c, backend="torch")
    with pytest.raises(ValueError, match="tokens_per_expert"):
        grouped_gemm(torch.randn(3, 8), torch.randn(3, 8, 4), c, backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        grouped_gemm(torch.randn(3, 8), torch.randn(2, 8, 4), c, backend="cuda-magic")
    with pytest.raises(ValueError, match="sums to"):
        grouped_gemm(torch.randn(4, 8), torch.randn(2, 8, 4), c, backend="reference")
    with pytest.raises(ValueError, match="does not support"):
        grouped_gemm(torch.randn(3, 8, dtype=torch.float64), torch.randn(2, 8, 4, dtype=torch.float64), c,
                     backend="torch")


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_torch_compile_fullgraph_traces_the_custom_op(backend):
    """Dynamo + AOT autograd trace through ``xt_kernels::grouped_mm`` without graph breaks."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    c = torch.tensor([3, 0, 5])
    x = torch.randn(8, 16, generator=g, requires_grad=True)
    w = torch.randn(3, 24, 16, generator=g, requires_grad=True)

    def f(x, w, c):
        return grouped_gemm(torch.relu(x), w, c, trans_b=True, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, c)
    gx, gw = torch.autograd.grad(out, (x, w))
    ref = f(x, w, c)
    rx, rw = torch.autograd.grad(ref, (x, w))
    assert rel(out, ref) <= 1e-6 and rel(gx, rx) <= 1e-6 and rel(gw, rw) <= 1e-6
