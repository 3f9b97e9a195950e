"""``torch`` backend of the grouped GEMM: ``torch._grouped_mm`` (CUTLASS on Hopper, CPU kernels too).

``torch._grouped_mm`` takes group *ends* ``offs = cumsum(tokens_per_expert)`` as int32 on the
device, needs 16-byte aligned data pointers and row strides (K, N multiples of 8 in bf16), and
accepts float32/bf16/fp16 on CPU (bf16 on CUDA). Empty groups are allowed. Its k-grouped form
(2-D × 2-D) gives the per-expert weight gradient. On CUDA its blocks for experts with no rows are
written as exact zeros (checked on an H200, torch 2.11, with NaN-filled allocator blocks:
``benchmarks/kernels/check_gpu.py``); elsewhere we zero them explicitly (``torch.where``).
Everything stays on the device: no host synchronisation.
"""
from __future__ import annotations

import torch

__all__ = ["available", "aligned", "mgrouped", "kgrouped"]


def available(x: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` exists and supports ``x``'s dtype on its device."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def aligned(x: torch.Tensor, w: torch.Tensor, trans_b: bool) -> bool:
    """Whether the inner and output sizes K, N are 16-byte multiples (what ``torch._grouped_mm``
    and our Triton kernels need for every product of the forward and backward)."""
    align = 16 // x.element_size()
    k, n = (w.shape[2], w.shape[1]) if trans_b else (w.shape[1], w.shape[2])
    return k % align == 0 and n % align == 0


def _offsets(counts: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cumsum(counts.to(device=device), 0, dtype=torch.int32)


def _check(name: str, x: torch.Tensor) -> None:
    if not available(x):
        raise ValueError(f"grouped_gemm[torch]: torch._grouped_mm does not support {x.dtype} on "
                         f"{x.device.type} (torch {torch.__version__}); use backend 'triton' or 'reference'")
    align = 16 // x.element_size()
    if any(s % align for s in x.shape[-1:]):
        raise ValueError(f"grouped_gemm[torch]: {name} last dimension {x.shape[-1]} must be a multiple of "
                         f"{align} for {x.dtype} (16-byte alignment required by torch._grouped_mm)")


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """``[R, K] x (w[E, K, N] | w[E, N, K]ᵀ) -> [R, N]`` grouped by ``counts[E]``."""
    x, w = x.contiguous(), w.contiguous()
    _check("x", x)
    _check("w", w)
    b = w.transpose(-2, -1) if trans_b else w
    if x.shape[0] == 0:
        return x.new_empty(0, b.shape[-1])
    return torch._grouped_mm(x, b, offs=_offsets(counts, x.device))


def kgrouped(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``c[e] = a[rows of e]ᵀ @ b[rows of e]`` -> ``[E, P, Q]``; exact zeros for empty experts."""
    a, b = a.contiguous(), b.contiguous()
    _check("a", a)
    _check("b", b)
    E = counts.numel()
    if a.shape[0] == 0:
        return a.new_zeros(E, a.shape[1], b.shape[1])
    c = torch._grouped_mm(a.t(), b, offs=_offsets(counts, a.device))
    if c.device.type == "cuda":
        return c
    nonempty = (counts.to(c.device) > 0).view(E, 1, 1)
    return torch.where(nonempty, c, torch.zeros((), dtype=c.dtype, device=c.device))
