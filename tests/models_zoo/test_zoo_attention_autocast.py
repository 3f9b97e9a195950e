"""Under mixed precision (`train.dtype` "bf16" or "auto" on CUDA: fp32 weights + bf16 autocast) the
core attention of every family that uses `CoreAttention` gets bf16 q/k/v, so on CUDA it runs the
flash varlen kernel, never SDPA's fp32 math path with a [H, T, T] score matrix."""
from __future__ import annotations

import pytest
import torch

import xt.models.deepseek_v3  # noqa: F401  (registers the zoo families)
import xt.models.llama  # noqa: F401
from xt.core.engine.precision import resolve_precision
from xt.models import build_model
from xt.models.common import CoreAttention
from zoo_helpers import hf_config, pack, random_docs

QWEN = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, initializer_range=0.05)
FAMILIES = {
    "qwen3": dict(QWEN, architectures=["Qwen3ForCausalLM"]),
    "qwen3_moe": dict(QWEN, architectures=["Qwen3MoeForCausalLM"], num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32),
    "llama": "llama",
    "deepseek_v3": "deepseek_v3",
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _config(name: str) -> dict:
    spec = FAMILIES[name]
    if isinstance(spec, dict):
        return dict(spec)
    d = hf_config(spec).to_dict()
    d["architectures"] = [{"llama": "LlamaForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}[spec]]
    return d


def _record(monkeypatch) -> list[tuple[str, torch.dtype]]:
    seen = []
    orig = CoreAttention.resolve_backend

    def spy(self, q):
        backend = orig(self, q)
        seen.append((backend, q.dtype))
        return backend
    monkeypatch.setattr(CoreAttention, "resolve_backend", spy)
    return seen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", ["bf16", "auto"])
def test_core_attention_gets_the_autocast_dtype(monkeypatch, device, family, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device(device)
    amp = resolve_precision(dtype, dev).autocast_dtype
    if amp is None:
        pytest.skip(f"train.dtype = {dtype!r} is fp32 on this {device}")
    torch.manual_seed(0)
    model = build_model(_config(family), device=dev).float()
    cfg_vocab = model.config.vocab_size
    batch = pack([d % cfg_vocab for d in random_docs([40, 9, 23])])
    batch = {k: v.to(dev) for k, v in batch.items()}
    seen = _record(monkeypatch)
    with torch.autocast(device_type=device, dtype=amp):
        loss = model(**batch).loss_sum
    loss.backward()
    assert seen and all(dt == torch.bfloat16 for _, dt in seen), seen
    want = "varlen" if device == "cuda" else "sdpa"
    if device == "cuda":
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:
            want = "sdpa"
    assert {b for b, _ in seen} <= {want, "flash_attn"}, seen
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad
               and p.grad is not None)
    assert torch.isfinite(loss)


def test_fp32_stays_fp32(monkeypatch):
    """Without autocast nothing is cast: fp32 attention (the reference the parity tests use)."""
    torch.manual_seed(0)
    model = build_model(_config("qwen3_moe")).float()
    seen = _record(monkeypatch)
    model(**pack([d % 512 for d in random_docs([12, 5])]))
    assert seen and all(b == "sdpa" and dt == torch.float32 for b, dt in seen)
