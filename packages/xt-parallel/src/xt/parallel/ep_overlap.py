"""``parallel.ep_overlap``: the EP all-to-all of each MoE layer overlapped with its expert compute.

Shape legend as in :mod:`xt.parallel.expert_parallel` (T local tokens, K top-k, E experts, P =
ep_size, El = E // P, D hidden).

The layer's tokens are cut into two contiguous halves (chunk 0 = the first ``T // 2`` tokens;
either may be empty). Both chunks' counts go in one exchange of ``2E`` integers with one host copy
(still the layer's only host synchronisation), then, forward::

    start dispatch a2a (chunk 0), start dispatch a2a (chunk 1)
    wait 0 -> experts(chunk 0)            # chunk 1's dispatch is in flight
    start combine a2a (chunk 0)
    wait 1 -> experts(chunk 1)            # chunk 0's combine is in flight
    start combine a2a (chunk 1)
    wait combines -> weighted unpermute per chunk -> concatenate

Each exchange is two autograd nodes: `_Start` issues ``all_to_all_single(async_op=True)`` and
returns the (not yet filled) output; `_Wait` waits for it. In backward `_Wait` issues the reverse
exchange of the incoming gradient asynchronously (passing the gradient on unchanged) and `_Start`
waits for it and returns its result, so the wait sits where the gradient is first needed. Autograd runs the ready node created last first, so the backward order is: start the
reverse combine of chunk 1 and of chunk 0, wait 1 -> experts(1) backward (chunk 0's reverse
combine in flight), start chunk 1's reverse dispatch, wait 0 -> experts(0) backward (chunk 1's
reverse dispatch in flight), wait the reverse dispatches. The collectives are issued in the same
order on every rank (the graph is the same), also in an activation-checkpointing recomputation.

Each token row meets the same expert weights as without overlap, so outputs and input gradients
are those of the plain dispatcher; the expert weight gradients are the sum of the two chunks'
GEMMs, a different summation order (equal to ~1e-7 in fp32, not bit for bit:
tests/parallel/test_parallel_ep_overlap.py). The experts module is called once per chunk: under
FSDP2 with the experts sharded (``edp_shard > 1``) and ``reshard_after_forward``, its weights are
all-gathered once per chunk, twice per layer in forward and in backward, a cost to weigh in the
GPU measurement (``benchmarks/multi_gpu/run.py --stages overlap``). Capacity limits are not supported here (they are
per source rank over the whole micro-batch). Reference: the two-micro-batch communication overlap
of DeepSeek-V3's training (arXiv 2412.19437, section 3.2), done here as a two-chunk split of one
micro-batch's routed rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xt.kernels.moe import permute, unpermute
from xt.parallel.expert_parallel import AllToAllDispatcher, regroup_index

__all__ = ["OverlappedAllToAllDispatcher"]


class _Pending:
    """The in-flight work of one exchange (forward, then its backward) and the tensors it uses."""

    work = None
    keep: tuple = ()


def _issue(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group, pending: _Pending) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    pending.work = dist.all_to_all_single(out, x, output_split_sizes=out_splits, input_split_sizes=in_splits,
                                          group=group, async_op=True)
    pending.keep = (x, out)
    return out


def _finish(pending: _Pending) -> None:
    pending.work.wait()
    pending.work, pending.keep = None, ()


class _Start(torch.autograd.Function):
    """Forward: issue the exchange. Backward: wait for the reverse exchange `_Wait` issued."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, pending):
        ctx.pending = pending
        return _issue(x, out_splits, in_splits, group, pending)

    @staticmethod
    def backward(ctx, grad):
        result = ctx.pending.keep[1]  # the reverse exchange's output; `grad` is what it was issued from
        _finish(ctx.pending)
        return result, None, None, None, None


class _Wait(torch.autograd.Function):
    """Forward: wait for the exchange `_Start` issued. Backward: issue the reverse exchange."""

    @staticmethod
    def forward(ctx, out, out_splits, in_splits, group, pending):
        _finish(pending)
        ctx.splits, ctx.group, ctx.pending = (out_splits, in_splits), group, pending
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        _issue(grad, in_splits, out_splits, ctx.group, ctx.pending)  # `_Start`'s backward waits for it
        return grad, None, None, None, None


def _start(x, out_splits, in_splits, group):
    pending = _Pending()
    return _Start.apply(x, out_splits, in_splits, group, pending), (out_splits, in_splits, group, pending)


def _wait(started):
    out, (out_splits, in_splits, group, pending) = started
    return _Wait.apply(out, out_splits, in_splits, group, pending)


class OverlappedAllToAllDispatcher(AllToAllDispatcher):
    """An :class:`AllToAllDispatcher` that also runs the experts, over two chunks whose all-to-alls
    overlap the other chunk's expert compute (module docstring). A MoE block whose class has
    ``dispatcher_runs_experts = True`` calls ``run_experts(x, topk_ids, topk_weights, experts)``
    instead of dispatch -> experts -> combine (docs/contracts.md, MoE dispatch).

    Args:
        num_experts: E (global).
        ep_group: the expert-parallel process group (more than one rank).

    Raises:
        ValueError: ``num_experts`` not divisible by the group size, or a group of one rank.
    """

    def __init__(self, num_experts: int, ep_group: dist.ProcessGroup) -> None:
        super().__init__(num_experts, ep_group, None)
        if self.ep_size < 2:
            raise ValueError("OverlappedAllToAllDispatcher needs an expert-parallel group of at least 2 ranks")

    def run_experts(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    experts: nn.Module) -> torch.Tensor:
        """``x[T, D], topk_ids[T, K] int64, topk_weights[T, K] fp32 -> y[T, D]`` (weighted sum in fp32,
        cast to the experts' output dtype); `experts(x_local[R', D], tokens_per_local_expert[El])`."""
        E, P, El, group = self.num_experts, self.ep_size, self.num_local_experts, self.ep_group
        T = x.shape[0]
        bounds = (0, T // 2, T)
        chunks = [(x[a:b], topk_weights[a:b], *permute(x[a:b], topk_ids[a:b], E)) for a, b in zip(bounds, bounds[1:])]
        send = torch.cat([c[3].tokens_per_expert.view(P, 1, El) for c in chunks], 1)  # [P, 2, El] by destination
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        host = torch.cat([send.sum(2).t().reshape(-1), recv.sum(2).t().reshape(-1)]).tolist()  # the host sync
        send_splits = [host[0:P], host[P:2 * P]]
        recv_splits = [host[2 * P:3 * P], host[3 * P:4 * P]]
        started = [_start(c[2], recv_splits[i], send_splits[i], group) for i, c in enumerate(chunks)]
        combines = []
        for i in range(2):
            counts = recv[:, i, :]  # [P, El]: rows from each source rank for each local expert
            index = regroup_index(counts, sum(recv_splits[i])) if El > 1 else None
            x_local = _wait(started[i])
            if index is not None:
                x_local = x_local.index_select(0, index)
            y = experts(x_local, counts.sum(0))
            if index is not None:
                y = torch.zeros_like(y).index_copy(0, index, y)
            combines.append(_start(y, send_splits[i], recv_splits[i], group))
        outs = [unpermute(_wait(started).contiguous(), c[3], c[1]) for started, c in zip(combines, chunks)]
        return torch.cat(outs, 0)
