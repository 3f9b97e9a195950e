"""Routing bookkeeping shared by every permute backend: :class:`PermuteInfo` and the device-side
sort of routed slots by expert (:func:`routing_indices`).

Shape legend: T tokens, K top-k (``num_experts_per_tok``), R = T*K routed slots, E experts,
D hidden size. Slot ``s = t*K + k`` is token ``t``'s k-th choice ``topk_ids[t, k]``.

Kept apart from :mod:`xt.kernels.moe.permute` (the public entry points and the reference backend)
so that the Triton backend (:mod:`xt.kernels.moe.permute_triton`) imports this and not the module
that dispatches to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PermuteInfo", "routing_indices", "check_permute_inputs"]


@dataclass
class PermuteInfo:
    """What :func:`xt.kernels.moe.unpermute` needs to undo :func:`xt.kernels.moe.permute`.

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


def check_permute_inputs(x: torch.Tensor, topk_ids: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is ``[T, D]`` and ``topk_ids`` is ``[T, K]`` with the same T."""
    if x.dim() != 2 or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"permute: x must be [T, D] and topk_ids [T, K] with the same T; got "
                         f"x {tuple(x.shape)}, topk_ids {tuple(topk_ids.shape)}")
