"""The engine's view of distributed training: a small protocol and its single-process default.

The engine never calls `torch.distributed` for collectives itself; it goes through a
`DistContext`. `xt.parallel` implements the real one (process groups, FSDP2, expert/sequence
parallel); `LocalDistContext` is the single-process default.

Gradient convention: the engine divides each rank's summed token loss by the GLOBAL number of
label tokens (all-reduced through `all_reduce_sum`), so the correct gradient is the SUM of the
ranks' gradients. An implementation must therefore sum (not average) gradients across
data-parallel ranks (for FSDP2: ``module.set_gradient_divide_factor(1.0)``, or equivalent).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["DistContext", "LocalDistContext"]


@runtime_checkable
class DistContext(Protocol):
    """What the engine needs from a parallel layout.

    Attributes:
        rank: this process's global rank (0-based).
        world_size: number of ranks that each hold distinct tokens of the global batch (the
            data-parallel group, counting sequence-parallel shards as separate when each holds
            distinct label tokens). `all_reduce_sum` reduces over exactly these.
        is_main: True on the one rank that writes logs, metrics and rank-0 checkpoint files.
    """

    rank: int
    world_size: int
    is_main: bool

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` (any shape/dtype, on the model's device) over ranks, in place; return it."""
        ...

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the global gradient L2 norm to `max_norm` (``inf`` = measure only).

        Returns:
            The total L2 norm over all ranks' gradients before clipping, a scalar fp32 tensor
            (a plain, not sharded, tensor).
        """
        ...

    def set_grad_sync(self, model: nn.Module, enabled: bool) -> None:
        """Enable/disable gradient reduction across ranks for the next backward.

        The engine disables it for all but the last micro-batch of a step (accumulation).
        """
        ...

    def barrier(self) -> None:
        """Wait for all ranks (used around checkpoint saving)."""
        ...


class LocalDistContext:
    """Single-process `DistContext`: rank 0 of 1; reductions are identities."""

    rank = 0
    world_size = 1
    is_main = True

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Return `t` unchanged (sum over one rank)."""
        return t

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` (L2, total over all parameters); returns fp32 norm.

        ``max_norm = inf`` only measures (``torch.nn.utils.get_total_norm``, the same norm): torch's
        clip would still multiply every gradient by 1.0, a read and write of all of them.
        """
        params = list(params)
        if math.isinf(max_norm):
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], norm_type=2.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0)
        return norm.float()

    def set_grad_sync(self, model: nn.Module, enabled: bool) -> None:
        """Nothing to synchronise in one process."""

    def barrier(self) -> None:
        """Nothing to wait for in one process."""
