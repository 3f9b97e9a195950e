"""Dropless expert parallelism: an all-to-all MoE dispatcher with the local dispatcher's interface.

Shape legend: T local tokens, K top-k, R = T*K routed rows, E experts, P = ep_size ranks,
El = E // P local experts (rank p owns experts ``[p*El, (p+1)*El)``), D hidden size,
R' rows received by this rank (sum over source ranks of their rows for its experts).

Flow (forward; autograd reverses every step):
  1. local `permute`: rows sorted by global expert id, ``tokens_per_expert[E]``;
  2. optional capacity: keep the first ``cap`` rows of each expert (per source rank);
  3. exchange counts with one ``all_to_all_single`` of E integers, then one host copy of the
     split sizes (the only host synchronisation);
  4. a differentiable ``all_to_all_single`` (:mod:`xt.parallel.comm`) sends each row to its expert's rank;
  5. re-group the received ``[source rank, local expert]`` blocks expert-major for the grouped GEMM;
  6. ``combine`` undoes 5, 4, 2 and finishes with the fp32 weighted `unpermute`.
Reference: the dispatch/combine design of DeepSpeed-MoE / Megatron-Core's ``MoEAlltoAllTokenDispatcher``
(written here from the algorithm, not copied).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from xt.kernels.moe import PermuteInfo, permute, unpermute
from xt.parallel.comm import all_to_all

__all__ = ["AllToAllDispatcher", "DispatchContext", "block_gather_index", "capacity_metrics", "regroup_index"]

log = logging.getLogger(__name__)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def block_gather_index(src_starts: torch.Tensor, sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Row index that concatenates blocks ``[src_starts[b], src_starts[b] + sizes[b])`` in order b = 0..B-1.

    Args:
        src_starts: ``[B]`` int64 first row of each block in the source.
        sizes: ``[B]`` int64 block sizes (zeros allowed).
        total: ``sizes.sum()`` as a host int (avoids a device sync).

    Returns:
        ``[total]`` int64 on the device of `sizes`.
    """
    block = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes, output_size=total)
    offset_in_block = torch.arange(total, device=sizes.device) - _exclusive_cumsum(sizes)[block]
    return src_starts[block] + offset_in_block


