"""Self-attention block: projections, optional QK-norm, RoPE, grouped-query core attention.

Weights follow HF names so checkpoint keys map one to one: ``q_proj``, ``k_proj``, ``v_proj``,
``o_proj`` (``nn.Linear``, weight ``[out, in]``) and, with ``qk_norm``, ``q_norm``/``k_norm``
(RMSNorm over ``head_dim``, applied per head before RoPE, as in Qwen3).

The attention itself is the swappable attribute ``core_attention`` (see
:mod:`xt.models.common.core_attention`); ``xt.parallel`` may replace it with a wrapper that has the
same ``forward(q, k, v, cu_seqlens, max_seqlen)``.
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
from xt.models.common.core_attention import CoreAttention
from xt.models.common.norm import RMSNorm
from xt.models.common.rope import apply_rotary
from xt.kernels.norm import qk_norm_rope

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head attention with GQA over a packed batch.

    Args:
        hidden_size: D.
        num_attention_heads: Hq.
        num_key_value_heads: Hkv (Hq must be a multiple).
        head_dim: hd.
        rms_norm_eps: epsilon of ``q_norm``/``k_norm``.
        qk_norm: build ``q_norm``/``k_norm`` (Qwen3: True; Llama: False).
        bias: biases on q/k/v projections (HF ``attention_bias``; also on ``o_proj`` as HF does).
        attn_backend: backend of the default :class:`CoreAttention`.

    Raises:
        ValueError: ``num_attention_heads`` not a multiple of ``num_key_value_heads``.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, num_key_value_heads: int, head_dim: int,
                 rms_norm_eps: float = 1e-6, qk_norm: bool = True, bias: bool = False,
                 attn_backend: str = "auto") -> None:
        super().__init__()
        if num_attention_heads % num_key_value_heads:
            raise ValueError(f"num_attention_heads={num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={num_key_value_heads}")
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.q_proj = Linear(hidden_size, num_attention_heads * head_dim, bias=bias)
        self.k_proj = Linear(hidden_size, num_key_value_heads * head_dim, bias=bias)
        self.v_proj = Linear(hidden_size, num_key_value_heads * head_dim, bias=bias)
        self.o_proj = Linear(num_attention_heads * head_dim, hidden_size, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.core_attention = CoreAttention(attn_backend, softmax_scale=head_dim ** -0.5)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """Attend.

        Args:
            x: ``[T, D]`` normalised hidden states of the packed batch.
            cos, sin: ``[T, head_dim]`` float32 from :class:`~xt.models.common.rope.RotaryEmbedding`.
            cu_seqlens: ``[num_docs+1]`` int32 document boundaries.
            max_seqlen: longest document (python int).

        Returns:
            ``[T, D]`` in ``x.dtype``.
        """
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_attention_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_key_value_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_key_value_heads, self.head_dim)
        if self.q_norm is not None:  # one fused op: norms, RoPE, the autocast cast (xt.kernels.norm)
            q, k = qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, self.k_norm.eps, cos, sin)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = self.core_attention(q, k, v, cu_seqlens, max_seqlen)
        return self.o_proj(out.reshape(T, self.num_attention_heads * self.head_dim))
