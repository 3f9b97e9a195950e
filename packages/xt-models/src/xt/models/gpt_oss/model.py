"""GPT-OSS causal LM (HF ``GptOssForCausalLM``).

Module tree (HF names; expert weights are stored de-interleaved, see :mod:`xt.models.gpt_oss.state_dict`)::

    model.embed_tokens                                   nn.Embedding [V, D]
    model.layers[i].input_layernorm                      RMSNorm
    model.layers[i].self_attn.{q,k,v,o}_proj (+bias), .sinks [H], .core_attention
    model.layers[i].post_attention_layernorm             RMSNorm
    model.layers[i].mlp = MoEBlock(gate=GptOssRouter, experts=GptOssExperts, dispatcher)
    model.norm, lm_head

Layers alternate sliding-window (``sliding_window`` keys, the query included) and full attention
(``config.layer_types``); every layer has learned sinks. Reference: OpenAI gpt-oss model card
(2025); numerics follow HF transformers' ``GptOssForCausalLM`` (parity tests compare against it).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
import xt.models.common.yarn  # noqa: F401  (registers the yarn rope type)
from xt.core.seeded_init import InitRule
from xt.models.common.flops import causal_lm_flops_per_token
from xt.models.common.moe import MoEBlock
from xt.models.common.norm import RMSNorm
from xt.models.common.output import CausalLMOutput, LayerOutput, pack_inputs, run_layers
from xt.models.common.parallel_plan import decoder_plan
from xt.models.common.rope import RotaryEmbedding, apply_rotary
from xt.models.common.router import RouterStats, load_balancing_loss
from xt.models.common.sinks_attention import SinksCoreAttention
from xt.models.common.init import SeededInit, expert_load_fractions, seeded_build
from xt.models.common.lm_loss import head_outputs
from xt.models.gpt_oss.config import GptOssConfig
from xt.models.gpt_oss.moe import GptOssExperts, GptOssRouter

__all__ = ["GptOssAttention", "GptOssDecoderLayer", "GptOssModel", "GptOssForCausalLM"]


class GptOssAttention(nn.Module):
    """GQA attention with biases, learned per-head sinks ``[H]`` and an optional sliding window.

    ``forward(x[T, D], cos, sin [T, head_dim], cu_seqlens, max_seqlen) -> [T, D]``; the core is the
    swappable ``core_attention`` (:class:`~xt.models.common.sinks_attention.SinksCoreAttention`),
    called with ``sliding_window=`` and ``sinks=`` keywords.
    """

    def __init__(self, config: GptOssConfig, layer_idx: int) -> None:
        super().__init__()
        c = config
        self.num_attention_heads, self.num_key_value_heads, self.head_dim = (
            c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        self.q_proj = Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.attention_bias)
        self.sinks = nn.Parameter(torch.zeros(c.num_attention_heads))
        self.sliding_window = c.sliding_window if c.layer_types[layer_idx] == "sliding_attention" else None
        self.core_attention = SinksCoreAttention(softmax_scale=c.head_dim ** -0.5)

    def xt_init_rules(self, std: float) -> dict:
        """Init rules of the module's own parameter: the attention sinks normal(0, `std`)."""
        return {"sinks": InitRule("normal", std)}

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """Attend over packed documents; shapes in the class docstring."""
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_attention_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_key_value_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_key_value_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = self.core_attention(q, k, v, cu_seqlens, max_seqlen, sliding_window=self.sliding_window,
                                  sinks=self.sinks)
        return self.o_proj(out.reshape(T, -1))


class GptOssDecoderLayer(nn.Module):
    """Pre-norm block with an MoE feed-forward; returns the layer's router statistics."""

    def __init__(self, config: GptOssConfig, layer_idx: int, expert_backend: str | None = None) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = GptOssAttention(c, layer_idx)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MoEBlock(GptOssRouter(c.hidden_size, c.num_local_experts, c.num_experts_per_tok),
                            GptOssExperts(c.num_local_experts, c.hidden_size, c.intermediate_size, c.swiglu_alpha,
                                          c.swiglu_limit, backend=expert_backend))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> LayerOutput:
        """``h[T, D] -> LayerOutput(h[T, D], RouterStats)``; ``cos, sin [T, head_dim]`` float32."""
        x, h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, cu_seqlens,
                                                             max_seqlen), residual=h)  # h += attn; x = norm(h)
        y, stats = self.mlp(x)
        return LayerOutput(h + y, stats)


