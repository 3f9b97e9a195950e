"""XT's own Qwen3-MoE (xt.models) under parallelize equals its single-process run (fp32).

The optimizer is SGD with momentum, whose update is linear in the gradient, so the fp32 bound of
1e-5 on the parameters stays meaningful on every CPU (AdamW amplifies the rounding noise of ~zero
gradients; its sharded state is checked in float64 by test_parallel_equivalence's layout sweep).

The router's auxiliary losses are off: they are normalised per micro-batch, so splitting a batch
over SP/DP ranks changes them by design (docs/architecture.md, Loss normalisation, defines the LM loss as global)."""
from __future__ import annotations

import pytest

from parallel_cases import reference_toy
from parallel_layouts import mismatches

pytest.importorskip("xt.models.qwen3.model")
pytestmark = pytest.mark.dist

MODEL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             norm_topk_prob=True, router_aux_loss_coef=0.0, initializer_range=0.2, model_type="qwen3_moe")


@pytest.mark.parametrize("world,layout", [
    (4, dict(ep_size=2, sp_size=2, activation_checkpointing=0.5)),
    (4, dict(ep_size=4, sp_size=4)),
    (2, dict(hsdp_replicate=2)),
    (4, dict(ep_size=4, moe_token_chunks=3, activation_checkpointing=1.0)),  # chunked all-to-alls
])
@pytest.mark.parametrize("tie", [False, True])
def test_xt_qwen3_moe_matches_single_process(pools, world, layout, tie):
    dp = world // layout.get("sp_size", 1)
    docs = [[[5, 9, 2], [13], [4, 4, 3], [7, 1]][:dp], [[11, 3], [6, 6], [9], [2, 8]][:dp]]
    spec = dict(fn="parallel_cases:run_toy", builder="xt_qwen3", model=dict(MODEL, tie_word_embeddings=tie), seed=5, skew="none", docs=docs, lr=1e-2,
                max_norm=1.0, optim="sgd", layout=dict(layout, param_dtype=None, reduce_dtype=None))
    bad = mismatches(pools(world).run(spec), reference_toy(spec))
    assert not bad, "\n".join(bad[:20])
