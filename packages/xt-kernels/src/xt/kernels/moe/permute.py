"""Token permutation for MoE: router output -> expert-sorted rows, and back (weighted combine).

Shape legend: T tokens, K top-k (``num_experts_per_tok``), R = T*K routed slots, E experts,
D hidden size. Slot ``s = t*K + k`` is token ``t``'s k-th choice ``topk_ids[t, k]``.

This module holds the public entry points (backend dispatch, see :mod:`xt.kernels.moe.backends`)
and the reference backend in plain PyTorch (differentiable through autograd, any device). The
index bookkeeping (stable sort of the slots by expert, counts per expert via ``scatter_add``) runs
on the device without host synchronisation and is shared with the Triton backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PermuteInfo", "permute", "unpermute", "permute_reference", "unpermute_reference",
           "routing_indices"]


@dataclass
class PermuteInfo:
    """What :func:`unpermute` needs to undo :func:`permute`.

    Attributes:
        sorted_row_ids: ``[R]`` int64; permuted row ``i`` came from slot ``sorted_row_ids[i]`` of
            ``topk_ids.view(-1)`` (token ``sorted_row_ids[i] // K``).
        tokens_per_expert: ``[E]`` int64 counts (on the device of ``topk_ids``).
        num_tokens: T.
        top_k: K.
        row_of_slot: ``[R]`` int64 inverse of ``sorted_row_ids``: slot ``s`` sits at permuted row
            ``row_of_slot[s]``.
    """
    sorted_row_ids: torch.Tensor
    tokens_per_expert: torch.Tensor
    num_tokens: int
    top_k: int
    row_of_slot: torch.Tensor | None = None


def routing_indices(topk_ids: torch.Tensor, num_experts: int) -> PermuteInfo:
    """Sort the routed slots by expert (stable: token order inside an expert) and count them.

    Args:
        topk_ids: ``[T, K]`` integer expert ids in ``[0, num_experts)`` (not range-checked on
            the device: that would synchronise).
        num_experts: E.

    Returns:
        :class:`PermuteInfo` with every field filled.

    Raises:
        ValueError: if ``topk_ids`` is not 2-D or ``num_experts < 1``.
    """
    if topk_ids.dim() != 2:
        raise ValueError(f"permute: topk_ids must be [T, K]; got {tuple(topk_ids.shape)}")
    if num_experts < 1:
        raise ValueError(f"permute: num_experts must be >= 1; got {num_experts}")
    T, K = topk_ids.shape
    flat = topk_ids.reshape(-1).to(torch.int64)
    sorted_row_ids = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would synchronise on CUDA
    row_of_slot = torch.empty_like(sorted_row_ids)
    row_of_slot[sorted_row_ids] = torch.arange(flat.numel(), device=flat.device)
    return PermuteInfo(sorted_row_ids, counts, T, K, row_of_slot)


def _check_x(x: torch.Tensor, topk_ids: torch.Tensor) -> None:
    if x.dim() != 2 or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"permute: x must be [T, D] and topk_ids [T, K] with the same T; got "
                         f"x {tuple(x.shape)}, topk_ids {tuple(topk_ids.shape)}")


def permute_reference(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, PermuteInfo]:
    """Reference :func:`permute` (``index_select``; autograd gives the backward)."""
    _check_x(x, topk_ids)
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
            (process-wide choice, :func:`xt.kernels.moe.backends.set_backend`).

    Returns:
        ``(x_sorted [T*K, D], info)`` with ``info.tokens_per_expert [E]`` (int64, on device).

    Raises:
        ValueError: if ``topk_ids`` is not ``[T, K]`` with ``T == x.shape[0]``.
    """
    from xt.kernels.moe import backends
    return backends.dispatch("permute", backend)(x, topk_ids, num_experts)


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
    from xt.kernels.moe import backends
    return backends.dispatch("unpermute", backend)(y_sorted, info, topk_weights)
