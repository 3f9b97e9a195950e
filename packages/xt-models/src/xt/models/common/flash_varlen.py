"""Packed document-causal flash attention on aten's varlen ops, in one autograd Function.

Shape legend: T packed tokens, H query heads, G key/value heads (H % G == 0), D head dim.

``torch.ops.aten._flash_attention_forward`` / ``_flash_attention_backward`` (FlashAttention-2, Dao
2023, arXiv:2307.08691, as built into PyTorch) take the packed ``[T, H, D]`` layout with
``cu_seqlens`` directly and handle grouped-query heads natively. They are the kernels
``torch.nn.attention.varlen.varlen_attn`` runs; calling them from our own Function skips that
wrapper's Python custom op and its registered autograd (~0.3 ms of host time per layer and
micro-batch, forward + backward, on an H200 host: ``benchmarks/kernels/bench_attention.py``), which
counts when a step is bound by the host's launch rate. The keyword schema of both ops is the same
in torch 2.11 and 2.13.

``window`` (sliding-window attention, GPT-OSS) keeps ``W - 1`` keys to the left of each query plus
the query itself.
"""
from __future__ import annotations

import torch

__all__ = ["flash_varlen", "flash_varlen_forward", "flash_varlen_backward"]


def _window(window: int | None) -> dict:
    return {"window_size_left": -1 if window is None else window - 1, "window_size_right": 0}


def flash_varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_seqlen: int,
                         scale: float, window: int | None = None):
    """Causal varlen flash forward: ``(out [T, H, D], lse [H, T] float32, aux)``; ``aux`` is what
    `flash_varlen_backward` takes back (the kernel's RNG state and scratch)."""
    out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, max_seqlen, max_seqlen, 0.0, True, False, scale=scale, **_window(window))
    return out, lse, (rng, unused)


def flash_varlen_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          lse: torch.Tensor, cu: torch.Tensor, max_seqlen: int, scale: float, window: int | None,
                          aux) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flash backward for `flash_varlen_forward`'s ``(out, lse, aux)``: ``(dq, dk, dv)``."""
    rng, unused = aux
    return torch.ops.aten._flash_attention_backward(
        dout.contiguous(), q, k, v, out, lse.contiguous(), cu, cu, max_seqlen, max_seqlen, 0.0, True, rng, unused,
        scale=scale, **_window(window))


class _FlashVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu, max_seqlen, scale, window):
        out, lse, aux = flash_varlen_forward(q, k, v, cu, max_seqlen, scale, window)
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.cfg = (max_seqlen, scale, window, aux)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu = ctx.saved_tensors
        max_seqlen, scale, window, aux = ctx.cfg
        dq, dk, dv = flash_varlen_backward(dout, q, k, v, out, lse, cu, max_seqlen, scale, window, aux)
        return dq, dk, dv, None, None, None, None


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                 scale: float, window: int | None = None) -> torch.Tensor:
    """Document-causal attention over packed documents (module docstring), differentiable.

    Args:
        q: ``[T, H, D]``; k, v: ``[T, G, D]``; CUDA, bf16 or fp16, the same dtype.
        cu_seqlens: ``[docs + 1]`` document boundaries (int32 on q's device; converted otherwise).
        max_seqlen: the longest document (host int: no device read).
        scale: softmax scale.
        window: sliding window in keys including the query's own, or None.

    Returns:
        ``[T, H, D]`` in ``q.dtype``.

    Raises:
        RuntimeError: from the kernel, e.g. on CPU tensors or float32 inputs.
    """
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 and cu_seqlens.device == q.device else \
        cu_seqlens.to(device=q.device, dtype=torch.int32)
    return _FlashVarlen.apply(q, k, v, cu, int(max_seqlen), float(scale), window)
