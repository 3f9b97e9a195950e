"""``parallel.moe_token_chunks``: the routed part of every MoE block over recomputed token chunks.

The reference is the same model without chunks in the same process (fp32): equal losses, aux
losses and gradients for every MoE family (DeepSeek-V3 with its MTP depth), alone and inside
activation checkpointing; chunking really drops the routed activations (the bytes autograd keeps
outside the chunks' recompute regions); and the layout errors. Under EP over gloo it is one of
the cases of test_parallel_xt_model.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

from xt.parallel.mesh import LayoutError
from xt.core.distributed import LocalDistContext
from xt.core.engine.step import forward_backward
from xt.models import build_model
from xt.models.common.moe import MoEBlock
from xt.parallel import ParallelConfig
from single_process_cases import saved_bytes
from xt.parallel.single import describe_single, parallelize_single

torch.set_num_threads(1)
VOCAB = 61


def _cfg(arch: str) -> dict:
    import transformers as tf

    if arch == "qwen3_moe":
        c = tf.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                              num_experts_per_tok=2, moe_intermediate_size=16, router_aux_loss_coef=0.01)
    elif arch == "gpt_oss":
        c = tf.GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
                            num_experts_per_tok=2, sliding_window=4, router_aux_loss_coef=0.01)
    else:
        c = tf.DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                n_shared_experts=1, n_routed_experts=8, kv_lora_rank=16, q_lora_rank=24,
                                qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=8, n_group=4, topk_group=2,
                                num_experts_per_tok=3, first_k_dense_replace=1)
        from xt.models.deepseek_v3.config import DeepseekV3Config

        return DeepseekV3Config.from_hf(c.to_dict(), mtp_layers=1, seq_aux_loss_coef=0.01)
    return c.to_dict()


def _batches(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ([11, 6, 2], [3, 14]):
        ids = [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]
        labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in ids])
        cu = torch.zeros(len(ids) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        out.append({"input_ids": torch.cat(ids), "labels": labels, "cu_seqlens": cu,
                    "position_ids": torch.cat([torch.arange(n) for n in lengths])})
    return out


def _step(model) -> tuple:
    stats = forward_backward(model, _batches(), LocalDistContext(), torch.device("cpu"))
    return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b) -> float:
    return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
@pytest.mark.parametrize("ac", [0.0, 1.0])
def test_chunked_routed_part_equals_unchunked(arch, ac):
    torch.manual_seed(0)
    plain = build_model(_cfg(arch)).train()
    chunked = copy.deepcopy(plain)
    chunked, _ = parallelize_single(chunked, ParallelConfig(moe_token_chunks=3, activation_checkpointing=ac),
                                    device_type="cpu")
    blocks = [m for m in chunked.modules() if isinstance(m, MoEBlock)]
    assert blocks and all(b.routed_token_chunks == 3 for b in blocks)
    if arch == "deepseek_v3":
        assert any(n.startswith("mtp.") for n, m in chunked.named_modules() if isinstance(m, MoEBlock))
    ref, ref_g = _step(plain)
    new, new_g = _step(chunked)
    assert float(new.loss) == pytest.approx(float(ref.loss), rel=1e-6)
    assert float(new.aux_loss) == pytest.approx(float(ref.aux_loss), rel=1e-6)
    assert set(new_g) == set(ref_g)
    for n, g in ref_g.items():
        assert _rel(new_g[n], g) <= 1e-6, n


def test_more_chunks_than_tokens_gives_the_same_result():
    torch.manual_seed(1)
    block = MoEBlock.swiglu_topk(16, 8, 4, 2, True)
    x = torch.randn(2, 16, requires_grad=True)
    y_ref, _ = block(x)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    block.routed_token_chunks = 5  # three of the chunks are empty
    y, _ = block(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-6)
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-6)


def _saved_bytes(block: MoEBlock, x: torch.Tensor) -> int:
    return saved_bytes(lambda: block(x)[0].sum())[0]


def test_chunks_drop_the_routed_activations():
    """What autograd keeps for backward outside the chunks' recompute regions: the routed part's
    ``[R, D]`` / ``[R, 2F]`` activations are gone with chunks (only router and chunk inputs stay)."""
    torch.manual_seed(2)
    block = MoEBlock.swiglu_topk(64, 128, 8, 4, True)
    x = torch.randn(512, 64, requires_grad=True)
    whole = _saved_bytes(block, x)
    block.routed_token_chunks = 4
    chunked = _saved_bytes(block, x)
    assert chunked < 0.25 * whole, (chunked, whole)


def test_layout_errors_name_the_key():
    torch.manual_seed(0)
    dense = build_model({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
                         "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 4, "num_key_value_heads": 2})
    with pytest.raises(LayoutError, match="moe_token_chunks = 2 is set but the model has no MoE block"):
        parallelize_single(dense, ParallelConfig(moe_token_chunks=2), device_type="cpu")
    with pytest.raises(ValueError, match="moe_token_chunks"):
        ParallelConfig(moe_token_chunks=0)
    assert "4 recomputed token chunks" in describe_single(ParallelConfig(moe_token_chunks=4), 2)
