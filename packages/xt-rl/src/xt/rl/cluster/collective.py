"""Weight sync over torch.distributed (``orchestrator.weight_sync = "collective"``): the trainer's
rank 0 broadcasts HF-named buckets to every rollout actor.

The trainer's rank 0 and the R rollout actors form one process group of their own, apart from the
trainer's default group (FSDP2 / EP), made from a TCP store that the driver hosts and whose address
it passes (`WeightGroup`: gloo on the CPU, NCCL on CUDA; group rank 0 = the trainer). Per sync:

1. the bucket plan (`bucket_plan`: ``[[(hf_name, shape, dtype)]]``, `xt.models.iter_hf_buckets` on
   meta tensors of the trainer's state layout, so it is the grouping the trainer streams) goes to
   the rollout actors once, through Ray;
2. the trainer streams its weights (`xt.models.iter_hf_buckets`, over
   `xt.parallel.full_state.FullState` when laid out: every trainer rank gathers, rank 0 sends) and
   broadcasts each bucket flattened into one byte buffer (`broadcast_weights`);
3. each rollout actor receives the buffer of each planned bucket, cuts it back into tensors by the
   plan and copies them by HF name into its model (`receive_weights`); every tensor must arrive.

One bucket buffer is alive at a time on each side. A group whose member died cannot be repaired:
a member whose broadcast fails closes its end (`WeightGroup.close`), so the others blocked in the
same broadcast fail at once too, and the driver builds a new group (a new store prefix) with every
member once the dead one is back, then broadcasts again (`xt.rl.cluster.rollout_proxy`).
"""
from __future__ import annotations

import datetime
import gc
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from xt.models import iter_hf_buckets
from xt.rl.cluster.weights import check_arrived, copy_bucket, hf_targets

__all__ = ["WeightGroup", "bucket_plan", "broadcast_weights", "receive_weights", "BucketPlan"]

#: ``[[(hf_name, shape, dtype), ...], ...]``: the buckets of one weight sync, in order
BucketPlan = list[list[tuple[str, tuple[int, ...], torch.dtype]]]


class WeightGroup:
    """One member of a weight-sync process group (module docstring).

    Args:
        address: ``"HOST:PORT"`` of the TCP store the driver hosts.
        prefix: the group's name in the store (a new one for each rebuilt group).
        rank: this member's rank (0 = the trainer's rank 0, 1..R the rollout actors).
        world: 1 + R.
        device: CUDA -> an NCCL group with buffers on this device; else gloo on the CPU.
        timeout_s: how long a collective waits for the others.

    Raises:
        ValueError: an address that is not ``HOST:PORT``.
        RuntimeError / torch.distributed.DistStoreError: the store or a member cannot be reached in time.
    """

    def __init__(self, address: str, prefix: str, rank: int, world: int, device: torch.device,
                 timeout_s: float = 600.0) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"WeightGroup: address must be HOST:PORT, got {address!r}")
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.PrefixStore(prefix, dist.TCPStore(host, int(port), is_master=False, timeout=timeout))
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        if self.device.type == "cuda":
            self.pg: Any = dist.ProcessGroupNCCL(store, rank, world, dist.ProcessGroupNCCL.Options())
        else:
            self.device = torch.device("cpu")
            self.pg = dist.ProcessGroupGloo(store, rank, world, timeout)

    def close(self) -> None:
        """Leave the group: drop this member's process group, which closes its connections, so
        members blocked in a broadcast with it fail at once instead of waiting for the timeout.
        The group cannot be used afterwards (a new one is built with every member)."""
        pg, self.pg = self.pg, None
        if pg is not None and hasattr(pg, "abort"):
            pg.abort()
        del pg
        gc.collect()

    def broadcast(self, buffer: torch.Tensor) -> None:
        """Broadcast `buffer` (on ``self.device``) from group rank 0 to every member, in place.

        Raises:
            RuntimeError: the group was closed, or a member left or died during the broadcast.
        """
        if self.pg is None:
            raise RuntimeError("weight sync: this weight-sync group was closed")
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([buffer], opts).wait()


def bucket_plan(model: nn.Module, max_bytes: int, layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]]
                ) -> BucketPlan:
    """The HF buckets `iter_hf_buckets(model, max_bytes, state)` yields for a state of `layout`
    (``[(xt_name, shape, dtype)]``: ``FullState.layout`` or a plain state dict's), computed on meta
    tensors (nothing read)."""
    meta = ((n, torch.empty(s, dtype=d, device="meta")) for n, s, d in layout)
    return [[(k, tuple(t.shape), t.dtype) for k, t in b] for b in iter_hf_buckets(model, max_bytes, meta)]


def _bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def broadcast_weights(group: WeightGroup | None, model: nn.Module, max_bytes: int, plan: BucketPlan,
                      tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> int:
    """Stream `model`'s weights in HF-named buckets and, when `group` is given (the trainer's rank
    0), broadcast each bucket as one byte buffer; returns the bytes sent. Other trainer ranks of a
    laid-out model call it with ``group = None`` and the same `tensors` (a `FullState`) to take part
    in its gathers.

    Raises:
        RuntimeError: a bucket differs from `plan` (the receivers would cut it wrongly), or a
            broadcast failed (a receiver died or left): then the group is closed
            (`WeightGroup.close`), and the streaming still runs to its end so that the other
            trainer ranks' gathers complete.
    """
    sent, failure = 0, None
    buckets = iter_hf_buckets(model, max_bytes, tensors)
    for i, bucket in enumerate(buckets):
        if group is None or failure is not None:
            continue
        if i >= len(plan) or [k for k, _ in bucket] != [k for k, _, _ in plan[i]]:
            raise RuntimeError(f"weight sync: bucket {i} differs from the plan the rollout actors received")
        flat = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8).to(group.device) for _, t in bucket])
        try:
            group.broadcast(flat)
        except RuntimeError as e:
            failure = e
            group.close()
            continue
        sent += flat.numel()
    if failure is not None:
        raise RuntimeError(f"weight sync: the broadcast of the weights failed: {failure}") from failure
    return sent


def receive_weights(group: WeightGroup, model: nn.Module, plan: BucketPlan) -> int:
    """Receive every bucket of `plan` from group rank 0 and copy its tensors by HF name into the
    plain `model` (`xt.rl.cluster.weights.hf_targets`); returns the bytes received.

    Raises:
        KeyError: the plan names a tensor the model lacks, or a model tensor is in no bucket.
        RuntimeError: a shape that differs (from ``copy_``), or a broadcast failed (the sender or
            another member died or left; the caller closes the group).
    """
    targets = hf_targets(model)
    seen: set[str] = set()
    got = 0
    for bucket in plan:
        flat = torch.empty(sum(_bytes(s, d) for _, s, d in bucket), dtype=torch.uint8, device=group.device)
        group.broadcast(flat)
        pieces, at = [], 0
        for name, shape, dtype in bucket:
            n = _bytes(shape, dtype)
            piece = flat[at:at + n] if at % dtype.itemsize == 0 else flat[at:at + n].clone()  # aligned for view
            pieces.append((name, piece.view(dtype).view(shape)))
            at += n
        got += copy_bucket(targets, pieces, seen)
    check_arrived(targets, seen)
    return got