class GptOssModel(nn.Module):
    """Embeddings, decoder layers, final norm (HF ``model.model``)."""

    def __init__(self, config: GptOssConfig, expert_backend: str | None = None) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GptOssDecoderLayer(config, i, expert_backend)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        params = {**config.rope_parameters, "max_position_embeddings": config.max_position_embeddings}
        self.rotary_emb = RotaryEmbedding(config.head_dim, float(params.pop("rope_theta")), params)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> tuple[torch.Tensor, list[RouterStats], list[torch.Tensor]]:
        """Packed ``input_ids[T]`` -> ``(hidden[T, D] after the final norm, per-layer router stats,
        [] (no sequence-wise aux loss))`` (:func:`~xt.models.common.output.run_layers`)."""
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(position_ids)
        h, stats, seq = run_layers(self.layers, h, cos, sin, cu_seqlens, max_seqlen)
        return self.norm(h), stats, seq


class GptOssForCausalLM(SeededInit, nn.Module):
    """GPT-OSS causal LM following the model-forward contract of ``docs/contracts.md``.

    Args:
        config: :class:`~xt.models.gpt_oss.config.GptOssConfig`.
        expert_backend: ``grouped_gemm`` backend for the experts (None: process-wide choice).
        init_std: normal init std (HF: 0.02; sinks and router bias too).
    """

    def __init__(self, config: GptOssConfig, expert_backend: str | None = None, init_std: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.init_std = init_std
        with seeded_build(self):
            self.model = GptOssModel(config, expert_backend)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None,
                return_logits: bool | None = None, return_hidden: bool = False) -> CausalLMOutput:
        """Run the model (packed ``[T]`` + ``cu_seqlens`` or batched ``[B, S]``; labels pre-shifted).

        Args:
            return_logits: compute ``logits``; default: only when no ``labels`` are given (with
                labels and no logits the loss uses the fused chunked kernel, never ``[T, V]``).
            return_hidden: return ``hidden [T, D]`` and ``head_weight [V, D]`` instead of the
                loss, for a loss object that owns the head (`xt.models.common.lm_loss.head_outputs`).

        Returns:
            ``CausalLMOutput``: ``loss_sum`` (float32 CE sum), ``aux_loss`` =
            ``router_aux_loss_coef`` x Switch loss pooled over layers (None when the coefficient is 0),
            ``metrics["expert_load"] [L, E]`` (fraction of routed slots), ``logits``.

        Raises:
            ValueError: inputs that break the batch contract.
        """
        p = pack_inputs(input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask)
        hidden, stats, _ = self.model(p.input_ids, p.position_ids, p.cu_seqlens, p.max_seqlen)
        out = head_outputs(CausalLMOutput(), hidden, self.lm_head, p, return_logits, return_hidden)
        if self.config.router_aux_loss_coef:
            out.aux_loss = self.config.router_aux_loss_coef * load_balancing_loss(stats)
        out.metrics["expert_load"] = expert_load_fractions(stats)
        return out

    def active_params(self) -> int:
        """Non-embedding parameters touched per token (top-k experts only), LM head included."""
        c = self.config
        total = 0
        for name, p in self.named_parameters():
            if "embed_tokens" in name:
                continue
            total += p.numel() * c.num_experts_per_tok // c.num_local_experts if ".experts." in name else p.numel()
        return total + (c.vocab_size * c.hidden_size if c.tie_word_embeddings else 0)

    def parallel_plan(self) -> dict:
        """Where xt.parallel may act, as plain data (:func:`xt.models.common.parallel_plan.decoder_plan`):
        decoder layers, MoE blocks, core attentions (with per-head sinks), sizes."""
        c = self.config
        return decoder_plan(self, ["model.layers"], num_experts=c.num_local_experts,
                            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (sliding layers counted as full attention: an upper bound)."""
        c = self.config
        return causal_lm_flops_per_token(self.active_params(), c.num_hidden_layers, c.num_attention_heads,
                                         c.head_dim, seq_len)
