"""Qwen3 and Qwen3-MoE causal LMs (one implementation; ``config.num_experts == 0`` is dense).

Module tree (names match HF transformers, so checkpoint keys map one to one except the stacked
experts, see :mod:`xt.models.qwen3.state_dict`)::

    model.embed_tokens                       nn.Embedding [V, D]
    model.layers[i].input_layernorm          RMSNorm
    model.layers[i].self_attn.{q,k,v,o}_proj / q_norm / k_norm / core_attention
    model.layers[i].post_attention_layernorm RMSNorm
    model.layers[i].mlp                      SwiGLUMLP or MoEBlock(gate, experts, dispatcher)
    model.norm                               RMSNorm
    lm_head                                  nn.Linear [V, D] (shares embed_tokens.weight when tied)

Reference: Qwen3 technical report (arXiv:2505.09388); HF ``Qwen3ForCausalLM`` /
``Qwen3MoeForCausalLM`` for numerics (the parity tests compare against them).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
from xt.models.common.attention import Attention
from xt.models.common.flops import causal_lm_flops_per_token
from xt.models.common.lm_loss import head_outputs
from xt.models.common.mlp import SwiGLUMLP
from xt.models.common.moe import MoEBlock
from xt.models.common.norm import RMSNorm
from xt.models.common.output import CausalLMOutput, LayerOutput, pack_inputs, run_layers
from xt.models.common.parallel_plan import decoder_plan
from xt.models.common.rope import RotaryEmbedding
from xt.models.common.router import RouterStats, load_balancing_loss, z_loss
from xt.models.common.init import SeededInit, expert_load_fractions, seeded_build
from xt.models.qwen3.config import Qwen3Config

__all__ = ["Qwen3DecoderLayer", "Qwen3Model", "Qwen3ForCausalLM", "add_router_outputs"]


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm block: ``h += attn(norm(h)); h += mlp(norm(h))``.

    Args:
        config: the model config.
        layer_idx: index of this layer (decides dense vs MoE through ``config.is_moe_layer``).
        attn_backend: :class:`~xt.models.common.core_attention.CoreAttention` backend.
    """

    def __init__(self, config: Qwen3Config, layer_idx: int, attn_backend: str = "auto") -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                   c.rms_norm_eps, qk_norm=True, bias=c.attention_bias, attn_backend=attn_backend)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if c.is_moe_layer(layer_idx):
            self.mlp = MoEBlock.swiglu_topk(c.hidden_size, c.moe_intermediate_size, c.num_experts,
                                            c.num_experts_per_tok, c.norm_topk_prob, c.initializer_range)
        else:
            self.mlp = SwiGLUMLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    @property
    def is_moe(self) -> bool:
        """Whether ``mlp`` is an MoE block."""
        return isinstance(self.mlp, MoEBlock)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> LayerOutput:
        """``h[T, D] -> LayerOutput(h[T, D], RouterStats, or None for a dense layer)``; ``cos, sin
        [T, head_dim]`` float32, ``cu_seqlens [D+1]`` int32."""
        x, h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, cu_seqlens,
                                                             max_seqlen), residual=h)  # h += attn; x = norm(h)
        if self.is_moe:
            y, stats = self.mlp(x)
            return LayerOutput(h + y, stats)
        return LayerOutput(h + self.mlp(x))


class Qwen3Model(nn.Module):
    """Embeddings, decoder layers and the final norm (HF ``model.model``)."""

    def __init__(self, config: Qwen3Config, attn_backend: str = "auto") -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i, attn_backend) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_parameters)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, inputs_embeds: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, list[RouterStats], list[torch.Tensor]]:
        """Packed ``input_ids[T]`` -> ``(hidden[T, D] after the final norm, per-MoE-layer stats,
        [] (no sequence-wise aux loss))`` (:func:`~xt.models.common.output.run_layers`).
        ``inputs_embeds [T, D]``, when given, replaces ``embed_tokens(input_ids)`` (a
        vision-language model's text embeddings with image features scattered in)."""
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        cos, sin = self.rotary_emb(position_ids)
        h, stats, seq = run_layers(self.layers, h, cos, sin, cu_seqlens, max_seqlen)
        return self.norm(h), stats, seq


