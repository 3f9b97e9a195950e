"""MoE block pieces: dispatcher against a per-token loop (float64), zero grads of idle experts,
the aux loss against transformers' load_balancing_loss_func."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from qwen3_helpers import rel_err
from xt.models.common import GroupedExperts, LocalDispatcher, MoEBlock, TopKRouter, load_balancing_loss
from xt.models.common.router import router_stats

D, FF, E, K = 8, 8, 5, 2


def _dense_reference(block: MoEBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-token loop: sum_k w_k * SwiGLU_{e_k}(x)."""
    r = block.gate(x)
    gu, dn = block.experts.gate_up_proj, block.experts.down_proj
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(r.topk_ids.shape[1]):
            e = int(r.topk_ids[t, k])
            g, u = (gu[e] @ x[t]).split(FF)
            out[t] += r.topk_weights[t, k].to(x.dtype) * (dn[e] @ (F.silu(g) * u))
    return out


@settings(max_examples=15, deadline=None)
@given(T=st.integers(0, 9), skew=st.booleans(), norm=st.booleans())
def test_moe_block_matches_per_token_loop(T, skew, norm):
    torch.manual_seed(T)
    block = MoEBlock.swiglu_topk(D, FF, E, K, norm_topk_prob=norm, init_std=0.5).double()
    x = torch.randn(T, D, dtype=torch.float64)
    if skew:  # every token to experts 0 and 1: the others are empty
        with torch.no_grad():
            block.gate.weight.zero_()
            block.gate.weight[0] = 4.0
            block.gate.weight[1] = 2.0
        x = x.abs()
    y, stats = block(x)
    assert y.shape == (T, D)
    if T:
        assert rel_err(y, _dense_reference(block, x)) <= 1e-12
    assert stats.tokens_per_expert.sum() == T * K and stats.num_tokens == T


def test_idle_experts_get_exactly_zero_grad():
    block = MoEBlock.swiglu_topk(D, FF, E, K, norm_topk_prob=True, init_std=0.5)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[0] = 3.0
        block.gate.weight[1] = 1.0
    x = torch.randn(12, D).abs()
    y, stats = block(x)
    assert stats.tokens_per_expert.tolist() == [12, 12, 0, 0, 0]
    (y ** 2).sum().backward()
    for w in (block.experts.gate_up_proj, block.experts.down_proj):
        assert w.grad is not None
        assert torch.count_nonzero(w.grad[2:]) == 0
        assert torch.count_nonzero(w.grad[:2]) > 0


def test_local_dispatcher_roundtrip_identity_experts():
    disp = LocalDispatcher(E)
    x = torch.randn(7, D, dtype=torch.float64)
    ids = torch.randint(0, E, (7, K))
    w = torch.rand(7, K)
    xs, tpe, ctx = disp.dispatch(x, ids, w)
    assert tpe.tolist() == torch.bincount(ids.reshape(-1), minlength=E).tolist()
    expert_of_row = torch.repeat_interleave(torch.arange(E), tpe)
    assert torch.all(expert_of_row[:-1] <= expert_of_row[1:])
    y = disp.combine(xs, ctx)
    assert rel_err(y, x * w.double().sum(1, keepdim=True)) <= 1e-7


def test_experts_derive_local_count_from_weights():
    ex = GroupedExperts(E, D, FF)
    assert ex.num_local_experts == E
    ex.gate_up_proj = torch.nn.Parameter(ex.gate_up_proj[:2].detach().clone())  # what EP sharding does
    ex.down_proj = torch.nn.Parameter(ex.down_proj[:2].detach().clone())
    assert ex.num_local_experts == 2
    out = ex(torch.randn(5, D), torch.tensor([3, 2]))
    assert out.shape == (5, D)


@pytest.mark.parametrize("layers", [1, 3])
def test_aux_loss_equals_transformers_formula(layers):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    router = TopKRouter(D, E, K, norm_topk_prob=False)
    xs = [torch.randn(11, D) * 3 for _ in range(layers)]
    outs = [router(x) for x in xs]
    ours = load_balancing_loss([router_stats(o, E) for o in outs])
    ref = load_balancing_loss_func(tuple(o.logits for o in outs), E, K)
    assert rel_err(ours, ref) <= 1e-6
    ours.backward()  # differentiable through the probabilities
    assert router.weight.grad is not None and torch.count_nonzero(router.weight.grad) > 0
