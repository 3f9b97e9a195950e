"""CUDA paths (run on the GPU machine): flash varlen / flex attention against SDPA, bf16 model."""
from __future__ import annotations

import pytest
import torch

from qwen3_helpers import pack, rel_err
from xt.models import build_model
from xt.models.common import CoreAttention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LENGTHS = [37, 1, 200, 64, 5]


def _qkv(hq=8, hkv=2, hd=64, dtype=torch.bfloat16, lengths=LENGTHS):
    g = torch.Generator(device="cuda").manual_seed(0)
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    mk = lambda h: torch.randn(T, h, hd, generator=g, device="cuda", dtype=dtype).requires_grad_(True)
    return mk(hq), mk(hkv), mk(hkv), cu


@pytest.mark.parametrize("lengths", [LENGTHS, [300]], ids=["docs", "one_doc"])
@pytest.mark.parametrize("backend", ["varlen", "flex", "cudnn", "auto"])
def test_cuda_backend_matches_sdpa_forward_backward(backend, lengths, monkeypatch):
    """Each backend against SDPA (bf16 tolerance); "cudnn" runs cuDNN on the one-document micro-batch
    and flash varlen on the packed one; "auto" with its cuDNN threshold lowered takes cuDNN there too."""
    import xt.models.common.core_attention as ca
    monkeypatch.setattr(ca, "_CUDNN_MIN_TOKENS", 64)
    calls = []
    real = ca._cudnn
    monkeypatch.setattr(ca, "_cudnn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v, cu = _qkv(lengths=lengths)
    w = torch.randn(q.shape, device="cuda", dtype=q.dtype)
    outs, grads = [], []
    for b in (backend, "sdpa"):
        out = CoreAttention(b)(q, k, v, cu, max(lengths))
        (out.float() * w.float()).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    errs = [rel_err(outs[0], outs[1])] + [rel_err(a, b) for a, b in zip(*grads)]
    print(f"{backend} vs sdpa bf16 rel err: out {errs[0]:.2e}, dq/dk/dv {errs[1]:.2e} {errs[2]:.2e} {errs[3]:.2e}")
    assert max(errs) <= 1e-2
    assert bool(calls) == (backend in ("cudnn", "auto") and len(lengths) == 1)


def test_auto_picks_flash_varlen_for_bf16():
    q, *_ = _qkv()
    expected = "varlen" if torch.backends.cuda.is_flash_attention_available() else "sdpa"
    assert CoreAttention("auto").resolve_backend(q) in (expected, "flash_attn")
    assert CoreAttention("auto").resolve_backend(q.float()) == "sdpa"


def test_bf16_model_on_cuda_matches_fp32_cpu():
    torch.manual_seed(0)
    cfg = dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=256, hidden_size=128, intermediate_size=256,
               num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_experts=8,
               num_experts_per_tok=2, moe_intermediate_size=64, initializer_range=0.05)
    cpu = build_model(cfg).eval()
    gpu = build_model(cfg, dtype=torch.bfloat16, device="cuda").eval()
    gpu.load_state_dict({k: v.to(torch.bfloat16) for k, v in cpu.state_dict().items()})
    docs = [torch.randint(0, 256, (n,)) for n in LENGTHS]
    batch = pack(docs)
    with torch.no_grad():
        ref = cpu(**batch, return_logits=True)
        out = gpu(**{k: v.cuda() for k, v in batch.items()}, return_logits=True)
    assert gpu.model.layers[0].self_attn.core_attention.resolve_backend(
        torch.zeros(1, 8, 64, device="cuda", dtype=torch.bfloat16)) in ("varlen", "flash_attn", "sdpa")
    assert rel_err(out.logits.float().cpu(), ref.logits) <= 3e-2
    assert rel_err(out.loss_sum.cpu(), ref.loss_sum) <= 1e-2
    out = gpu(**{k: v.cuda() for k, v in batch.items()})  # fused CE path
    assert out.logits is None and rel_err(out.loss_sum.cpu(), ref.loss_sum) <= 1e-2
    (out.loss_sum + out.aux_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
