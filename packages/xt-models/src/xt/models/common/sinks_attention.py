"""Core attention over documents with optional learned sinks (GPT-OSS) and sliding windows.

A query attends to a key only when both belong to the same document (or the same cached sequence),
the key is not in the future and, with a sliding window ``W``, ``q_pos - k_pos < W`` (the window holds
``W`` keys including the query's own). This module is the masked path (SDPA, or an explicit softmax with
sinks) used for sinks, sliding windows and KV-cache decoding (:mod:`xt.models.common.generate`);
plain packed causal attention goes to :class:`xt.models.common.core_attention.CoreAttention`.

Shape legend: B sequences (1 for packed input), S query length, L key length, H query heads,
G key/value heads (H % G == 0), Dq query/key head dim, Dv value head dim.

Sinks: GPT-OSS (OpenAI, 2025, "gpt-oss model card") adds one learned logit per head to the softmax
denominator: ``p_j = exp(s_j) / (exp(sink_h) + sum_i exp(s_i))``; the sink has no value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["document_mask", "packed_doc_positions", "core_attention", "SinksCoreAttention", "SINKS_BACKENDS",
           "set_sinks_backend"]

#: "sdpa": the masked path below; "varlen": flash varlen with the sink correction; "auto": flash on
#: CUDA for bf16/fp16 (or autocast) inputs, the masked path otherwise (`xt.models.common.sinks_flash`:
#: no [T, T] scores)
SINKS_BACKENDS = ("auto", "sdpa", "varlen")

_LOOP_MAX_DOCS = 8


def packed_doc_positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Document id and in-document position of each packed token.

    Args:
        cu_seqlens: ``[D+1]`` int, ``0 = c[0] <= c[1] <= ... <= c[D] = total``.
        total: T.

    Returns:
        ``(doc_ids [T] int64, positions [T] int64)``.

    Raises:
        ValueError: if ``cu_seqlens`` does not start at 0, end at T, or decreases.
    """
    cu = cu_seqlens.to(torch.int64)
    if cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must be 1-D, start at 0 and end at T={total}; got {cu_seqlens.tolist()}")
    lengths = cu[1:] - cu[:-1]
    if bool((lengths < 0).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing; got {cu_seqlens.tolist()}")
    doc_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)
    positions = torch.arange(total, device=cu.device) - cu[:-1][doc_ids]
    return doc_ids, positions


def document_mask(q_doc: torch.Tensor, q_pos: torch.Tensor, k_doc: torch.Tensor, k_pos: torch.Tensor,
                  sliding_window: int | None = None) -> torch.Tensor:
    """Boolean "may attend" mask from document ids and positions.

    Args:
        q_doc, q_pos: ``[..., S]`` int64 document id and position of each query.
        k_doc, k_pos: ``[..., L]`` int64 for each key; a key with ``k_doc < 0`` is never attended.
        sliding_window: W or None (no window).

    Returns:
        ``[..., S, L]`` bool.
    """
    qd, qp = q_doc.unsqueeze(-1), q_pos.unsqueeze(-1)
    kd, kp = k_doc.unsqueeze(-2), k_pos.unsqueeze(-2)
    mask = (qd == kd) & (kd >= 0) & (kp <= qp)
    if sliding_window is not None:
        mask = mask & (qp - kp < sliding_window)
    return mask


