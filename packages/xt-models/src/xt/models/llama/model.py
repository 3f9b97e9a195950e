"""Llama causal LM (HF ``LlamaForCausalLM``), tied embeddings included.

Module tree (HF names, so checkpoint keys map one to one)::

    model.embed_tokens                       nn.Embedding [V, D]
    model.layers[i].input_layernorm          RMSNorm
    model.layers[i].self_attn.{q,k,v,o}_proj / core_attention
    model.layers[i].post_attention_layernorm RMSNorm
    model.layers[i].mlp.{gate,up,down}_proj  SwiGLU
    model.norm                               RMSNorm
    lm_head                                  nn.Linear [V, D] (is ``embed_tokens.weight`` when tied)

Reference: Touvron et al. 2023 (arXiv:2302.13971, 2307.09288); Meta Llama 3 (2024). Numerics
follow HF transformers' ``LlamaForCausalLM`` (the parity tests compare against it).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
import xt.models.common.yarn  # noqa: F401  (registers the yarn / llama3 rope types)
from xt.models.common.attention import Attention
from xt.models.common.flops import causal_lm_flops_per_token
from xt.models.common.mlp import SwiGLUMLP
from xt.models.common.norm import RMSNorm
from xt.models.common.output import CausalLMOutput, LayerOutput, pack_inputs, run_layers
from xt.models.common.parallel_plan import decoder_plan
from xt.models.common.rope import RotaryEmbedding
from xt.models.common.init import SeededInit, seeded_build
from xt.models.common.lm_loss import head_outputs
from xt.models.llama.config import LlamaConfig

__all__ = ["LlamaDecoderLayer", "LlamaModel", "LlamaForCausalLM"]


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block ``h += attn(norm(h)); h += mlp(norm(h))`` over packed ``h[T, D]``."""

    def __init__(self, config: LlamaConfig, layer_idx: int, attn_backend: str = "auto") -> None:
        super().__init__()
        c = config
        if c.mlp_bias:
            raise ValueError("mlp_bias=true is not supported by xt.models.llama")
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                   c.rms_norm_eps, qk_norm=False, bias=c.attention_bias, attn_backend=attn_backend)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = SwiGLUMLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> LayerOutput:
        """``h[T, D] -> LayerOutput(h[T, D])`` (dense: no router stats); ``cos, sin [T, head_dim]``
        float32, ``cu_seqlens [D+1]`` int32."""
        x, h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, cu_seqlens,
                                                             max_seqlen), residual=h)  # h += attn; x = norm(h)
        return LayerOutput(h + self.mlp(x))


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm (HF ``model.model``)."""

    def __init__(self, config: LlamaConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, attn_backend) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        params = {**config.rope_parameters, "max_position_embeddings": config.max_position_embeddings}
        self.rotary_emb = RotaryEmbedding(config.head_dim, float(params.pop("rope_theta")), params)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> tuple[torch.Tensor, list, list[torch.Tensor]]:
        """Packed ``input_ids[T]`` -> ``(hidden[T, D] after the final norm, [], [])`` (dense: no
        router stats, no sequence-wise aux loss; :func:`~xt.models.common.output.run_layers`)."""
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(position_ids)
        h, stats, seq = run_layers(self.layers, h, cos, sin, cu_seqlens, max_seqlen)
        return self.norm(h), stats, seq


class LlamaForCausalLM(SeededInit, nn.Module):
    """Llama causal LM following the model-forward contract of ``docs/contracts.md``.

    Args:
        config: :class:`~xt.models.llama.config.LlamaConfig`.
        attn_backend: core attention backend (see :class:`~xt.models.common.core_attention.CoreAttention`).
        init_std: std of the normal initialisation of linear and embedding weights (HF: 0.02).
    """

    def __init__(self, config: LlamaConfig, attn_backend: str = "auto", init_std: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.init_std = init_std
        with seeded_build(self):
            self.model = LlamaModel(config, attn_backend)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None,
                return_logits: bool | None = None, return_hidden: bool = False) -> CausalLMOutput:
        """Run the model on packed ``input_ids[T]`` (+ ``cu_seqlens``) or batched ``[B, S]``.

        ``labels`` are pre-shifted (``labels[t]`` is the target of position t, -100 = no loss).

        Args:
            return_logits: compute ``logits``; default: only when no ``labels`` are given (with
                labels and no logits the loss uses the fused chunked kernel, never ``[T, V]``).
            return_hidden: return ``hidden [T, D]`` and ``head_weight [V, D]`` instead of the
                loss, for a loss object that owns the head (`xt.models.common.lm_loss.head_outputs`).

        Returns:
            :class:`~xt.models.common.output.CausalLMOutput` with ``loss_sum`` (float32 sum of CE),
            ``aux_loss`` None, ``logits`` ``[T, V]`` / ``[B, S, V]`` when requested.

        Raises:
            ValueError: inputs that break the batch contract (message names the field).
        """
        p = pack_inputs(input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask)
        hidden, _, _ = self.model(p.input_ids, p.position_ids, p.cu_seqlens, p.max_seqlen)
        return head_outputs(CausalLMOutput(), hidden, self.lm_head, p, return_logits, return_hidden)

    def active_params(self) -> int:
        """Non-embedding parameters plus the LM head (docs/architecture.md, MFU)."""
        c = self.config
        n = sum(p.numel() for name, p in self.named_parameters() if "embed_tokens" not in name)
        return n + (c.vocab_size * c.hidden_size if c.tie_word_embeddings else 0)

    def parallel_plan(self) -> dict:
        """Where xt.parallel may act, as plain data (:func:`xt.models.common.parallel_plan.decoder_plan`):
        decoder layers, core attentions, sizes (dense: no MoE blocks)."""
        c = self.config
        return decoder_plan(self, ["model.layers"], num_experts=None, num_attention_heads=c.num_attention_heads,
                            num_key_value_heads=c.num_key_value_heads)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at sequence length ``seq_len``."""
        c = self.config
        return causal_lm_flops_per_token(self.active_params(), c.num_hidden_layers, c.num_attention_heads,
                                         c.head_dim, seq_len)
