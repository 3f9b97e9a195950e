"""Weight gradients of bf16 compute copies added into their fp32 masters by the GEMM itself.

`xt.kernels.linear` (dense layers) and the fused linear cross-entropy (LM head): over two
micro-batches the master's fp32 ``.grad`` must equal the float64 sum of ``dyᵀ x`` over the exact
bf16 operands (within fp32 accumulation error), the input gradient must be bit-equal to
``F.linear``'s, and the copy must receive no gradient of its own (no double add by its hook).
On CUDA this runs cuBLAS's fp32-output GEMM with beta = 1; on CPU the fp32 fallback.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xt.core.engine.compute_weights import ComputeWeights
from xt.kernels.linear import linear
from xt.kernels.loss.linear_ce import linear_cross_entropy_backend

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


class _Dense(torch.nn.Module):
    def __init__(self, n: int, k: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, k) * 0.1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_dense_wgrad_goes_into_master(device):
    torch.manual_seed(0)
    N, K, T = 48, 32, 40
    mod = _Dense(N, K).to(device)
    weights = ComputeWeights(mod, torch.bfloat16)
    xs = [torch.randn(2, T // 2, K, device=device).to(torch.bfloat16).requires_grad_() for _ in range(2)]
    dys = [torch.randn(2, T // 2, N, device=device).to(torch.bfloat16) for _ in range(2)]
    with weights.swapped():
        copy = mod.weight
        for x, dy in zip(xs, dys):
            y = linear(x, copy)
            assert y.dtype == torch.bfloat16 and y.shape == (2, T // 2, N)
            assert torch.equal(y, F.linear(x, copy))
            y.backward(dy)
        assert copy.grad is None
    master = mod.weight
    want = sum(dy.reshape(-1, N).double().t() @ x.reshape(-1, K).double() for x, dy in zip(xs, dys))
    assert master.grad.dtype == torch.float32
    assert _rel(master.grad, want) <= 1e-6
    # the input gradient is F.linear's own
    x_ref = xs[1].detach().clone().requires_grad_()
    F.linear(x_ref, weights._pairs[0][1].detach()).backward(dys[1])
    assert torch.equal(xs[1].grad, x_ref.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_falls_back_for_plain_weights(device):
    """An fp32 weight (no copy) and a bias take F.linear: autograd's gradients, bit for bit."""
    torch.manual_seed(1)
    w = torch.randn(8, 4, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    x = torch.randn(5, 4, device=device)
    linear(x, w, b).sum().backward()
    gw, gb = w.grad.clone(), b.grad.clone()
    w.grad = b.grad = None
    F.linear(x, w, b).sum().backward()
    assert torch.equal(gw, w.grad) and torch.equal(gb, b.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_ce_wgrad_goes_into_master(device):
    """The fused loss adds its fp32 dW (scaled by the upstream gradient) into the master: equal to
    the same loss through a plain bf16 leaf (whose dW is that fp32 sum rounded to bf16) within one
    bf16 rounding, and the second micro-batch adds to the first exactly."""
    torch.manual_seed(2)
    V, D, T = 64, 16, 24
    head = _Dense(V, D).to(device)
    weights = ComputeWeights(head, torch.bfloat16)
    hs = [torch.randn(T, D, device=device).to(torch.bfloat16) for _ in range(2)]
    labels = [torch.randint(0, V, (T,), device=device) for _ in range(2)]
    backend = "triton" if device == "cuda" else "torch"
    singles = []
    for h, lab in zip(hs, labels):  # each micro-batch alone, through a plain bf16 leaf
        leaf = weights._pairs[0][1].detach().clone().requires_grad_()
        (linear_cross_entropy_backend(h, leaf, lab, num_tokens=T, backend=backend, chunk_size=8) * 0.3).backward()
        singles.append(leaf.grad.float())
    with weights.swapped():
        for i, (h, lab) in enumerate(zip(hs, labels)):
            (linear_cross_entropy_backend(h, head.weight, lab, num_tokens=T, backend=backend, chunk_size=8) * 0.3).backward()
            if i == 0:  # unrounded fp32 (the hook path would leave bf16-representable values here)
                first = weights._pairs[0][0].grad.clone()
                assert not torch.equal(first.to(torch.bfloat16).float(), first)
                assert _rel(first, singles[0]) <= 2.0 ** -8
        assert head.weight.grad is None
    got = head.weight.grad
    assert torch.isfinite(got).all()
    assert _rel(got - first, singles[1]) <= 2.0 ** -8
    assert got.dtype == torch.float32
    assert _rel(got, singles[0] + singles[1]) <= 2.0 ** -8
