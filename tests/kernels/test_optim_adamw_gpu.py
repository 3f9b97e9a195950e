"""`xt.kernels.optim.AdamWRefresh`'s Triton kernel on CUDA: the same checks as on the CPU
(``_optim_cases.py``: float64 AdamW, the exact bf16/fp16 cast), and against torch's fused AdamW
with the clip factor as ``grad_scale`` on a few large tensors (weights within 1e-6, copies equal to
the cast). Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from xt.kernels.optim import AdamWRefresh

from _optim_cases import CASE_IDS, CASES
from _refs import rel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("check,dtype", CASES, ids=CASE_IDS)
def test_triton_kernel_on_cuda(check, dtype):
    check("triton", dtype, device="cuda")


def test_triton_kernel_agrees_with_torch_fused_adamw_on_large_tensors():
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2048, 4096), (128, 768, 2048), (151936 // 8, 2048), (2048,), (3,)]
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen) * 0.02) for s in shapes]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    groups = lambda xs: [{"params": xs[:3], "weight_decay": 0.1}, {"params": xs[3:], "weight_decay": 0.0}]  # noqa: E731
    ours = AdamWRefresh(groups(ps), lr=3e-4, betas=(0.9, 0.95), backend="triton")
    copies = [torch.empty_like(p, dtype=torch.bfloat16) for p in ps[:3]]
    ours.attach_compute_copies(list(zip(ps[:3], copies)))
    theirs = torch.optim.AdamW(groups(qs), lr=3e-4, betas=(0.9, 0.95), fused=True)
    for _ in range(3):
        scale = torch.tensor(3.7, device="cuda")
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, device="cuda", generator=gen)
            q.grad = p.grad.clone()
        ours.grad_scale = theirs.grad_scale = scale
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs):
        assert rel(p, q) < 1e-6
    for p, c in zip(ps, copies):
        assert torch.equal(c, p.detach().to(torch.bfloat16))
