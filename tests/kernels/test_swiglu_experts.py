"""SwiGLU experts (grouped GEMMs with the activation fused in their epilogues) vs a float64 formula.

The reference is independent of the code under test: a per-row gather of the expert weights,
``bmm`` and ``silu`` in float64 (``_refs.swiglu_experts_f64``). Shapes from hypothesis: counts with
zeros, one expert taking all rows, odd sizes, R = 0; forward and the gradients of x and both
weights; experts without rows must get exactly zero weight gradients. The Triton kernels' fused
epilogues are checked under the interpreter in ``triton_interp_cases.py``.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _refs import check_swiglu_experts_f64, counts_strategy, rel, swiglu_experts_inputs
from xt.kernels.moe import swiglu_experts

CASES = [("reference", torch.float64, 1e-12), ("loop", torch.float64, 1e-12), ("torch", torch.float32, 1e-5),
         ("auto", torch.float32, 1e-5), ("torch", torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("backend,dtype,tol", CASES)
@settings(max_examples=10, deadline=None)
@given(counts=counts_strategy(st), d=st.sampled_from([8, 16]), f=st.sampled_from([8, 24]),
       seed=st.integers(0, 2**16))
def test_swiglu_experts_match_float64(backend, dtype, tol, counts, d, f, seed):
    params, dy = swiglu_experts_inputs(counts, d, f, dtype, seed)
    y = swiglu_experts(*params, torch.tensor(counts), backend=backend)
    assert y.dtype == dtype
    check_swiglu_experts_f64(y, params, counts, dy, tol)


def test_bad_inputs_raise_clear_errors():
    c = torch.tensor([2, 1])
    x, w1, w2 = torch.randn(3, 8), torch.randn(2, 16, 8), torch.randn(2, 8, 8)
    with pytest.raises(ValueError, match="w_down"):
        swiglu_experts(x, w1, torch.randn(2, 8, 4), c, backend="torch")
    with pytest.raises(ValueError, match="tokens_per_expert"):
        swiglu_experts(x, w1, w2, torch.tensor([3]), backend="torch")
    with pytest.raises(ValueError, match="dtypes differ"):
        swiglu_experts(x, w1.double(), w2, c, backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        swiglu_experts(x, w1, w2, c, backend="cuda-magic")


def test_torch_compile_fullgraph_traces_the_fused_experts():
    """Dynamo + AOT autograd trace the autograd function and its custom ops without graph breaks."""
    torch._dynamo.reset()
    counts = [3, 0, 5]
    (x, w1, w2), dy = swiglu_experts_inputs(counts, 16, 8, torch.float32, 0)
    c = torch.tensor(counts)

    def f(x, w1, w2, c):
        return swiglu_experts(torch.relu(x), w1, w2, c, backend="torch")

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w1, w2, c)
    grads = torch.autograd.grad(out, (x, w1, w2), dy)
    ref = f(x, w1, w2, c)
    ref_grads = torch.autograd.grad(ref, (x, w1, w2), dy)
    assert rel(out, ref) <= 1e-6 and all(rel(a, b) <= 1e-6 for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("op", ["swiglu_experts", "grouped_gemm"])
def test_autocast_runs_float32_inputs_in_its_dtype_like_linear(op):
    """Under ``torch.autocast`` the custom ops see float32 master weights and activations; they must
    compute in the autocast dtype (as ``nn.Linear`` does) and return float32 weight gradients equal
    to those of the same computation on explicitly cast inputs."""
    from xt.kernels.moe import grouped_gemm
    counts = [3, 0, 5]
    c = torch.tensor(counts)
    params, dy = swiglu_experts_inputs(counts, 16, 8, torch.float32, 1)
    if op == "grouped_gemm":
        params = params[:2]

        def f(x, w):
            return grouped_gemm(x, w, c, trans_b=True, backend="torch")
        dy = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    else:
        def f(x, w1, w2):
            return swiglu_experts(x, w1, w2, c, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f(*params)
    grads = torch.autograd.grad(y, params, dy.bfloat16())
    cast = [p.detach().bfloat16().requires_grad_() for p in params]
    y_ref = f(*cast)
    ref_grads = torch.autograd.grad(y_ref, cast, dy.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32 and torch.equal(g, r.float())
