"""Local (single-process) MoE token dispatcher, per the contract in ``docs/contracts.md``.

Shape legend: T tokens, K top-k, R = T*K routed rows, D hidden size, E experts.
Expert parallelism (``xt.parallel``) swaps in an all-to-all dispatcher with the same two methods.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xt.kernels.moe import permute, unpermute

__all__ = ["LocalDispatcher"]


class LocalDispatcher(nn.Module):
    """All experts live in this process: sort routed rows by expert, and weight-sum them back.

    Args:
        num_experts: E (every expert is local).
    """

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def dispatch(self, x: torch.Tensor, topk_ids: torch.Tensor,
                 topk_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Sort token copies by expert.

        Args:
            x: ``[T, D]``.
            topk_ids: ``[T, K]`` int64 expert ids in ``[0, E)``.
            topk_weights: ``[T, K]`` float32 combine weights (kept in the context).

        Returns:
            ``(x_sorted [R, D], tokens_per_local_expert [E] int64, ctx)``.
        """
        x_sorted, info = permute(x, topk_ids, self.num_experts)
        return x_sorted, info.tokens_per_expert, (info, topk_weights)

    def combine(self, y_sorted: torch.Tensor, ctx: Any) -> torch.Tensor:
        """``y[t] = sum_k topk_weights[t, k] * y_sorted[row(t, k)]`` in float32, cast to ``y_sorted.dtype``.

        Returns ``[T, D]``.
        """
        info, topk_weights = ctx
        return unpermute(y_sorted, info, topk_weights)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}"
