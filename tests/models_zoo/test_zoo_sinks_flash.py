"""Sinks attention through a log-sum-exp kernel (`xt.models.common.sinks_flash`) against the masked
softmax-with-sink reference (`xt.models.common.sinks_attention.SinksCoreAttention`): values and the
gradients of q, k, v and the sinks, packed documents, GQA, sliding window; float64 on CPU (the
backward identity is exact), bf16 flash on CUDA."""
from __future__ import annotations

import pytest
import torch

from xt.models.common.sinks_attention import SinksCoreAttention
from xt.models.common.sinks_flash import sinks_attention_lse


def _inputs(dtype, device, lengths=(7, 1, 12, 5), H=4, G=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    q, k, v = mk(T, H, D), mk(T, G, D), mk(T, G, D)
    sinks = (torch.randn(H, generator=g, dtype=torch.float64) * 2).to(device=device, dtype=torch.float32).requires_grad_()
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return q, k, v, sinks, cu.to(device), max(lengths)


def _grads(fn, q, k, v, sinks, dout):
    for t in (q, k, v, sinks):
        t.grad = None
    out = fn()
    out.backward(dout)
    return out.detach(), [t.grad.detach().clone() for t in (q, k, v, sinks)]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("window", [None, 4])
def test_lse_kernel_with_sinks_equals_masked_reference_float64(window):
    q, k, v, sinks, cu, L = _inputs(torch.float64, "cpu")
    ref_mod = SinksCoreAttention()
    dout = torch.randn(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref, ref_g = _grads(lambda: ref_mod(q, k, v, cu, L, sliding_window=window, sinks=sinks.double()), q, k, v, sinks, dout)
    got, got_g = _grads(lambda: sinks_attention_lse(q, k, v, sinks, cu, L, q.shape[-1] ** -0.5, window), q, k, v, sinks, dout)
    assert _rel(got, ref) <= 1e-12
    for name, a, b in zip("qkv", got_g[:3], ref_g[:3]):
        assert _rel(a, b) <= 1e-12, name
    assert _rel(got_g[3], ref_g[3]) <= 1e-6  # the sinks are float32 parameters


def test_rejects_unknown_kernel_and_bad_shapes():
    q, k, v, sinks, cu, L = _inputs(torch.float32, "cpu")
    with pytest.raises(ValueError, match="unknown kernel"):
        sinks_attention_lse(q, k, v, sinks, cu, L, 0.3, kernel="math")
    with pytest.raises(ValueError, match="sinks"):
        sinks_attention_lse(q, k, v, sinks[:2], cu, L, 0.3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("window", [None, 4])
def test_flash_varlen_with_sinks_matches_reference_bf16(window):
    q, k, v, sinks, cu, L = _inputs(torch.bfloat16, "cuda", lengths=(70, 3, 129, 40), H=8, G=2, D=64)
    dout = torch.randn(q.shape[0], q.shape[1], v.shape[-1], device="cuda", dtype=torch.bfloat16)
    scale = q.shape[-1] ** -0.5
    ref, ref_g = _grads(lambda: sinks_attention_lse(q, k, v, sinks, cu, L, scale, window, kernel="reference"),
                        q, k, v, sinks, dout)
    got, got_g = _grads(lambda: sinks_attention_lse(q, k, v, sinks, cu, L, scale, window, kernel="varlen"),
                        q, k, v, sinks, dout)
    assert _rel(got, ref) <= 2e-2
    for name, a, b in zip(("q", "k", "v", "sinks"), got_g, ref_g):
        assert _rel(a, b) <= 3e-2, name


def test_gpt_oss_attn_backend_reaches_every_sinks_attention_and_bad_names_are_refused():
    from xt.models import build_model
    from zoo_helpers import hf_config

    cfg = hf_config("gpt_oss").to_dict()
    model = build_model(cfg, attn_backend="varlen")
    cores = [m for m in model.modules() if isinstance(m, SinksCoreAttention)]
    assert cores and all(m.backend == "varlen" for m in cores)
    with pytest.raises(ValueError, match="attn_backend 'flex' is not available for sinks attention"):
        build_model(cfg, attn_backend="flex")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpt_oss_auto_runs_flash_under_autocast_and_matches_the_masked_path(monkeypatch):
    """GPT-OSS under bf16 autocast with the default backend goes through the flash kernel (never the
    [T, T] path) and gives the masked reference's loss and gradients within bf16 tolerance."""
    import xt.models.common.sinks_flash as sf
    from xt.models import build_model
    from zoo_helpers import hf_config, pack, random_docs

    cfg = hf_config("gpt_oss").to_dict()
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    docs = random_docs([40, 17, 70], seed=3)
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in pack(docs).items()}
    kernels = []
    orig = sf.sinks_attention_lse
    monkeypatch.setattr(sf, "sinks_attention_lse", lambda *a, **k: kernels.append(a[-1]) or orig(*a, **k))

    def run(backend):
        for m in model.modules():
            if isinstance(m, SinksCoreAttention):
                m.backend = backend
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch)
        out.loss_sum.backward()
        return out.loss_sum.detach().float(), torch.cat([p.grad.flatten().float() for p in model.parameters()
                                                          if p.grad is not None])

    ref_loss, ref_g = run("sdpa")
    assert kernels == []
    loss, g = run("auto")
    assert kernels and set(kernels) == {"varlen"}
    assert abs(float(loss - ref_loss)) <= 2e-2 * abs(float(ref_loss))
    assert _rel(g, ref_g) <= 5e-2
