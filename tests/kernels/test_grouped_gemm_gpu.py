"""The Triton grouped GEMM on CUDA in both tuning buckets (xt.kernels.moe.tuning): a SMALL call
(fixed config, never tuned) and a LARGE one (autotuned) compute the float64 product, forward and
both gradients, with empty experts getting exactly zero weight gradient."""
from __future__ import annotations

import pytest
import torch

from _refs import grouped_gemm_f64, rel
from xt.kernels.moe import grouped_gemm
from xt.kernels.moe.tuning import LARGE, SMALL, SMALL_ROWS_PER_EXPERT, rows_bucket

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("per_expert,bucket", [(3, SMALL), (SMALL_ROWS_PER_EXPERT * 4, LARGE)])
@pytest.mark.parametrize("trans_b", [True, False])
def test_triton_grouped_gemm_in_both_buckets(per_expert, bucket, trans_b):
    pytest.importorskip("triton")
    E, k, n = 16, 256, 128
    g = torch.Generator().manual_seed(per_expert)
    counts = torch.randint(0, 2 * per_expert + 1, (E,), generator=g)
    counts[3] = 0  # an expert with no rows
    R = int(counts.sum())
    assert rows_bucket(R, E) == bucket
    x64 = torch.randn(R, k, generator=g, dtype=torch.float64)
    w64 = torch.randn(E, n, k, generator=g, dtype=torch.float64) if trans_b else torch.randn(E, k, n, generator=g,
                                                                                          dtype=torch.float64)
    dy = torch.randn(R, n, generator=g, dtype=torch.float64)
    x = x64.to("cuda", torch.bfloat16).requires_grad_()
    w = w64.to("cuda", torch.bfloat16).requires_grad_()
    y = grouped_gemm(x, w, counts.cuda(), trans_b=trans_b, backend="triton")
    (y.float() * dy.cuda().float()).sum().backward()
    x_r = x64.requires_grad_()
    w_r = w64.requires_grad_()
    y_r = grouped_gemm_f64(x_r, w_r, counts, trans_b)
    (y_r * dy).sum().backward()
    assert rel(y.double().cpu(), y_r) < 1e-2
    assert rel(x.grad.double().cpu(), x_r.grad) < 1e-2 and rel(w.grad.double().cpu(), w_r.grad) < 1e-2
    assert torch.count_nonzero(w.grad[3]) == 0
