"""Reuse outside XT: xt.parallel applied to Hugging Face transformers' Qwen3MoeForCausalLM.

The HF model is taken as is; ``adapt_hf_moe_experts`` swaps its per-expert-loop experts for a
grouped-GEMM module over the same parameters and ``enable_varlen_attention`` registers packed
attention with transformers' AttentionInterface; ``parallelize`` then applies EP, Ulysses SP,
activation checkpointing and FSDP2. Loss, every gradient and the parameters after two optimizer
steps must equal the stock single-process HF model (eager attention, documents from position_ids).

The optimizer is SGD with momentum (update linear in the gradient), so the fp32 bound of 1e-5 on
the parameters means the same on every CPU; AdamW would amplify the rounding noise of ~zero
gradients (test_parallel_equivalence's module docstring), and transformers' grouped-mm experts
have no float64 path to avoid it.
"""
from __future__ import annotations

import pytest

from parallel_cases import reference_hf
from parallel_layouts import mismatches

pytest.importorskip("transformers")
pytestmark = pytest.mark.dist

HF_CONFIG = dict(vocab_size=48, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, initializer_range=0.2)


@pytest.mark.parametrize("world,layout", [
    (2, dict(ep_size=2, sp_size=2, activation_checkpointing=1.0)),
    (4, dict(ep_size=2, sp_size=2, activation_checkpointing=0.5)),
    (4, dict(hsdp_replicate=2, ep_size=2, sp_size=1)),
    (4, dict(ep_size=4, sp_size=4)),  # 2 KV heads over 4 SP ranks: KV heads replicated
])
def test_hf_qwen3_moe_matches_single_process(pools, world, layout):
    dp = world // layout.get("sp_size", 1)
    docs = [[[5, 9, 2], [13], [4, 4, 3], [7, 1]][:dp], [[11, 3], [6, 6], [9], [2, 8]][:dp]]
    spec = dict(fn="parallel_cases:run_hf", hf_config=HF_CONFIG, seed=7, docs=docs, lr=1e-2, max_norm=1.0, optim="sgd",
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got = pools(world).run(spec)
    ref = reference_hf(spec)
    bad = mismatches(got, ref)
    assert not bad, "\n".join(bad[:20])
