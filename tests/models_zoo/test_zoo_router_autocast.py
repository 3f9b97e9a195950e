"""Whole models under bf16 autocast (``train.dtype = "bf16"``): every MoE router routes the hidden
states it receives exactly as a float32 computation outside autocast would, and the model's aux loss
equals the float32 aux loss of those routes (Qwen3-MoE, DeepSeek-V3, GPT-OSS; CPU and CUDA)."""
from __future__ import annotations

import pytest
import torch

from xt.models import build_model
from xt.models.common.router import load_balancing_loss, router_stats, z_loss
from xt.models.deepseek_v3.sigmoid_router import sequence_balance_loss
from xt.models.common.sinks_attention import packed_doc_positions
from xt.models.deepseek_v3.config import DeepseekV3Config
from zoo_helpers import VOCAB, hf_config, pack, random_docs

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]
LENGTHS = [30, 1, 33]  # 64 tokens in three documents


def _model(arch: str, device: str):
    """A tiny float32 model of ``arch`` with its aux losses switched on."""
    if arch == "qwen3_moe":
        import transformers as tf

        cfg = tf.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                                num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                                router_aux_loss_coef=0.01).to_dict()
        cfg["router_z_loss_coef"] = 0.001
    elif arch == "deepseek_v3":
        cfg = DeepseekV3Config.from_hf(hf_config(arch).to_dict(), seq_aux_loss_coef=0.01)
    else:
        cfg = hf_config(arch).to_dict()
        cfg["router_aux_loss_coef"] = 0.01
    torch.manual_seed(0)
    model = build_model(cfg, device=device).eval()
    if arch == "deepseek_v3":
        g = torch.Generator().manual_seed(1)
        for r in model.routers():
            r.e_score_correction_bias.copy_(0.05 * torch.randn(r.num_experts, generator=g))
    return model


def _expected_aux(arch: str, model, routes, cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """The model's aux loss recomputed (autocast off) from the float32 reference routes."""
    c = model.config
    if arch == "deepseek_v3":
        doc_ids = packed_doc_positions(cu_seqlens, T)[0]
        seq = [sequence_balance_loss(r.probs, r.topk_ids, doc_ids, cu_seqlens.numel() - 1) for r in routes]
        return torch.stack([c.seq_aux_loss_coef * torch.stack(seq).sum()]).sum()
    num_experts = routes[0].logits.shape[1]
    stats = [router_stats(r, num_experts) for r in routes]
    aux = c.router_aux_loss_coef * load_balancing_loss(stats)
    if getattr(c, "router_z_loss_coef", 0.0):
        aux = aux + c.router_z_loss_coef * z_loss(stats)
    return aux


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_model_routes_under_bf16_autocast_like_fp32(arch, device):
    model = _model(arch, device)
    batch = {k: v.to(device) for k, v in pack(random_docs(LENGTHS)).items()}
    gates = [m.mlp.gate for m in model.modules() if hasattr(m, "mlp") and hasattr(m.mlp, "gate")]
    assert gates, arch
    seen = []
    hooks = [g.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].detach(), out)))
             for g in gates]
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # CUDA index_add: no float atomics
    try:
        with torch.no_grad():
            with torch.autocast(device, dtype=torch.bfloat16):
                out = model(**batch)
            for h in hooks:
                h.remove()
            refs = [mod(x) for mod, x, _ in seen]  # the same router inputs, autocast off
            expected_aux = _expected_aux(arch, model, refs, batch["cu_seqlens"], batch["input_ids"].numel())
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)
    assert len(seen) == len(gates)
    for i, ((_, x, got), want) in enumerate(zip(seen, refs)):
        for name in ("logits", "probs", "topk_weights"):
            assert getattr(got, name).dtype == torch.float32, (arch, i, name)
            assert torch.equal(getattr(got, name), getattr(want, name)), f"{arch} layer {i}: {name}"
        assert torch.equal(got.topk_ids, want.topk_ids), f"{arch} layer {i}: topk_ids"
    assert out.aux_loss is not None and out.aux_loss.dtype == torch.float32
    assert torch.equal(out.aux_loss, expected_aux), (arch, out.aux_loss.item(), expected_aux.item())