def core_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                   sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Masked softmax attention, with grouped key/value heads and optional sinks.

    Args:
        q: ``[B, S, H, Dq]``.
        k: ``[B, L, G, Dq]``.
        v: ``[B, L, G, Dv]``.
        mask: ``[B, S, L]`` bool (True = attend). Rows must have at least one True (or sinks).
        scale: softmax scale (e.g. ``Dq ** -0.5``).
        sinks: ``[H]`` learned sink logits, or None.

    Returns:
        ``[B, S, H, Dv]`` in ``q.dtype``. Without sinks this is SDPA; with sinks an explicit softmax
        (float32 for low-precision inputs) over ``[scores, sink]`` whose sink column is dropped.

    Raises:
        ValueError: when head counts do not divide.
    """
    H, G = q.shape[2], k.shape[2]
    if H % G:
        raise ValueError(f"attention: num_attention_heads={H} is not a multiple of num_key_value_heads={G}")
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    m = mask.unsqueeze(1)
    if sinks is None:
        if G != H:
            kh, vh = kh.repeat_interleave(H // G, dim=1), vh.repeat_interleave(H // G, dim=1)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=m, scale=scale)
        return out.transpose(1, 2)
    if G != H:
        kh, vh = kh.repeat_interleave(H // G, dim=1), vh.repeat_interleave(H // G, dim=1)
    acc = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    scores = torch.matmul(qh.to(acc), kh.to(acc).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~m, float("-inf"))
    sink = sinks.to(acc).view(1, H, 1, 1).expand(scores.shape[0], H, scores.shape[2], 1)
    logits = torch.cat([scores, sink], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    out = torch.matmul(probs.to(v.dtype), vh)
    return out.transpose(1, 2)


class SinksCoreAttention(nn.Module):
    """Packed document-causal core attention with optional sliding window and sinks.

    Same call as :class:`xt.models.common.core_attention.CoreAttention` plus two keywords::

        forward(q[T, H, Dq], k[T, G, Dq], v[T, G, Dv], cu_seqlens[D+1], max_seqlen,
                sliding_window=None, sinks=None) -> [T, H, Dv]

    Up to 8 documents are attended one by one (an ``[n, n]`` block each), more with one ``[T, T]``
    mask from :func:`document_mask`; scores are materialised, so memory grows with the square of
    the document length: a reference backend for CPU, tests and moderate sequence lengths.

    With sinks given, ``backend="varlen"``, or ``"auto"`` on CUDA with bf16/fp16 q/k/v (float32 ones
    inside a bf16/fp16 autocast region are cast first, as for a matmul), the call goes to
    :func:`xt.models.common.sinks_flash.sinks_attention_lse` on flash attention's varlen kernel
    instead: no score matrix, memory linear in T (GPU check: tests/models_zoo/test_zoo_sinks_flash.py).

    Args:
        softmax_scale: multiplier of ``q k^T``; None means ``Dq ** -0.5``.
        backend: one of ``SINKS_BACKENDS``.

    Raises:
        ValueError: unknown backend.
    """

    def __init__(self, softmax_scale: float | None = None, backend: str = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.softmax_scale = softmax_scale
        self.backend = backend

    def forward(self, q, k, v, cu_seqlens: torch.Tensor, max_seqlen: int, sliding_window: int | None = None,
                sinks: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the packed documents; shapes in the class docstring."""
        scale = self.softmax_scale if self.softmax_scale is not None else q.shape[-1] ** -0.5
        if sinks is not None and self.backend in ("auto", "varlen"):
            from xt.kernels import autocast_inputs
            fq, fk, fv = autocast_inputs(q, k, v)  # attention is a matmul under autocast
            flash = fq.is_cuda and fq.dtype in (torch.bfloat16, torch.float16) and fq.dtype == fk.dtype == fv.dtype
            if flash or self.backend == "varlen":
                from xt.models.common.sinks_flash import sinks_attention_lse
                return sinks_attention_lse(fq, fk, fv, sinks, cu_seqlens, max_seqlen, scale, sliding_window, "varlen")
        bounds = cu_seqlens.tolist()
        if len(bounds) - 1 <= _LOOP_MAX_DOCS:  # one [n, n] block per document: T**2 / D memory
            outs = []
            for s, e in zip(bounds[:-1], bounds[1:]):
                if e > s:
                    idx = torch.arange(e - s, device=q.device)
                    zero = torch.zeros_like(idx)
                    mask = document_mask(zero, idx, zero, idx, sliding_window)
                    outs.append(core_attention(q[None, s:e], k[None, s:e], v[None, s:e], mask[None], scale, sinks)[0])
            return torch.cat(outs) if outs else q.new_zeros(*q.shape[:2], v.shape[-1])
        doc, pos = packed_doc_positions(cu_seqlens, q.shape[0])
        mask = document_mask(doc, pos, doc, pos, sliding_window)
        return core_attention(q[None], k[None], v[None], mask[None], scale, sinks)[0]

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale}, backend={self.backend!r}"


def _check_backend(backend: str) -> None:
    if backend not in SINKS_BACKENDS:
        raise ValueError(f"attn_backend {backend!r} is not available for sinks attention (GPT-OSS); "
                         f"expected one of {SINKS_BACKENDS}")


def set_sinks_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` on every `SinksCoreAttention` of `model` (the registry's ``attn_backend``).

    Raises:
        ValueError: ``backend`` not in ``SINKS_BACKENDS``.
    """
    _check_backend(backend)
    for m in model.modules():
        if isinstance(m, SinksCoreAttention):
            m.backend = backend
    return model
