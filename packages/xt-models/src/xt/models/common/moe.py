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

    #: Swap point for xt.parallel (``parallel.moe_token_chunks``): run the routed part over the
    #: tokens in this many chunks, each recomputed in backward (docs/contracts.md, MoE dispatch).
    routed_token_chunks: int = 1
    #: The block calls ``dispatcher.run_experts(x, topk_ids, topk_weights, experts)`` when the
    #: dispatcher has it (xt.parallel's ``parallel.ep_overlap``; docs/contracts.md, MoE dispatch).
    dispatcher_runs_experts = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """``x[T, D] -> (y[T, D] in x.dtype, RouterStats of this layer)``."""
        route = self.gate(x)
        if self.routed_token_chunks > 1:
            y = self._routed_in_chunks(x, route.topk_ids, route.topk_weights)
        else:
            y = self._routed(x, route.topk_ids, route.topk_weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, router_stats(route, self.gate.num_experts)

    def _routed(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """dispatch -> experts -> weighted combine: ``x[T, D], ids[T, K], weights[T, K] -> [T, D]``
        (or the dispatcher's ``run_experts``, which does all three)."""
        if hasattr(self.dispatcher, "run_experts"):
            return self.dispatcher.run_experts(x, topk_ids, topk_weights, self.experts)
        x_sorted, tokens_per_expert, ctx = self.dispatcher.dispatch(x, topk_ids, topk_weights)
        return self.dispatcher.combine(self.experts(x_sorted, tokens_per_expert), ctx)

    def _routed_in_chunks(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """`_routed` over ``routed_token_chunks`` contiguous token chunks, each under non-reentrant
        activation checkpointing, so only one chunk's ``[R/n, D]`` / ``[R/n, 2F]`` expert
        activations are alive at a time: they are dropped after the chunk's forward and recomputed
        in its backward (also inside an activation-checkpointed layer's recompute).

        Every token's result is the same as unchunked (routing is per token and fixed before);
        only the weight gradients' summation order changes. The number of chunks is the same on
        every rank (empty chunks included), so an all-to-all dispatcher makes the same number of
        collective calls everywhere.
        """
        from torch.utils.checkpoint import checkpoint

        n = self.routed_token_chunks
        T = x.shape[0]
        bounds = [T * i // n for i in range(n + 1)]
        outs = [checkpoint(self._routed, x[a:b], topk_ids[a:b], topk_weights[a:b], use_reentrant=False)
                for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(outs, dim=0)
