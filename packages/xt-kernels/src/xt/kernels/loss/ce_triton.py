"""Triton step of the fused linear cross-entropy: one chunk of logits -> row losses and gradient.

Shape legend: C rows of the chunk, V vocabulary size.

One program per row makes two passes over the row's logits: an online log-sum-exp (running max
and rescaled sum, Milakov & Gimelshein 2018, arXiv:1805.02867), then a pass that overwrites the
logits in place with the gradient ``scale · valid · (softmax · (1 + 2·z_coef·lse) − onehot)``.
The target logit is read between the passes. All arithmetic is float32 (interpreter-safe).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["ce_step"]


@triton.jit
def _ce_row_kernel(logits_ptr, stride, labels_ptr, loss_ptr, z_ptr, scale_ptr, V, ignore_index, z_coef,
                   BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    label = tl.load(labels_ptr + row)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    valid = label != ignore_index
    safe = tl.where(valid, label, 0)
    tgt = tl.load(base + safe).to(tl.float32)
    vf = valid.to(tl.float32)
    tl.store(loss_ptr + row, (lse - tgt) * vf)
    tl.store(z_ptr + row, lse * lse * vf)
    coef = tl.load(scale_ptr).to(tl.float32) * vf
    zf = 1.0 + 2.0 * z_coef * lse
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) * zf
        g = tl.where(offs == safe, g - 1.0, g) * coef
        tl.store(base + offs, g.to(logits_ptr.dtype.element_ty), mask=mask)


def ce_step(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, z_coef: float,
            scale: torch.Tensor):
    """Row losses ``[C]`` and z terms ``[C]`` (float32) and the logits gradient (in place, logits dtype).

    Args:
        logits: ``[C, V]`` row-major chunk (bf16/fp16/fp32); overwritten with the gradient.
        labels: ``[C]`` int64.
        ignore_index: label to skip (zero loss, zero gradient).
        z_coef: z-loss coefficient.
        scale: 0-d float tensor multiplied into the gradient (1/denominator).
    """
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    C, V = logits.shape
    loss = torch.empty(C, dtype=torch.float32, device=logits.device)
    z = torch.empty(C, dtype=torch.float32, device=logits.device)
    if C:
        _ce_row_kernel[(C,)](logits, logits.stride(0), labels.contiguous(), loss, z, scale, V, ignore_index,
                             float(z_coef), BLOCK_V=min(4096, triton.next_power_of_2(V)), num_warps=8)
    return loss, z, logits
