"""Per-token LM-head outputs on CUDA in bf16: the Triton and torch chunked backends against float64
full logits (values and gradients for random upstream gradients, temperature, entropy, ignored
tokens, vocabularies spanning several Triton blocks), ``reduction="none"``, and the peak memory
staying far below one ``[T, V]`` logits tensor."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _refs import check_log_probs_f64, rel
from xt.kernels.loss import linear_cross_entropy, linear_log_probs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
# bf16 logits and logits gradients vs float64 of the same bf16 inputs. The torch step on the CPU in
# bf16 at these shapes measured 2e-4..4e-4 (log-probs), 4e-5..2e-3 (entropy) and 2e-3..1e-2
# (gradients; the largest at temperature 0.7 with the entropy, whose gradient p·(log p + H) scales
# the logits' rounding error).
TOL = 2e-2


def _inputs(T, D, V, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, D, generator=g, dtype=torch.float64)
    W = torch.randn(V, D, generator=g, dtype=torch.float64) * (2.0 / D ** 0.5)  # logits ~ N(0, 4)
    labels = torch.randint(0, V, (T,), generator=g)
    labels[torch.rand(T, generator=g) < 0.2] = -100
    return (h.to("cuda", dtype).requires_grad_(), W.to("cuda", dtype).requires_grad_(), labels.cuda())


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("temperature,entropy", [(1.0, False), (0.7, True), (1.5, True)])
def test_log_probs_bf16_match_float64(backend, temperature, entropy):
    if backend == "triton":
        pytest.importorskip("triton")
    h, W, labels = _inputs(T=1000, D=256, V=20000, seed=int(temperature * 10))
    r = linear_log_probs(h, W, labels, temperature=temperature, return_entropy=entropy, chunk_size=256,
                         backend=backend)
    check_log_probs_f64(h, W, labels, temperature, r, tol=TOL, seed=1)


def test_triton_matches_torch_backend_bf16():
    pytest.importorskip("triton")
    h, W, labels = _inputs(T=777, D=128, V=9000, seed=3)
    out = {}
    for b in ("triton", "torch"):
        r = linear_log_probs(h, W, labels, temperature=0.8, return_entropy=True, chunk_size=200, backend=b)
        up = torch.randn(777, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        out[b] = (*r, *torch.autograd.grad(((r.log_probs - 0.1 * r.entropy) * up).sum(), (h, W)))
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) < 1e-2


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_reduction_none_bf16_matches_float64(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    h, W, labels = _inputs(T=900, D=256, V=15000, seed=4)
    loss = linear_cross_entropy(h, W, labels, reduction="none", z_loss_coef=1e-4, chunk_size=300, backend=backend)
    hr, Wr = h.detach().cpu().double().requires_grad_(), W.detach().cpu().double().requires_grad_()
    logits = hr @ Wr.t()
    lab = labels.cpu()
    ref = F.cross_entropy(logits, lab, ignore_index=-100, reduction="none") \
        + 1e-4 * torch.logsumexp(logits, -1) ** 2 * (lab != -100)
    assert loss.dtype == torch.float32 and rel(loss.cpu(), ref) < TOL
    up = torch.randn(900, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad((loss * up.cuda()).sum(), (h, W))
    want = torch.autograd.grad((ref * up.double()).sum(), (hr, Wr))
    assert rel(got[0].cpu(), want[0]) < TOL and rel(got[1].cpu(), want[1]) < TOL


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_peak_memory_far_below_full_logits(backend):
    """T=16384, V=32768: one fp32 [T, V] logits tensor is 2 GiB; forward+backward with 512-row
    chunks must stay under a quarter of that above the inputs (a bf16 block is 32 MiB; the torch
    steps add at most two fp32 blocks, 128 MiB)."""
    if backend == "triton":
        pytest.importorskip("triton")
    T, D, V = 16384, 256, 32768
    h = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    W = (torch.randn(V, D, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_()
    labels = torch.randint(0, V, (T,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r = linear_log_probs(h, W, labels, temperature=0.9, return_entropy=True, chunk_size=512, backend=backend)
    ((r.log_probs + r.entropy) * torch.randn(T, device="cuda")).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < T * V * 4 // 4
    assert torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
