"""Triton backend of permute / unpermute (gather-based, deterministic: no atomics).

Shape legend: T tokens, K top-k, R = T*K slots/rows, D hidden size.

* permute forward: ``x_sorted[i] = x[sorted_row_ids[i] // K]`` (row gather);
  backward: ``dx[t] = sum_k dx_sorted[row_of_slot[t*K + k]]`` (the combine kernel, unit weights).
* unpermute forward: ``out[t] = sum_k w[t, k] * y[row_of_slot[t*K + k]]`` in float32;
  backward: ``dy[i] = w[s] * dout[s // K]`` with ``s = sorted_row_ids[i]`` (gather with scale) and
  ``dw[t, k] = <dout[t], y[row_of_slot[t*K + k]]>`` (row dot products, float32).

Index bookkeeping is :func:`xt.kernels.moe.permute_index.routing_indices` (shared with the reference).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from xt.kernels.moe.permute_index import PermuteInfo, check_permute_inputs, routing_indices

__all__ = ["permute", "unpermute"]

_BLOCK_D = 1024


@triton.jit
def _gather_kernel(src_ptr, idx_ptr, scale_ptr, out_ptr, D, DIV: tl.constexpr, HAS_SCALE: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(idx_ptr + row).to(tl.int64)
    src_row = slot // DIV
    if HAS_SCALE:
        scale = tl.load(scale_ptr + slot).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        v = tl.load(src_ptr + src_row * D + offs, mask=m, other=0.0)
        if HAS_SCALE:
            v = v.to(tl.float32) * scale
        tl.store(out_ptr + row * D + offs, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _combine_kernel(y_ptr, rows_ptr, w_ptr, out_ptr, D, K: tl.constexpr, HAS_W: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for k in tl.static_range(K):
            r = tl.load(rows_ptr + t * K + k).to(tl.int64)
            v = tl.load(y_ptr + r * D + offs, mask=m, other=0.0).to(tl.float32)
            if HAS_W:
                v = v * tl.load(w_ptr + t * K + k).to(tl.float32)
            acc += v
        tl.store(out_ptr + t * D + offs, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _wgrad_kernel(dout_ptr, y_ptr, rows_ptr, dw_ptr, D, K: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    t = s // K
    r = tl.load(rows_ptr + s).to(tl.int64)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + tl.arange(0, BLOCK_D)
        m = offs < D
        g = tl.load(dout_ptr + t * D + offs, mask=m, other=0.0).to(tl.float32)
        v = tl.load(y_ptr + r * D + offs, mask=m, other=0.0).to(tl.float32)
        acc += g * v
    tl.store(dw_ptr + s, tl.sum(acc, 0).to(dw_ptr.dtype.element_ty))


def _block(D: int) -> int:
    return min(_BLOCK_D, triton.next_power_of_2(max(D, 16)))


def _gather(src: torch.Tensor, idx: torch.Tensor, div: int, scale: torch.Tensor | None,
            out_dtype: torch.dtype) -> torch.Tensor:
    src = src.contiguous()
    out = torch.empty(idx.numel(), src.shape[1], dtype=out_dtype, device=src.device)
    if idx.numel() and src.shape[1]:
        _gather_kernel[(idx.numel(),)](src, idx, scale if scale is not None else src, out, src.shape[1],
                                       DIV=div, HAS_SCALE=scale is not None, BLOCK_D=_block(src.shape[1]))
    return out


def _combine(y: torch.Tensor, rows: torch.Tensor, w: torch.Tensor | None, T: int, K: int) -> torch.Tensor:
    y = y.contiguous()
    out = torch.empty(T, y.shape[1], dtype=y.dtype, device=y.device)
    if T and y.shape[1]:
        _combine_kernel[(T,)](y, rows, w.contiguous() if w is not None else y, out, y.shape[1], K=K,
                              HAS_W=w is not None, BLOCK_D=_block(y.shape[1]))
    elif T:
        out.zero_()
    return out


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sorted_row_ids, row_of_slot, K):
        ctx.save_for_backward(row_of_slot)
        ctx.K, ctx.T = K, x.shape[0]
        return _gather(x, sorted_row_ids, K, None, x.dtype)

    @staticmethod
    def backward(ctx, dx_sorted):
        (row_of_slot,) = ctx.saved_tensors
        return _combine(dx_sorted, row_of_slot, None, ctx.T, ctx.K), None, None, None


class _Unpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_sorted, topk_weights, sorted_row_ids, row_of_slot, K):
        w = topk_weights.contiguous()
        ctx.save_for_backward(y_sorted, w, sorted_row_ids, row_of_slot)
        ctx.K = K
        return _combine(y_sorted, row_of_slot, w, w.shape[0], K)

    @staticmethod
    def backward(ctx, dout):
        y_sorted, w, sorted_row_ids, row_of_slot = ctx.saved_tensors
        dout = dout.contiguous()
        dy = dw = None
        if ctx.needs_input_grad[0]:
            dy = _gather(dout, sorted_row_ids, ctx.K, w.view(-1), y_sorted.dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.empty(w.numel(), dtype=w.dtype, device=w.device)
            if w.numel() and y_sorted.shape[1]:
                _wgrad_kernel[(w.numel(),)](dout, y_sorted.contiguous(), row_of_slot, dw, y_sorted.shape[1],
                                            K=ctx.K, BLOCK_D=_block(y_sorted.shape[1]))
            else:
                dw.zero_()
            dw = dw.view_as(w)
        return dy, dw, None, None, None


def permute(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, PermuteInfo]:
    """Triton :func:`xt.kernels.moe.permute.permute` (same contract)."""
    check_permute_inputs(x, topk_ids)
    info = routing_indices(topk_ids, num_experts)
    return _Permute.apply(x, info.sorted_row_ids, info.row_of_slot, info.top_k), info


def unpermute(y_sorted: torch.Tensor, info: PermuteInfo, topk_weights: torch.Tensor) -> torch.Tensor:
    """Triton :func:`xt.kernels.moe.permute.unpermute` (same contract)."""
    T, K = info.num_tokens, info.top_k
    if y_sorted.dim() != 2 or y_sorted.shape[0] != T * K or tuple(topk_weights.shape) != (T, K):
        raise ValueError(f"unpermute: expected y_sorted [{T * K}, D] and topk_weights [{T}, {K}]; got "
                         f"{tuple(y_sorted.shape)} and {tuple(topk_weights.shape)}")
    rows = info.row_of_slot
    if rows is None:
        rows = torch.empty_like(info.sorted_row_ids)
        rows[info.sorted_row_ids] = torch.arange(T * K, device=rows.device)
    return _Unpermute.apply(y_sorted, topk_weights, info.sorted_row_ids, rows, K)
