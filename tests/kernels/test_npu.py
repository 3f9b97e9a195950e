"""NPU backend (torch_npu grouped matmul): runs only where torch_npu and an NPU are present."""
from __future__ import annotations

import pytest
import torch

torch_npu = pytest.importorskip("torch_npu")

from _refs import grouped_gemm_f64, rel  # noqa: E402
from xt.kernels.moe import grouped_gemm  # noqa: E402


@pytest.mark.skipif(not (hasattr(torch, "npu") and torch.npu.is_available()), reason="no NPU device")
@pytest.mark.parametrize("trans_b", [False, True])
def test_npu_grouped_gemm_matches_float64(trans_b):
    c = torch.tensor([5, 0, 11])
    x = torch.randn(16, 32, dtype=torch.bfloat16)
    w = torch.randn(3, 48, 32, dtype=torch.bfloat16) if trans_b else torch.randn(3, 32, 48, dtype=torch.bfloat16)
    xn, wn = x.npu().requires_grad_(), w.npu().requires_grad_()
    y = grouped_gemm(xn, wn, c.npu(), trans_b=trans_b, backend="npu")
    assert rel(y.cpu(), grouped_gemm_f64(x, w, c, trans_b)) <= 1e-2
    dx, dw = torch.autograd.grad(y, (xn, wn), torch.ones_like(y))
    assert bool((dw[1] == 0).all())
