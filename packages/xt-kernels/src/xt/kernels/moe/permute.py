"""Token permutation for MoE: router output -> expert-sorted rows, and back (weighted combine).

Shape legend: T tokens, K top-k (``num_experts_per_tok``), R = T*K routed slots, E experts,
D hidden size. Slot ``s = t*K + k`` is token ``t``'s k-th choice ``topk_ids[t, k]``.

This module holds the public entry points, the reference backend in plain PyTorch
(differentiable through autograd, any device) and the registration of both ops' backends with
:mod:`xt.kernels.registry`. The index bookkeeping (stable sort of the slots by expert, counts per
expert via ``scatter_add``) runs on the device without host synchronisation and is shared with the
Triton backend (:mod:`xt.kernels.moe.permute_index`).
"""
from __future__ import annotations

from typing import Callable

import torch

from xt.kernels import registry
from xt.kernels._triton_support import triton_usable_on
from xt.kernels.moe.permute_index import PermuteInfo, check_permute_inputs, routing_indices

__all__ = ["PermuteInfo", "permute", "unpermute", "permute_reference", "unpermute_reference",
           "routing_indices"]


def permute_reference(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, PermuteInfo]:
    """Reference :func:`permute` (``index_select``; autograd gives the backward)."""
    check_permute_inputs(x, topk_ids)
    info = routing_indices(topk_ids, num_experts)
    return x.index_select(0, info.sorted_row_ids // info.top_k), info


def unpermute_reference(y_sorted: torch.Tensor, info: PermuteInfo, topk_weights: torch.Tensor) -> torch.Tensor:
    """Reference :func:`unpermute`: gather each slot's row, weight in float32, sum over K."""
    T, K = info.num_tokens, info.top_k
    if y_sorted.dim() != 2 or y_sorted.shape[0] != T * K or tuple(topk_weights.shape) != (T, K):
        raise ValueError(f"unpermute: expected y_sorted [{T * K}, D] and topk_weights [{T}, {K}]; got "
                         f"{tuple(y_sorted.shape)} and {tuple(topk_weights.shape)}")
    row_of_slot = info.row_of_slot
    if row_of_slot is None:
        row_of_slot = torch.empty_like(info.sorted_row_ids)
        row_of_slot[info.sorted_row_ids] = torch.arange(T * K, device=row_of_slot.device)
    acc = torch.promote_types(y_sorted.dtype, torch.float32)
    y_tk = y_sorted.index_select(0, row_of_slot).view(T, K, y_sorted.shape[1]).to(acc)
    return (y_tk * topk_weights.to(acc).unsqueeze(-1)).sum(dim=1).to(y_sorted.dtype)


def permute(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
            backend: str | None = None) -> tuple[torch.Tensor, PermuteInfo]:
    """Copy each token once per chosen expert, grouped by expert id (stable order within an expert).

    Args:
        x: ``[T, D]`` hidden states (any float dtype).
        topk_ids: ``[T, K]`` integer expert ids in ``[0, num_experts)``.
        num_experts: E.
        backend: ``"reference"``/``"torch"``, ``"triton"``, ``"npu"``, ``"auto"`` or ``None``
            (process-wide choice, :func:`xt.kernels.registry.set_backend`).

    Returns:
        ``(x_sorted [T*K, D], info)`` with ``info.tokens_per_expert [E]`` (int64, on device).

    Raises:
        ValueError: if ``topk_ids`` is not ``[T, K]`` with ``T == x.shape[0]``.
    """
    return registry.dispatch("permute", backend)(x, topk_ids, num_experts)


def unpermute(y_sorted: torch.Tensor, info: PermuteInfo, topk_weights: torch.Tensor,
              backend: str | None = None) -> torch.Tensor:
    """Weighted combine: ``out[t] = sum_k topk_weights[t, k] * y_sorted[row of slot (t, k)]``.

    Args:
        y_sorted: ``[T*K, D]`` expert outputs in permuted order.
        info: from :func:`permute`.
        topk_weights: ``[T, K]`` routing weights (float32 recommended); products and the sum are
            taken in float32 (float64 for float64 inputs) and cast to ``y_sorted.dtype``.
        backend: as in :func:`permute`.

    Returns:
        ``[T, D]`` in ``y_sorted.dtype``; differentiable w.r.t. ``y_sorted`` and ``topk_weights``.

    Raises:
        ValueError: shapes inconsistent with ``info``.
    """
    return registry.dispatch("unpermute", backend)(y_sorted, info, topk_weights)


def _factory(op: str) -> Callable[[str], Callable]:
    """Registry factory of ``op`` (``"permute"`` or ``"unpermute"``): ``torch``/``npu`` run the
    reference ops, ``triton`` the kernels of :mod:`xt.kernels.moe.permute_triton` (imported when
    first chosen), ``auto`` decides per call from the device."""
    reference = permute_reference if op == "permute" else unpermute_reference

    def auto(*args, **kw):
        x = args[0]
        fast = x.device.type == "cuda" and triton_usable_on(x.device)
        return implementation("triton" if fast else "reference")(*args, **kw)

    def implementation(name: str) -> Callable:
        if name == "auto":
            return auto
        if name == "triton":
            from xt.kernels.moe import permute_triton
            return getattr(permute_triton, op)
        return reference
    return implementation


registry.register("permute", _factory("permute"))
registry.register("unpermute", _factory("unpermute"))
