"""Triton kernels on CPU under the Triton interpreter (``TRITON_INTERPRET=1``), small shapes.

The interpreter computes bf16 arithmetic wrongly (docs/architecture.md, Machines), so inputs are float32/float16;
the kernels upcast to float32 for all arithmetic. Triton must be imported with the variable set
(its own library functions are decorated at import), so ``test_triton_interpreter.py`` runs this
file in a fresh subprocess with ``TRITON_INTERPRET=1``; imported any other way it skips itself. Covers the grouped GEMM (pointer and
tensor-descriptor paths, forward, dX, dW), the SwiGLU epilogues, permute/unpermute and the fused
cross-entropy step.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("run by test_triton_interpreter.py in a subprocess with TRITON_INTERPRET=1", allow_module_level=True)
from xt.kernels.moe import gg_triton, permute_triton  # noqa: E402,F401
from xt.kernels.loss import ce_triton  # noqa: E402,F401
from _refs import (check_swiglu_experts_f64, counts_strategy, grouped_gemm_f64, rel,  # noqa: E402
                   swiglu_experts_inputs)
from xt.kernels.loss import linear_cross_entropy  # noqa: E402
from xt.kernels.moe import gg_op, permute, swiglu_experts, unpermute  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("tma", [False, True])
@settings(max_examples=6, deadline=None)
@given(counts=counts_strategy(st, max_experts=4, max_count=21), k=st.sampled_from([8, 24]),
       n=st.sampled_from([8, 40]), trans_b=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16]),
       seed=st.integers(0, 2**16))
def test_grouped_gemm_triton_matches_float64(tma, counts, k, n, trans_b, dtype, seed):
    gg_triton.INTERPRETER_USE_TMA = tma
    try:
        _check_gg(counts, k, n, trans_b, dtype, seed)
    finally:
        gg_triton.INTERPRETER_USE_TMA = False


def _check_gg(counts, k, n, trans_b, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    E, R = len(counts), sum(counts)
    c = torch.tensor(counts)
    x = torch.randn(R, k, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(E, n, k, generator=g) if trans_b else torch.randn(E, k, n, generator=g)).to(dtype)
    w = torch.empty_like(w).copy_(w).requires_grad_()  # fresh storage (descriptor alignment)
    dy = torch.randn(R, n, generator=g).to(dtype)
    y = gg_op.grouped_mm(x, w, c, trans_b, "triton")
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yr = grouped_gemm_f64(xr, wr, c, trans_b)
    assert rel(y, yr) <= TOL[dtype]
    if R == 0:
        return
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    rdx, rdw = torch.autograd.grad(yr, (xr, wr), dy.double())
    assert rel(dx, rdx) <= TOL[dtype] and rel(dw, rdw) <= TOL[dtype]
    empty = [e for e, cnt in enumerate(counts) if cnt == 0]
    assert bool((dw[empty] == 0).all())


@pytest.mark.parametrize("tma", [False, True])
@settings(max_examples=6, deadline=None)
@given(counts=counts_strategy(st, max_experts=4, max_count=21), d=st.sampled_from([8, 24]),
       f=st.sampled_from([8, 40]), dtype=st.sampled_from([torch.float32, torch.float16]),
       seed=st.integers(0, 2**16))
def test_swiglu_experts_fused_epilogues_match_float64(tma, counts, d, f, dtype, seed):
    """The SwiGLU forward (two accumulators) and backward epilogues of the m-grouped kernel, with
    pointer or tensor-descriptor loads and stores."""
    gg_triton.INTERPRETER_USE_TMA = tma
    try:
        params, dy = swiglu_experts_inputs(counts, d, f, dtype, seed)
        params = [torch.empty_like(p).copy_(p).requires_grad_() for p in params]  # fresh aligned storage
        y = swiglu_experts(*params, torch.tensor(counts), backend="triton")
        check_swiglu_experts_f64(y, params, counts, dy, TOL[dtype])
    finally:
        gg_triton.INTERPRETER_USE_TMA = False


def test_kgrouped_writes_every_block_over_dirty_output():
    """Every dW block is written, so NaN left in the output buffer can never survive."""
    c = torch.tensor([0, 19, 0, 3])
    a, b = torch.randn(22, 24), torch.randn(22, 40)
    out = gg_triton.kgrouped(a, b, c)
    assert torch.isfinite(out).all() and bool((out[[0, 2]] == 0).all())
    assert rel(out[1], a[:19].double().t() @ b[:19].double()) <= 1e-5


def test_kgrouped_accumulates_into_a_float32_output():
    """``kgrouped(..., out=acc)`` adds every expert's product into the float32 ``acc`` (empty
    experts unchanged), from fp16 operands."""
    c = torch.tensor([5, 0, 17, 2])
    a, b = torch.randn(24, 24).half(), torch.randn(24, 40).half()
    acc = torch.randn(4, 24, 40)
    before = acc.clone()
    assert gg_triton.kgrouped(a, b, c, out=acc) is acc
    ends = c.cumsum(0).tolist()
    for e, (s, t) in enumerate(zip([0] + ends[:-1], ends)):
        want = before[e].double() + a[s:t].double().t() @ b[s:t].double()
        assert rel(acc[e], want) <= 1e-6
    assert bool((acc[1] == before[1]).all())
    with pytest.raises(ValueError, match="float32"):
        gg_triton.kgrouped(a, b, c, out=acc.half())


def test_expert_weight_gradients_accumulate_into_fp32_masters(monkeypatch):
    """With fp16 compute copies (`ComputeWeights`), the experts' weight gradients of every
    micro-batch after the first are added by the kernel straight into the fp32 masters' .grad:
    the sum over micro-batches equals the float64 one, and the fused path was taken."""
    from xt.core.engine.compute_weights import ComputeWeights

    calls = []
    orig = gg_triton.kgrouped
    monkeypatch.setattr(gg_triton, "kgrouped", lambda *a, **k: calls.append("out" in k) or orig(*a, **k))
    counts = [[6, 0, 9], [3, 8, 1]]
    d, f = 16, 24
    g = torch.Generator().manual_seed(4)
    mod = torch.nn.Module()
    mod.w1 = torch.nn.Parameter(torch.randn(3, 2 * f, d, generator=g) / d ** 0.5)
    mod.w2 = torch.nn.Parameter(torch.randn(3, d, f, generator=g) / f ** 0.5)
    weights = ComputeWeights(mod, torch.float16)
    ref = [torch.zeros(3, 2 * f, d, dtype=torch.float64), torch.zeros(3, d, f, dtype=torch.float64)]
    from _refs import swiglu_experts_f64
    for cnt in counts:
        x = torch.randn(sum(cnt), d, generator=g).half()
        dy = torch.randn(sum(cnt), d, generator=g).half()
        with weights.swapped():
            swiglu_experts(x, mod.w1, mod.w2, torch.tensor(cnt), backend="triton").backward(dy)
        w64 = [mod.w1.detach().half().double().requires_grad_(), mod.w2.detach().half().double().requires_grad_()]
        for r, gr in zip(ref, torch.autograd.grad(swiglu_experts_f64(x.double(), *w64, torch.tensor(cnt)), w64,
                                                  dy.double())):
            r += gr
    assert calls == [False, False, True, True]  # micro-batch 1 through the hook, 2 fused
    assert mod.w1.grad.dtype == torch.float32
    assert rel(mod.w1.grad, ref[0]) <= 2e-3 and rel(mod.w2.grad, ref[1]) <= 2e-3


@settings(max_examples=6, deadline=None)
@given(T=st.integers(0, 9), K=st.integers(1, 3), E=st.integers(1, 5), d=st.sampled_from([1, 20]),
       seed=st.integers(0, 2**16))
def test_permute_triton_matches_reference(T, K, E, d, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, E, (T, K), generator=g)
    outs = {}
    go = torch.randn(T, d, generator=g)
    x0, w0 = torch.randn(T, d, generator=g), torch.rand(T, K, generator=g)
    for b in ("reference", "triton"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        xs, info = permute(x, ids, E, backend=b)
        out = unpermute(xs * 2.0 + 1.0, info, w, backend=b)
        outs[b] = (xs, out, *(torch.autograd.grad((out * go).sum(), (x, w)) if T else ()))
    for a, r in zip(outs["triton"], outs["reference"]):
        assert rel(a, r) <= 1e-6


@pytest.mark.parametrize("reduction,z", [("sum", 0.0), ("mean", 1e-2)])
def test_fused_ce_triton_step_matches_float64(reduction, z):
    g = torch.Generator().manual_seed(3)
    T, D, V = 21, 8, 37
    h = torch.randn(T, D, generator=g, dtype=torch.float64)
    W = torch.randn(V, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (T,), generator=g)
    labels[::3] = -100
    hr, Wr = h.clone().requires_grad_(), W.clone().requires_grad_()
    ref, rz = linear_cross_entropy(hr, Wr, labels, reduction=reduction, z_loss_coef=z, return_z_loss=True,
                                   backend="reference")
    rg = torch.autograd.grad(ref, (hr, Wr))
    hf, Wf = h.float().requires_grad_(), W.float().requires_grad_()
    loss, zl = linear_cross_entropy(hf, Wf, labels, reduction=reduction, z_loss_coef=z, chunk_size=8,
                                    return_z_loss=True, backend="triton")
    gf = torch.autograd.grad(loss, (hf, Wf))
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert abs(zl.item() - rz.item()) <= 1e-5 * max(abs(rz.item()), 1e-6)
    assert rel(gf[0], rg[0]) <= 1e-5 and rel(gf[1], rg[1]) <= 1e-5
