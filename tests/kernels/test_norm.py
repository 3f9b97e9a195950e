"""The glue ops of `xt.kernels.norm` (RMSNorm with its residual add, RoPE): the eager backend against
float64 formulas, dispatch rules, and on CUDA the compiled backend against the eager one (values,
gradients, many token counts without falling back)."""
from __future__ import annotations

import pytest
import torch

from xt.kernels import norm
from xt.kernels.config import KernelsConfig


def _f64_norm(s, w, eps):
    s = s.double()
    return w.double() * s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)


def _f64_rope(x, cos, sin):
    x = x.double()
    h = x.shape[-1] // 2
    rot = torch.cat((-x[..., h:], x[..., :h]), -1)
    return x * cos.double()[:, None] + rot * sin.double()[:, None]


def test_eager_rms_norm_and_rope_equal_float64():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(7, 24, generator=g), torch.randn(7, 24, generator=g)
    w = torch.rand(24, generator=g) + 0.5
    y = norm.rms_norm(x, w, 1e-6, backend="torch")
    assert torch.allclose(y.double(), _f64_norm(x, w, 1e-6), rtol=1e-6, atol=1e-6)
    y2, s = norm.rms_norm(x, w, 1e-6, residual=r, backend="auto")  # auto on CPU: the eager ops
    assert torch.equal(s, x + r)
    assert torch.allclose(y2.double(), _f64_norm(x + r, w, 1e-6), rtol=1e-6, atol=1e-6)
    q = torch.randn(7, 3, 8, generator=g)
    ang = torch.randn(7, 4, generator=g)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    assert torch.allclose(norm.rope(q, cos, sin).double(), _f64_rope(q, cos, sin), atol=1e-6)


def test_qk_norm_rope_is_the_composition_and_casts_like_core_attention():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(9, 4, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    wq, wk = torch.rand(8, generator=g) + 0.5, torch.rand(8, generator=g) + 0.5
    ang = torch.randn(9, 4, generator=g)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    want_q = norm.rope(norm.rms_norm(q, wq, 1e-6), cos, sin)
    want_k = norm.rope(norm.rms_norm(k, wk, 1e-5), cos, sin)
    got_q, got_k = norm.qk_norm_rope(q, k, wq, wk, 1e-6, 1e-5, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 results come in the autocast dtype
        aq, ak = norm.qk_norm_rope(q, k, wq, wk, 1e-6, 1e-5, cos, sin)
    assert aq.dtype == ak.dtype == torch.bfloat16
    assert torch.equal(aq, want_q.to(torch.bfloat16)) and torch.equal(ak, want_k.to(torch.bfloat16))


def test_triton_backend_refuses_cpu_tensors_and_config_names_the_field():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="kernels.rms_norm = 'triton' needs CUDA"):
        norm.rms_norm(x, torch.ones(8), 1e-6, backend="triton")
    with pytest.raises(ValueError, match="kernels.rope = 'triton' needs CUDA"):
        norm.rope(x[:, None], x, x, backend="triton")
    with pytest.raises(ValueError, match="kernels.rms_norm"):
        KernelsConfig(rms_norm="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_glue_matches_eager_on_cuda_for_every_length(dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    w = (torch.rand(256, device="cuda", generator=g) + 0.5).requires_grad_()
    for T in (37, 512, 1000, 4096, 5):  # varying token counts: one dynamic graph, no fallback
        x = torch.randn(T, 256, device="cuda", generator=g, dtype=dtype).requires_grad_()
        r = torch.randn(T, 256, device="cuda", generator=g).requires_grad_()  # fp32 residual stream
        dy = torch.randn(T, 256, device="cuda", generator=g)
        outs = {}
        for be in ("torch", "triton"):
            for t in (x, r, w):
                t.grad = None
            y, s = norm.rms_norm(x, w, 1e-6, residual=r, backend=be)
            (y * dy).sum().add((s * dy).sum()).backward()
            outs[be] = [y.detach(), s.detach(), x.grad.clone(), r.grad.clone(), w.grad.clone()]
        # bf16 results may differ by one rounding (the compiled graph rounds once where eager rounds
        # per op); float32 ones by reduction order
        tol = 2.0 ** -7 if dtype == torch.bfloat16 else 1e-5
        for a, b in zip(outs["triton"], outs["torch"]):
            assert a.dtype == b.dtype
            assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * b.float().abs().max().item())
        q = torch.randn(T, 4, 64, device="cuda", generator=g, dtype=dtype).requires_grad_()
        ang = torch.randn(T, 32, device="cuda", generator=g)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        dq = torch.randn(T, 4, 64, device="cuda", generator=g, dtype=dtype)
        res = {}
        for be in ("torch", "triton"):
            q.grad = None
            o = norm.rope(q, cos, sin, backend=be)
            o.backward(dq)
            res[be] = (o.detach(), q.grad.clone())
        assert torch.equal(res["triton"][0], res["torch"][0]) or torch.allclose(
            res["triton"][0].float(), res["torch"][0].float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
        assert torch.allclose(res["triton"][1].float(), res["torch"][1].float(),
                              atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
        wq = torch.rand(64, device="cuda", generator=g).add(0.5).requires_grad_()
        kk = torch.randn(T, 2, 64, device="cuda", generator=g, dtype=dtype).requires_grad_()
        got = {}
        for be in ("torch", "triton"):
            for t in (q, kk, wq):
                t.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                a, b = norm.qk_norm_rope(q, kk, wq, wq, 1e-6, 1e-6, cos, sin, backend=be)
            assert a.dtype == b.dtype == torch.bfloat16
            (a.float().sum() + (b.float() * 2).sum()).backward()
            got[be] = [a.detach(), b.detach(), q.grad.clone(), kk.grad.clone(), wq.grad.clone()]
        for a, b in zip(got["triton"], got["torch"]):
            assert torch.allclose(a.float(), b.float(), rtol=2.0 ** -7, atol=2.0 ** -7 * b.float().abs().max().item())
    assert not norm._compiled_add_norm._broken and not norm._compiled_rope._broken and not norm._compiled_qk._broken
