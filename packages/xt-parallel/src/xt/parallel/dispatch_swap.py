"""Swapping the MoE blocks' dispatchers for expert-parallel ones (`AllToAllDispatcher`, or with
``parallel.ep_overlap`` the `OverlappedAllToAllDispatcher`), applied by `xt.parallel.api` and
`xt.parallel.single`. Its own module so that `expert_parallel` and `ep_overlap` (which builds on
it) do not import each other."""
from __future__ import annotations

import torch.distributed as dist
from torch import nn

from xt.parallel.ep_overlap import OverlappedAllToAllDispatcher
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.mesh import LayoutError
from xt.parallel.plan import ParallelPlan, resolve

__all__ = ["swap_dispatchers"]


def swap_dispatchers(model: nn.Module, plan: ParallelPlan, ep_group: dist.ProcessGroup | None,
                     capacity_factor: float | None, overlap: bool = False) -> int:
    """Replace the dispatcher of every MoE block of `plan` by an :class:`AllToAllDispatcher`
    over `ep_group` (None: local, for a capacity factor without EP), in place. With `overlap`
    (``parallel.ep_overlap``) an `xt.parallel.ep_overlap.OverlappedAllToAllDispatcher` instead.

    Returns:
        The number of dispatchers replaced.

    Raises:
        ValueError: a dispatcher path of `plan` that is not a submodule of `model`.
        LayoutError: `overlap` with a MoE block that does not let its dispatcher run the experts
            (class attribute ``dispatcher_runs_experts``; e.g. a Hugging Face MoE block).
    """
    for i, block in enumerate(plan.moe_blocks):
        resolve(model, block.dispatcher, f"moe_blocks[{i}].dispatcher")
        if overlap:
            owner = resolve(model, block.block, f"moe_blocks[{i}].block")
            if not getattr(type(owner), "dispatcher_runs_experts", False):
                raise LayoutError(f"parallel.ep_overlap = true: the MoE block {block.block} ({type(owner).__name__}) "
                                  "does not let its dispatcher run the experts (no dispatcher_runs_experts; "
                                  "XT's MoEBlock does: docs/contracts.md, MoE dispatch)")
            new = OverlappedAllToAllDispatcher(plan.num_experts, ep_group)
        else:
            new = AllToAllDispatcher(plan.num_experts, ep_group, capacity_factor)
        model.set_submodule(block.dispatcher, new)
    return len(plan.moe_blocks)
