"""``parallel.moe_token_chunks``: the routed part of every MoE block over token chunks, each
recomputed in backward, for long micro-batches.

Shape legend: T tokens of the micro-batch (this rank), K top-k, R = T*K routed rows, D hidden,
F expert intermediate size.

At 262,144 tokens with K = 8 a Qwen3-MoE layer's routed part holds ``[R, D]`` permuted inputs and
outputs and ``[R, 2F]`` expert activations: tens of GB per layer, alive at once in a layer's
backward even under activation checkpointing (the layer's recompute rebuilds them all). With
``n`` chunks, each chunk (dispatch -> experts -> combine) runs under non-reentrant checkpointing:
only its inputs and outputs are kept, and one chunk's internals are alive at a time, at the cost
of one more forward of the routed part in backward. The model's MoE blocks expose the swap point
``routed_token_chunks`` (`xt.models.common.moe.MoEBlock`); this module sets it from outside, on
every block of the parallel plan (MTP blocks included).
"""
from __future__ import annotations

from torch import nn

from xt.parallel.mesh import LayoutError
from xt.parallel.plan import ParallelPlan, resolve

__all__ = ["apply_moe_token_chunks"]


def apply_moe_token_chunks(model: nn.Module, plan: ParallelPlan, chunks: int) -> int:
    """Set ``routed_token_chunks = chunks`` on every MoE block of `plan`.

    Args:
        model: the model the plan describes.
        plan: its parallel plan (`xt.parallel.plan_for`).
        chunks: the ``parallel.moe_token_chunks`` value (>= 2 to change anything).

    Returns:
        The number of MoE blocks set.

    Raises:
        LayoutError: the model has no MoE block, or a block lacks the ``routed_token_chunks``
            swap point (e.g. a Hugging Face MoE block).
    """
    if not plan.moe_blocks:
        raise LayoutError(f"parallel.moe_token_chunks = {chunks} is set but the model has no MoE block")
    for i, entry in enumerate(plan.moe_blocks):
        block = resolve(model, entry.block, f"moe_blocks[{i}].block")
        if not hasattr(block, "routed_token_chunks"):
            raise LayoutError(f"parallel.moe_token_chunks = {chunks}: the MoE block {entry.block} "
                              f"({type(block).__name__}) has no routed_token_chunks swap point; XT's "
                              "MoEBlock has it (docs/contracts.md, MoE dispatch)")
        block.routed_token_chunks = chunks
    return len(plan.moe_blocks)
