"""Differentiable ``all_to_all_single`` (synchronous; the backward is the reverse exchange).

Used by the expert-parallel dispatcher and by Ulysses. A plain autograd Function around
``torch.distributed.all_to_all_single`` keeps the result an ordinary tensor (no lazily-waited
async tensor), which stays correct under activation-checkpointing recomputation.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_to_all"]


def _exchange(x: torch.Tensor, out_splits: list[int] | None, in_splits: list[int] | None, group) -> torch.Tensor:
    x = x.contiguous()
    if out_splits is None:
        out = torch.empty_like(x)
    else:
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x, output_split_sizes=out_splits, input_split_sizes=in_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        return _exchange(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, ctx.in_splits, ctx.out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int] | None, in_splits: list[int] | None, group) -> torch.Tensor:
    """Send rows ``x[sum(in_splits[:j]) : ... + in_splits[j]]`` to rank j of `group`; receive
    ``out_splits[j]`` rows from rank j (concatenated in rank order). ``None`` splits = equal chunks.

    Args:
        x: ``[R, ...]`` tensor (any dtype); rows are dim 0.
        out_splits / in_splits: host lists of ``group`` size, or None.
        group: process group.

    Returns:
        ``[sum(out_splits), ...]`` (or ``x.shape`` for equal splits); differentiable w.r.t. `x`.
    """
    return _AllToAll.apply(x, out_splits, in_splits, group)
