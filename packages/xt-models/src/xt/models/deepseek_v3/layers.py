"""DeepSeek-V3 decoder blocks: the DeepSeekMoE feed-forward and the decoder layer (MLA + dense or
MoE feed-forward), shared by the main stack (:mod:`xt.models.deepseek_v3.model`) and the
multi-token-prediction depths (:mod:`xt.models.deepseek_v3.mtp`), which both import this module
and not each other.

Shape legend: T tokens, D hidden size, E routed experts, K top-k, Dr rope head dim.
Reference: DeepSeek-V3 Technical Report (arXiv:2412.19437); numerics follow HF transformers'
``DeepseekV3DecoderLayer``.
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.experts import GroupedExperts
from xt.models.deepseek_v3.mla import MultiHeadLatentAttention
from xt.models.common.mlp import SwiGLUMLP
from xt.models.common.moe import MoEBlock
from xt.models.common.norm import RMSNorm
from xt.models.common.output import LayerOutput
from xt.models.common.router import router_stats
from xt.models.deepseek_v3.sigmoid_router import SigmoidGroupRouter, sequence_balance_loss
from xt.models.deepseek_v3.config import DeepseekV3Config

__all__ = ["DeepseekV3MoE", "DeepseekV3DecoderLayer", "build_moe"]


class DeepseekV3MoE(MoEBlock):
    """DeepSeekMoE block: sigmoid group-limited router, routed SwiGLU experts, shared experts.

    ``forward(x[T, D], doc_ids[T] | None, num_docs) -> (y[T, D], RouterStats, seq_loss | None)``:
    ``seq_loss`` is :func:`~xt.models.deepseek_v3.sigmoid_router.sequence_balance_loss` (no alpha) when
    ``doc_ids`` is given.
    """

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor | None = None, num_docs: int = 0):
        """``x[T, D]`` (+ ``doc_ids[T]`` int64 of ``num_docs`` documents) -> ``(y[T, D], stats, seq_loss)``."""
        route = self.gate(x)
        x_sorted, tokens_per_expert, ctx = self.dispatcher.dispatch(x, route.topk_ids, route.topk_weights)
        y = self.dispatcher.combine(self.experts(x_sorted, tokens_per_expert), ctx)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        seq = None if doc_ids is None else sequence_balance_loss(route.probs, route.topk_ids, doc_ids, num_docs)
        return y, router_stats(route, self.gate.num_experts), seq


def build_moe(c: DeepseekV3Config, expert_backend: str | None) -> DeepseekV3MoE:
    """The MoE block of config `c`: sigmoid group router, ``n_routed_experts`` SwiGLU experts and
    ``n_shared_experts`` shared experts fused into one SwiGLU MLP (none when 0)."""
    gate = SigmoidGroupRouter(c.hidden_size, c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group,
                              c.routed_scaling_factor, c.norm_topk_prob)
    experts = GroupedExperts(c.n_routed_experts, c.hidden_size, c.moe_intermediate_size, backend=expert_backend)
    shared = (SwiGLUMLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts)
              if c.n_shared_experts > 0 else None)
    return DeepseekV3MoE(gate, experts, shared_experts=shared)


class DeepseekV3DecoderLayer(nn.Module):
    """Pre-norm block with MLA and a dense or MoE feed-forward.

    ``forward(h[T, D], cos, sin [T, Dr/2], cu_seqlens, max_seqlen, doc_ids, num_docs)`` returns
    :class:`~xt.models.common.output.LayerOutput` ``(h, RouterStats | None, seq_aux | None)``, like
    every family's decoder layer.
    """

    def __init__(self, config: DeepseekV3Config, layer_idx: int, attn_backend: str = "auto",
                 expert_backend: str | None = None) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = MultiHeadLatentAttention(c.hidden_size, c.num_attention_heads, c.q_lora_rank, c.kv_lora_rank,
                                                  c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                                                  c.rope_parameters, c.rope_interleave, c.attention_bias, attn_backend)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if layer_idx >= c.first_k_dense_replace:
            self.mlp = build_moe(c, expert_backend)
        else:
            self.mlp = SwiGLUMLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, doc_ids: torch.Tensor | None = None, num_docs: int = 0) -> LayerOutput:
        """``h[T, D] -> LayerOutput(h[T, D], RouterStats | None, seq_aux | None)``: stats and (with
        ``doc_ids [T]`` int64) the sequence-wise loss of an MoE layer; neither for a dense one."""
        x, h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, cu_seqlens,
                                                             max_seqlen), residual=h)  # h += attn; x = norm(h)
        if isinstance(self.mlp, DeepseekV3MoE):
            y, stats, seq = self.mlp(x, doc_ids, num_docs)
            return LayerOutput(h + y, stats, seq)
        return LayerOutput(h + self.mlp(x))