def regroup_index(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Row index that turns received ``[source rank, local expert]`` blocks expert-major.

    Args:
        counts: ``[P, El]`` int64 rows received from each source rank for each local expert.
        total: ``counts.sum()`` as a host int.

    Returns:
        ``[total]`` int64: expert-major row i is received row ``index[i]``.
    """
    P, El = counts.shape
    starts = _exclusive_cumsum(counts.reshape(-1)).view(P, El)
    return block_gather_index(starts.t().reshape(-1), counts.t().reshape(-1), total)


def _in_backward() -> bool:
    """True while autograd runs a backward (e.g. an activation-checkpointing recomputation)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


@dataclass
class DispatchContext:
    """What `combine` needs. Row counts are host ints (already synchronised)."""

    info: PermuteInfo
    topk_weights: torch.Tensor
    keep_index: torch.Tensor | None  # [R_kept] rows of x_sorted sent (None = all)
    send_splits: list[int]
    recv_splits: list[int]
    regroup_index: torch.Tensor | None  # [R'] received row feeding each expert-major row
    num_rows: int  # R


class AllToAllDispatcher(nn.Module):
    """MoE dispatcher over an expert-parallel group (``moe.dispatcher`` in docs/contracts.md).

    ``dispatch(x[T, D], topk_ids[T, K], topk_weights[T, K] fp32) -> (x_local[R', D],
    tokens_per_local_expert[El] int64, ctx)`` and ``combine(y_local[R', D], ctx) -> y[T, D]`` (weighted
    sum in fp32, cast to ``y_local.dtype``). With ``ep_group=None`` (or a group of one rank) it acts
    locally, which is how `capacity_factor` is applied without EP.

    Args:
        num_experts: E (global).
        ep_group: process group of the ``ep`` mesh dimension, or None.
        capacity_factor: None = dropless. Otherwise each expert accepts at most
            ``ceil(capacity_factor * T * K / E)`` rows from each source rank; the rest are dropped
            (their expert output is zero), logged as a warning and counted in `dropped_rows`.

    Raises:
        ValueError: ``num_experts`` not divisible by the group size.
    """

    def __init__(self, num_experts: int, ep_group: dist.ProcessGroup | None = None,
                 capacity_factor: float | None = None) -> None:
        super().__init__()
        self.ep_group = ep_group
        self.ep_size = dist.get_world_size(ep_group) if ep_group is not None else 1
        self.ep_rank = dist.get_rank(ep_group) if ep_group is not None else 0
        if num_experts % self.ep_size:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by ep_size ({self.ep_size})")
        self.num_experts = num_experts
        self.num_local_experts = num_experts // self.ep_size
        self.capacity_factor = capacity_factor
        self.dropped_rows = 0  # cumulative routed rows dropped by the capacity limit (host int)
        self.last_dropped_rows = 0

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, ep_size={self.ep_size}, ep_rank={self.ep_rank}, "
                f"capacity_factor={self.capacity_factor}")

    def dispatch(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor):
        """Send every routed row to the rank owning its expert; see the class docstring for shapes."""
        E, P, El = self.num_experts, self.ep_size, self.num_local_experts
        x_sorted, info = permute(x, topk_ids, E)
        counts = info.tokens_per_expert
        R = x_sorted.shape[0]
        dropped_dev = None
        if self.capacity_factor is not None:
            cap = max(1, math.ceil(self.capacity_factor * R / E))
            kept = counts.clamp(max=cap)
            dropped_dev = (counts - kept).sum().view(1)
        else:
            kept = counts
            if P == 1:  # local and dropless: no synchronisation at all
                return x_sorted, counts, DispatchContext(info, topk_weights, None, [R], [R], None, R)
        if P > 1:
            recv_counts = torch.empty_like(kept)
            dist.all_to_all_single(recv_counts, kept, group=self.ep_group)
            host_parts = [kept.view(P, El).sum(1), recv_counts.view(P, El).sum(1), kept]
        else:
            recv_counts = kept
            host_parts = [kept.sum().view(1), kept.sum().view(1), kept]
        if dropped_dev is not None:
            host_parts.append(dropped_dev)
        host = torch.cat(host_parts).tolist()  # the one host synchronisation
        send_splits, recv_splits = host[:P], host[P:2 * P]
        kept_host = host[2 * P:2 * P + E]
        keep_index = None
        if dropped_dev is not None:
            dropped = int(host[-1])
            if not _in_backward():  # not an activation-checkpointing recomputation: count once
                self.last_dropped_rows = dropped
                self.dropped_rows += dropped
                if dropped:
                    log.warning("MoE capacity_factor=%s dropped %d of %d routed rows on this rank (total so far %d)",
                                self.capacity_factor, dropped, R, self.dropped_rows)
            if dropped:
                keep_index = block_gather_index(_exclusive_cumsum(counts), kept, sum(kept_host))
                x_sorted = x_sorted.index_select(0, keep_index)
        regroup = None
        if P > 1:
            x_recv = all_to_all(x_sorted.contiguous(), recv_splits, send_splits, self.ep_group)
            c = recv_counts.view(P, El)
            tokens_per_local_expert = c.sum(0)
            if El > 1:
                regroup = regroup_index(c, sum(recv_splits))
                x_local = x_recv.index_select(0, regroup)
            else:
                x_local = x_recv
        else:
            tokens_per_local_expert = kept
            x_local = x_sorted
        ctx = DispatchContext(info, topk_weights, keep_index, send_splits, recv_splits, regroup, R)
        return x_local, tokens_per_local_expert, ctx

    def combine(self, y_local: torch.Tensor, ctx: DispatchContext) -> torch.Tensor:
        """Return expert outputs to their source ranks and take the weighted sum over top-k (fp32)."""
        y = y_local
        if self.ep_size > 1:
            if ctx.regroup_index is not None:
                y = torch.zeros_like(y).index_copy(0, ctx.regroup_index, y)
            y = all_to_all(y.contiguous(), ctx.send_splits, ctx.recv_splits, self.ep_group)
        if ctx.keep_index is not None:
            y = y.new_zeros(ctx.num_rows, y.shape[-1]).index_copy(0, ctx.keep_index, y)
        return unpermute(y.contiguous(), ctx.info, ctx.topk_weights)


def capacity_metrics(model: nn.Module) -> dict[str, int]:
    """Capacity-drop counters summed over every :class:`AllToAllDispatcher` in `model` (this rank).

    Returns:
        ``{"moe_dropped_rows": cumulative dropped routed rows, "moe_dropped_rows_last": rows
        dropped in the latest forward of each layer, summed}``; zeros when dropless. Sum over ranks
        with ``dist_ctx.all_reduce_sum`` for a global count.
    """
    total = last = 0
    for m in model.modules():
        if isinstance(m, AllToAllDispatcher):
            total += m.dropped_rows
            last += m.last_dropped_rows
    return {"moe_dropped_rows": total, "moe_dropped_rows_last": last}
