"""Token permutation for MoE: router output -> expert-sorted rows, and back (combine).

Reference backend in plain PyTorch (differentiable through autograd, any device).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PermuteInfo", "permute", "unpermute"]


@dataclass
class PermuteInfo:
    """What :func:`unpermute` needs to undo :func:`permute`.

    Attributes:
        sorted_row_ids: ``[R]`` int64; position ``i`` of the permuted rows came from flat
            routed slot ``sorted_row_ids[i]`` of ``topk_ids.view(-1)`` (token ``slot // K``).
        tokens_per_expert: ``[E]`` int64 counts (on the device of ``topk_ids``).
        num_tokens: T.
        top_k: K.
    """
    sorted_row_ids: torch.Tensor
    tokens_per_expert: torch.Tensor
    num_tokens: int
    top_k: int


def permute(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, PermuteInfo]:
    """Copy each token once per chosen expert, grouped by expert id (stable order within an expert).

    Args:
        x: ``[T, D]`` hidden states.
        topk_ids: ``[T, K]`` integer expert ids in ``[0, num_experts)``.
        num_experts: E.

    Returns:
        ``(x_sorted [T*K, D], info)`` with ``info.tokens_per_expert [E]``.

    Raises:
        ValueError: if ``topk_ids`` is not ``[T, K]`` with ``T == x.shape[0]``.
    """
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"permute: topk_ids must be [T, K] with T={x.shape[0]}; got {tuple(topk_ids.shape)}")
    T, K = topk_ids.shape
    flat = topk_ids.reshape(-1)
    sorted_row_ids = torch.argsort(flat, stable=True)
    tokens_per_expert = torch.bincount(flat, minlength=num_experts).to(torch.int64)
    x_sorted = x.index_select(0, sorted_row_ids // K)
    return x_sorted, PermuteInfo(sorted_row_ids, tokens_per_expert, T, K)


def unpermute(y_sorted: torch.Tensor, info: PermuteInfo, topk_weights: torch.Tensor) -> torch.Tensor:
    """Weighted combine: ``out[t] = sum_k topk_weights[t, k] * y[row of (t, k)]``.

    Args:
        y_sorted: ``[T*K, D]`` expert outputs in permuted order.
        info: from :func:`permute`.
        topk_weights: ``[T, K]`` routing weights (float32 recommended); the product is taken in
            float32 and cast back to ``y_sorted.dtype``.

    Returns:
        ``[T, D]`` in ``y_sorted.dtype``.
    """
    T, K = info.num_tokens, info.top_k
    D = y_sorted.shape[-1]
    y_flat = torch.empty_like(y_sorted).index_copy(0, info.sorted_row_ids, y_sorted) if y_sorted.shape[0] else y_sorted
    y_tk = y_flat.view(T, K, D).float() * topk_weights.view(T, K, 1).float()
    return y_tk.sum(dim=1).to(y_sorted.dtype)
