"""Dropless sparse MoE block: router (``gate``) -> ``dispatcher.dispatch`` -> ``experts`` ->
``dispatcher.combine`` (+ optional shared experts).

Shape legend: T tokens, D hidden size, E experts, K top-k, R = T*K routed rows.

Attribute names follow HF so checkpoint keys map simply: ``mlp.gate.weight [E, D]`` is the
router; ``mlp.experts`` holds stacked weights (layout in :mod:`xt.models.common.experts`).
``mlp.dispatcher`` is the swappable token dispatcher (contract in ``docs/contracts.md``).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.dispatch import LocalDispatcher
from xt.models.common.experts import GroupedExperts
from xt.models.common.router import RouterStats, TopKRouter, router_stats

__all__ = ["MoEBlock"]


class MoEBlock(nn.Module):
    """Sparse MoE feed-forward. Every routed token copy is computed (no capacity, no drops).

    Args:
        gate: a router module returning :class:`~xt.models.common.router.RouterOutput`
            (e.g. :class:`~xt.models.common.router.TopKRouter`).
        experts: stacked experts (e.g. :class:`~xt.models.common.experts.GroupedExperts`).
        dispatcher: None means ``LocalDispatcher(gate.num_experts)``.
        shared_experts: optional dense module applied to every token and added (DeepSeek style).
    """

    def __init__(self, gate: nn.Module, experts: nn.Module, dispatcher: nn.Module | None = None,
                 shared_experts: nn.Module | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.dispatcher = dispatcher if dispatcher is not None else LocalDispatcher(gate.num_experts)
        self.shared_experts = shared_experts

    @classmethod
    def swiglu_topk(cls, hidden_size: int, moe_intermediate_size: int, num_experts: int, top_k: int,
                    norm_topk_prob: bool, init_std: float = 0.02) -> "MoEBlock":
        """The Qwen3-MoE / Mixtral block: softmax top-k router and SwiGLU experts."""
        gate = TopKRouter(hidden_size, num_experts, top_k, norm_topk_prob)
        nn.init.normal_(gate.weight, std=init_std)
        return cls(gate, GroupedExperts(num_experts, hidden_size, moe_intermediate_size, init_std=init_std))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """``x[T, D] -> (y[T, D] in x.dtype, RouterStats of this layer)``."""
        route = self.gate(x)
        x_sorted, tokens_per_expert, ctx = self.dispatcher.dispatch(x, route.topk_ids, route.topk_weights)
        y_sorted = self.experts(x_sorted, tokens_per_expert)
        y = self.dispatcher.combine(y_sorted, ctx)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, router_stats(route, self.gate.num_experts)
