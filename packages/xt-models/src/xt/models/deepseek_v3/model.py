"""DeepSeek-V3 / Kimi K2 causal LM (HF ``DeepseekV3ForCausalLM``) with optional multi-token prediction.

Module tree (HF names; experts stacked, see :mod:`xt.models.deepseek_v3.state_dict`)::

    model.embed_tokens
    model.layers[i].input_layernorm / post_attention_layernorm     RMSNorm
    model.layers[i].self_attn                                      MultiHeadLatentAttention
    model.layers[i].mlp      SwiGLUMLP (i < first_k_dense_replace) or
                             DeepseekV3MoE(gate=SigmoidGroupRouter, experts=GroupedExperts,
                                           dispatcher, shared_experts=SwiGLUMLP)
    model.norm, lm_head
    mtp[k]                   DeepseekV3MTPLayer (hub keys ``model.layers.{L+k}.*``), only if mtp_layers > 0

The blocks are in :mod:`xt.models.deepseek_v3.layers` and the MTP depths in
:mod:`xt.models.deepseek_v3.mtp`, which gets the embedding and the LM head as arguments; neither
imports this module.

Reference: DeepSeek-V3 Technical Report (arXiv:2412.19437); numerics follow HF transformers'
``DeepseekV3ForCausalLM`` (the parity tests compare against it).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
from xt.models.common.flops import causal_lm_flops_per_token
from xt.models.common.init import SeededInit, expert_load_fractions, seeded_build
from xt.models.common.lm_loss import head_outputs
from xt.models.common.norm import RMSNorm
from xt.models.common.output import CausalLMOutput, pack_inputs, run_layers
from xt.models.common.parallel_plan import decoder_plan
from xt.models.common.router import RouterStats
from xt.models.deepseek_v3.sigmoid_router import SigmoidGroupRouter
from xt.models.common.sinks_attention import packed_doc_positions
from xt.models.common.yarn import rope_cos_sin, rope_inv_freq
from xt.models.deepseek_v3.config import DeepseekV3Config
from xt.models.deepseek_v3.layers import DeepseekV3DecoderLayer, DeepseekV3MoE
from xt.models.deepseek_v3.mtp import DeepseekV3MTPLayer, mtp_loss

__all__ = ["DeepseekV3Model", "DeepseekV3ForCausalLM"]


class DeepseekV3Model(nn.Module):
    """Embeddings, decoder layers, final norm (HF ``model.model``)."""

    def __init__(self, config: DeepseekV3Config, attn_backend: str = "auto", expert_backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DeepseekV3DecoderLayer(config, i, attn_backend, expert_backend)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin [T, qk_rope_head_dim / 2]`` for ``position_ids[T]`` (YaRN attention factor applied)."""
        c = self.config
        inv_freq, factor = rope_inv_freq(c.rope_parameters, c.qk_rope_head_dim, c.max_position_embeddings)
        return rope_cos_sin(position_ids, inv_freq, factor, dtype)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                doc_ids: torch.Tensor | None = None, num_docs: int = 0
                ) -> tuple[torch.Tensor, list[RouterStats], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Packed ``input_ids[T]`` -> ``(hidden[T, D] after the final norm, stats list, seq-loss list,
        cos, sin)``: the same three as every family's body (:func:`~xt.models.common.output.run_layers`),
        then the rope ``cos, sin [T, Dr/2]`` that the MTP depths reuse."""
        h = self.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, h.dtype)
        h, stats, seq = run_layers(self.layers, h, cos, sin, cu_seqlens, max_seqlen, doc_ids, num_docs)
        return self.norm(h), stats, seq, cos, sin


class DeepseekV3ForCausalLM(SeededInit, nn.Module):
    """DeepSeek-V3 / Kimi K2 causal LM following ``docs/contracts.md``.

    Args:
        config: :class:`~xt.models.deepseek_v3.config.DeepseekV3Config`.
        attn_backend: core attention backend; expert_backend: ``grouped_gemm`` backend.
        init_std: normal init std (HF: 0.02).

    Load balancing: call :meth:`post_optimizer_step` after every optimizer step (see there).
    """

    def __init__(self, config: DeepseekV3Config, attn_backend: str = "auto", expert_backend: str | None = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.config = config
        self.init_std = init_std
        with seeded_build(self):
            self.model = DeepseekV3Model(config, attn_backend, expert_backend)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
            self.mtp = nn.ModuleList(DeepseekV3MTPLayer(config, config.num_hidden_layers + k, attn_backend,
                                                        expert_backend) for k in range(config.mtp_layers))
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def routers(self) -> list[SigmoidGroupRouter]:
        """The MoE routers of the main layers, then of the MTP layers (the rows of :meth:`expert_load`)."""
        layers = list(self.model.layers) + list(self.mtp)
        return [lyr.mlp.gate for lyr in layers if isinstance(lyr.mlp, DeepseekV3MoE)]

    def expert_load(self) -> torch.Tensor:
        """``[L_moe, E]`` float32 routed-slot counts accumulated (training mode) since the last update."""
        routers = self.routers()
        dev = self.lm_head.weight.device
        return torch.stack([r.load_acc.to(dev) if r.load_acc is not None
                            else torch.zeros(r.num_experts, device=dev) for r in routers])

    @torch.no_grad()
    def post_optimizer_step(self, expert_load: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Auxiliary-loss-free balancing: move every ``e_score_correction_bias`` towards equal load.

        The engine calls this once after each optimizer step. For data parallelism it must pass the
        global load: ``load = model.expert_load(); all_reduce(load, SUM); model.post_optimizer_step(load)``;
        with ``expert_load=None`` the local counts are used. Counts are then reset.

        Args:
            expert_load: ``[L_moe, E]`` routed-slot counts of the step over the global batch, or None.

        Returns:
            ``{"expert_load_max_violation": [L_moe]}``: ``max_e load / mean load - 1`` per layer.

        Raises:
            ValueError: ``expert_load`` of the wrong shape.
        """
        routers = self.routers()
        if not routers:
            return {}
        load = self.expert_load() if expert_load is None else expert_load
        if tuple(load.shape) != (len(routers), self.config.n_routed_experts):
            raise ValueError(f"expert_load must be [L_moe={len(routers)}, E={self.config.n_routed_experts}]; "
                             f"got {tuple(load.shape)}")
        for r, row in zip(routers, load):
            if self.config.bias_update_speed:
                r.update_bias(row, self.config.bias_update_speed)
            r.load_acc = None
        load = load.float()
        return {"expert_load_max_violation": load.max(1).values / load.mean(1).clamp(min=1e-9) - 1}

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None,
                return_logits: bool | None = None, return_hidden: bool = False) -> CausalLMOutput:
        """Run the model (packed ``[T]`` + ``cu_seqlens`` or batched ``[B, S]``; labels pre-shifted).

        Args:
            return_logits: compute ``logits``; default: only when no ``labels`` are given (with
                labels and no logits the loss uses the fused chunked kernel, never ``[T, V]``).
            return_hidden: return ``hidden [T, D]`` and ``head_weight [V, D]`` instead of the
                main head's loss (MTP still runs with labels), for a loss object that owns the head (`xt.models.common.lm_loss.head_outputs`).

        Returns:
            ``CausalLMOutput``: ``loss_sum`` (float32 CE sum of the main head); ``aux_loss`` =
            ``seq_aux_loss_coef`` x sum over MoE layers of the sequence-wise loss (documents are the
            sequences) + ``mtp_loss_weight / mtp_layers`` x sum over depths of the mean MTP
            cross-entropy (None when both are off); ``metrics``: ``expert_load [L_moe, E]``
            (fractions), ``mtp_loss`` (when MTP runs); ``logits``.

        Raises:
            ValueError: inputs that break the batch contract.
        """
        c = self.config
        p = pack_inputs(input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask)
        T = p.input_ids.shape[0]
        need_docs = c.seq_aux_loss_coef > 0 or (c.mtp_layers > 0 and p.labels is not None)
        doc_ids = packed_doc_positions(p.cu_seqlens, T)[0] if need_docs else None
        num_docs = p.cu_seqlens.numel() - 1
        seq_docs = doc_ids if c.seq_aux_loss_coef > 0 else None
        hidden, stats, seq, cos, sin = self.model(p.input_ids, p.position_ids, p.cu_seqlens, p.max_seqlen,
                                                  seq_docs, num_docs)
        out = head_outputs(CausalLMOutput(), hidden, self.lm_head, p, return_logits, return_hidden)
        aux = []
        if p.labels is not None:
            if c.mtp_layers > 0:
                mtp, mtp_stats, mtp_seq = mtp_loss(self.mtp, self.model.embed_tokens, self.lm_head, hidden, p,
                                                   cos, sin, doc_ids, seq_docs, num_docs)
                out.metrics["mtp_loss"] = mtp.detach()
                aux.append(c.mtp_loss_weight * mtp)
                stats, seq = stats + mtp_stats, seq + mtp_seq
        if seq:
            aux.append(c.seq_aux_loss_coef * torch.stack(seq).sum())
        if aux:
            out.aux_loss = torch.stack(aux).sum()
        if stats:
            out.metrics["expert_load"] = expert_load_fractions(stats)
        return out

    def active_params(self) -> int:
        """Non-embedding parameters touched per token (top-k routed experts only), LM head included."""
        c = self.config
        total = 0
        for name, prm in self.named_parameters():
            if "embed_tokens" in name or name.startswith("mtp."):
                continue
            frac = c.num_experts_per_tok / c.n_routed_experts if ".mlp.experts." in name else 1.0
            total += int(prm.numel() * frac)
        return total + (c.vocab_size * c.hidden_size if c.tie_word_embeddings else 0)

    def parallel_plan(self) -> dict:
        """Where xt.parallel may act, as plain data (:func:`xt.models.common.parallel_plan.decoder_plan`):
        the main and MTP decoder layers, their MoE blocks and core attentions, and the sizes."""
        c = self.config
        return decoder_plan(self, ["model.layers", "mtp"], num_experts=c.n_routed_experts,
                            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                            mtp_layers=c.mtp_layers)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (docs/architecture.md, MFU; MLA counted with ``qk_head_dim``)."""
        c = self.config
        return causal_lm_flops_per_token(self.active_params(), c.num_hidden_layers, c.num_attention_heads,
                                         c.qk_head_dim, seq_len)