def add_router_outputs(out: CausalLMOutput, stats: list[RouterStats], config: Qwen3Config) -> CausalLMOutput:
    """Set ``out.aux_loss`` (``router_aux_loss_coef`` x Switch load balancing, plus
    ``router_z_loss_coef`` x z-loss) and ``out.metrics["expert_load"] [L_moe, E]`` from the MoE
    layers' router `stats`; a dense model (no stats) is returned unchanged."""
    if stats:
        aux = config.router_aux_loss_coef * load_balancing_loss(stats)
        if config.router_z_loss_coef:
            aux = aux + config.router_z_loss_coef * z_loss(stats)
        out.aux_loss = aux
        out.metrics["expert_load"] = expert_load_fractions(stats)
    return out


class Qwen3ForCausalLM(SeededInit, nn.Module):
    """Qwen3 / Qwen3-MoE causal LM following the model-forward contract of ``docs/contracts.md``.

    Args:
        config: :class:`~xt.models.qwen3.config.Qwen3Config`.
        attn_backend: core attention backend (``"auto"``, ``"sdpa"``, ``"flex"``, ``"varlen"``,
            ``"flash_attn"``).

    Weights are initialised like HF (normal(0, ``initializer_range``), norms to one).
    """

    def __init__(self, config: Qwen3Config, attn_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.init_std = config.initializer_range
        with seeded_build(self):
            self.model = Qwen3Model(config, attn_backend)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None,
                return_logits: bool | None = None, return_hidden: bool = False) -> CausalLMOutput:
        """Run the model.

        Args:
            input_ids: packed ``[T]`` int64 or batched ``[B, S]`` (each row one document).
            labels: same shape, int64, **already shifted** (``labels[t]`` is the target of position
                t); ``-100`` is ignored.
            position_ids: same shape; default restarts at 0 per document.
            cu_seqlens: ``[D+1]`` int32 document boundaries (packed input only; default one document).
            max_seqlen: longest document (optional).
            attention_mask: ``[B, S]`` (batched only), 1 = real token; padding is dropped before
                the model runs, so it affects neither attention nor the router losses.
            return_logits: compute ``logits``; default: only when no ``labels`` are given (with
                labels and no logits, the loss uses the fused chunked
                ``xt.kernels.loss.linear_cross_entropy`` and never builds ``[T, V]``).
            return_hidden: return ``hidden [T, D]`` and ``head_weight [V, D]`` instead of the
                loss, for a loss object that owns the head (`xt.models.common.lm_loss.head_outputs`).

        Returns:
            :class:`~xt.models.common.output.CausalLMOutput`: ``loss_sum`` (float32 sum of CE),
            ``aux_loss`` (``router_aux_loss_coef * load balancing + router_z_loss_coef * z``; None
            for dense), ``metrics["expert_load"] [L_moe, E]`` (fraction of routed slots per
            expert), ``logits`` (``[T, V]`` or ``[B, S, V]``, zeros at padding).

        Raises:
            ValueError: inputs that break the batch contract (message names the field).
        """
        p = pack_inputs(input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask)
        hidden, stats, _ = self.model(p.input_ids, p.position_ids, p.cu_seqlens, p.max_seqlen)
        out = head_outputs(CausalLMOutput(), hidden, self.lm_head, p, return_logits, return_hidden)
        return add_router_outputs(out, stats, self.config)

    def parallel_plan(self) -> dict:
        """Where xt.parallel may act, as plain data (:func:`xt.models.common.parallel_plan.decoder_plan`):
        decoder layers, MoE blocks (none when dense), core attentions, sizes."""
        c = self.config
        return decoder_plan(self, ["model.layers"], num_experts=c.num_experts,
                            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at sequence length ``seq_len`` (docs/architecture.md, MFU)."""
        c = self.config
        return causal_lm_flops_per_token(c.active_params(), c.num_hidden_layers, c.num_attention_heads,
                                         c.head_dim, seq_len)
