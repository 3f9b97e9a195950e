"""Multi-head latent attention (MLA) with the decoupled rotary part, over packed documents.

Shape legend: T tokens, D hidden, H heads, Cq ``q_lora_rank``, Ckv ``kv_lora_rank``,
Dn ``qk_nope_head_dim``, Dr ``qk_rope_head_dim``, Dv ``v_head_dim``.

Per token (DeepSeek-V2 arXiv:2405.04434 §2.1; DeepSeek-V3 arXiv:2412.19437 §2.1.1):
  q   = W_qb RMSNorm(W_qa x)            (or W_q x when ``q_lora_rank`` is None) -> [H, Dn + Dr]
  c   = W_kva x -> (c_kv [Ckv], k_r [Dr]);  c_kv = RMSNorm(c_kv)
  k_n, v = split(W_kvb c_kv) -> [H, Dn], [H, Dv];  k = [k_n, rope(k_r) shared by all heads]
  out = W_o attention([q_n, rope(q_r)], k, v)
Softmax scale ``(Dn + Dr) ** -0.5`` times the YaRN ``mscale(factor, mscale_all_dim) ** 2`` correction.
HF names: ``q_a_proj``, ``q_a_layernorm``, ``q_b_proj`` (or ``q_proj``), ``kv_a_proj_with_mqa``,
``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``. The low-rank norms use eps 1e-6 as HF does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.models.common.linear import Linear
from xt.models.common.core_attention import CoreAttention
from xt.models.common.norm import RMSNorm
from xt.models.common.yarn import apply_rope, softmax_scale_mscale

__all__ = ["MultiHeadLatentAttention"]


class MultiHeadLatentAttention(nn.Module):
    """MLA block ``x[T, D] -> [T, D]``; see the module docstring.

    Args:
        hidden_size, num_attention_heads, q_lora_rank (None: full-rank ``q_proj``), kv_lora_rank,
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: sizes (HF names).
        rope_parameters: HF rope dict (for the softmax-scale correction).
        rope_interleave: rotary pairs are adjacent dims (DeepSeek checkpoints) or half-split.
        attention_bias: bias on ``q_a_proj``/``kv_a_proj_with_mqa``/``o_proj`` (as HF).
        attn_backend: :class:`~xt.models.common.core_attention.CoreAttention` backend. The core is
            the swappable ``core_attention`` (``forward(q, k, v, cu_seqlens, max_seqlen)``); it gets
            ``v`` zero-padded to Dn + Dr when narrower (or q, k zero-padded to Dv when v is wider), so
            q, k and v share one head dim; the padding is sliced off the output.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, q_lora_rank: int | None, kv_lora_rank: int,
                 qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int,
                 rope_parameters: dict | None = None, rope_interleave: bool = True, attention_bias: bool = False,
                 attn_backend: str = "auto") -> None:
        super().__init__()
        H = num_attention_heads
        self.num_attention_heads, self.kv_lora_rank = H, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.rope_interleave = rope_interleave
        if q_lora_rank is None:
            self.q_proj = Linear(hidden_size, H * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = Linear(hidden_size, q_lora_rank, bias=attention_bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, 1e-6)
            self.q_b_proj = Linear(q_lora_rank, H * self.qk_head_dim, bias=False)
        self.q_lora_rank = q_lora_rank
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, bias=attention_bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, 1e-6)
        self.kv_b_proj = Linear(kv_lora_rank, H * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = Linear(H * v_head_dim, hidden_size, bias=attention_bias)
        self.softmax_scale = softmax_scale_mscale(rope_parameters, self.qk_head_dim ** -0.5)
        self.core_attention = CoreAttention(attn_backend, softmax_scale=self.softmax_scale)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """Attend.

        Args:
            x: ``[T, D]`` normalised hidden states.
            cos, sin: ``[T, Dr/2]`` from :func:`xt.models.common.yarn.rope_cos_sin`.
            cu_seqlens: ``[Dc+1]`` int32 document boundaries; max_seqlen: longest document.

        Returns:
            ``[T, D]`` in ``x.dtype``.
        """
        T, H = x.shape[0], self.num_attention_heads
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rot = q.view(T, H, self.qk_head_dim).split([self.qk_nope_head_dim, self.qk_rope_head_dim], -1)
        c_kv, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], -1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(T, H, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], -1)
        q_rot = apply_rope(q_rot, cos, sin, self.rope_interleave)
        k_rot = apply_rope(k_rot.view(T, 1, self.qk_rope_head_dim), cos, sin, self.rope_interleave)
        q = torch.cat([q_nope, q_rot], dim=-1)
        k = torch.cat([k_nope, k_rot.expand(T, H, self.qk_rope_head_dim)], dim=-1)
        pad = self.qk_head_dim - self.v_head_dim
        if pad > 0:
            v = F.pad(v, (0, pad))
        elif pad < 0:  # zero dims do not change q k^T (the scale is explicit)
            q, k = F.pad(q, (0, -pad)), F.pad(k, (0, -pad))
        out = self.core_attention(q, k, v, cu_seqlens, max_seqlen)[..., :self.v_head_dim]
        return self.o_proj(out.reshape(T, H * self.v_head_dim))
