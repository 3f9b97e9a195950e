"""Reference document-causal ("varlen") attention over a packed sequence, any device.

Used as the core attention of the HF adapter (:mod:`xt.parallel.hf_qwen3_moe`) and of tests.
It loops over documents and calls ``F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``
on each, so memory is O(sum of squared document lengths), not O(T^2). Production XT models bring
their own fused core attention (flash varlen / flex); Ulysses wraps either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["varlen_attention", "VarlenAttention"]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int | None = None, scale: float | None = None) -> torch.Tensor:
    """Causal attention restricted to each document of a packed sequence.

    Args:
        q: ``[T, Hq, d]``; k, v: ``[T, Hkv, d]`` with ``Hq % Hkv == 0`` (GQA).
        cu_seqlens: ``[D+1]`` int document boundaries, ``cu_seqlens[-1] == T``.
        max_seqlen: unused (kept for the core-attention signature).
        scale: softmax scale, default ``d ** -0.5``.

    Returns:
        ``[T, Hq, d]`` in ``q.dtype``.

    Raises:
        ValueError: ``cu_seqlens[-1] != T`` or heads not divisible.
    """
    T = q.shape[0]
    bounds = cu_seqlens.tolist()
    if not bounds or bounds[0] != 0 or bounds[-1] != T:
        raise ValueError(f"varlen_attention: cu_seqlens must run from 0 to T={T}; got {bounds}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"varlen_attention: {q.shape[1]} query heads not divisible by {k.shape[1]} KV heads")
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        qd, kd, vd = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


class VarlenAttention(nn.Module):
    """``nn.Module`` form of :func:`varlen_attention` (the core-attention signature of docs/contracts.md)."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q, k, v, cu_seqlens, max_seqlen=None):
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, self.scale)
