"""Triton row steps of the per-token LM-head statistics (:mod:`xt.kernels.loss.per_token`).

Shape legend: C rows of the chunk, V vocabulary size.

One program per row. The forward makes one pass over the row's logits ``y = x / τ`` keeping a
running max ``m``, ``S = Σ exp(y − m)`` and ``U = Σ exp(y − m)·(y − m)``, both rescaled when the
max grows (``U ← e^{m−m'}·(U + (m − m')·S)``; the online softmax of Milakov & Gimelshein 2018,
arXiv:1805.02867, extended by the entropy term), and writes ``logp = y[label] − lse``,
``H = log S − U/S`` and ``lse = m + log S``. The backward overwrites the logits in place with
``(1/τ)·(a·onehot + p·(b + c·(y − lse)))``. All arithmetic is float32 (interpreter-safe).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["stats_step", "grad_step"]


@triton.jit
def _stats_row_kernel(logits_ptr, stride, labels_ptr, logp_ptr, ent_ptr, lse_ptr, V, ignore_index, inv_temp,
                      WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), dtype=tl.float32)
    u = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        y = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(y, 0))
        alpha = tl.exp(m - m_new)
        e = tl.exp(y - m_new)
        if WITH_ENTROPY:
            # Before the first block m is −inf (s = u = 0); masked lanes have y = −inf, e = 0.
            shift = tl.where(s > 0, m - m_new, 0.0)
            u = alpha * (u + shift * s) + tl.sum(e * tl.where(mask, y - m_new, 0.0), 0)
        s = s * alpha + tl.sum(e, 0)
        m = m_new
    log_s = tl.log(s)
    lse = m + log_s
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    tgt = tl.load(base + tl.where(valid, label, 0)).to(tl.float32) * inv_temp
    vf = valid.to(tl.float32)
    tl.store(logp_ptr + row, (tgt - lse) * vf)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, (log_s - u / s) * vf)


@triton.jit
def _grad_row_kernel(logits_ptr, stride, labels_ptr, lse_ptr, a_ptr, b_ptr, c_ptr, V, ignore_index, inv_temp,
                     WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    label = tl.load(labels_ptr + row)
    safe = tl.where(label != ignore_index, label, 0)
    lse = tl.load(lse_ptr + row)
    a = tl.load(a_ptr + row)
    b = tl.load(b_ptr + row)
    c = tl.zeros((), dtype=tl.float32)
    if WITH_ENTROPY:
        c = tl.load(c_ptr + row)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        ym = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32) * inv_temp - lse
        g = tl.exp(ym) * (b + c * ym)
        g = tl.where(offs == safe, g + a, g) * inv_temp
        tl.store(base + offs, g.to(logits_ptr.dtype.element_ty), mask=mask)


MAX_BLOCK_V = 4096  # vocabulary columns per loop step; tests lower it to exercise the online rescaling


def _block_v(V: int) -> int:
    return min(MAX_BLOCK_V, triton.next_power_of_2(V))


def _rows(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.stride(1) == 1 else logits.contiguous()


def stats_step(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float,
               with_entropy: bool):
    """Rows' ``(logp [C], entropy [C] or None, lse [C])``, float32; logp and entropy are zero on
    ignored rows, lse is every row's (the backward needs it finite there too).

    Args:
        logits: ``[C, V]`` chunk (bf16/fp16/fp32), read only.
        labels: ``[C]`` int64.
        ignore_index: label of rows without output.
        inv_temp: ``1 / temperature``.
        with_entropy: also compute the entropy.
    """
    logits = _rows(logits)
    C, V = logits.shape
    logp = torch.empty(C, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if with_entropy else logp
    if C:
        _stats_row_kernel[(C,)](logits, logits.stride(0), labels.contiguous(), logp, ent, lse, V, ignore_index,
                                float(inv_temp), WITH_ENTROPY=bool(with_entropy), BLOCK_V=_block_v(V), num_warps=8)
    return logp, (ent if with_entropy else None), lse


def grad_step(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float,
              lse: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The logits gradient of one chunk, written over ``logits`` (returned, logits dtype).

    Args:
        logits: ``[C, V]`` chunk (bf16/fp16/fp32); overwritten.
        labels: ``[C]`` int64.
        ignore_index: label of rows without gradient (their ``a, b, c`` are already zero).
        inv_temp: ``1 / temperature``.
        lse: ``[C]`` row log-sum-exp of ``logits · inv_temp`` (every row's, as ``stats_step`` gives it).
        a, b, c: ``[C]`` row coefficients (``c`` None: no entropy term), see ``per_token``.
    """
    logits = _rows(logits)
    C, V = logits.shape
    if C:
        f32 = [t.float().contiguous() for t in (lse, a, b)]
        cf = c.float().contiguous() if c is not None else f32[0]
        _grad_row_kernel[(C,)](logits, logits.stride(0), labels.contiguous(), *f32, cf, V, ignore_index,
                               float(inv_temp), WITH_ENTROPY=c is not None, BLOCK_V=_block_v(V), num_warps=8)
    return logits
