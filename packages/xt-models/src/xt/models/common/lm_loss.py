"""LM head + token cross-entropy: either materialised logits, or the fused chunked
``xt.kernels.loss.linear_cross_entropy`` that never builds the ``[T, V]`` logits; and the summed
cross-entropy of given logits (:func:`lm_loss_sum`) that every family uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.labels import IGNORE_INDEX

__all__ = ["lm_head_and_loss", "lm_loss_sum"]


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropy (float32) over ``labels != -100``; ``logits[T, V]``, ``labels[T]``."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def lm_head_and_loss(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor | None,
                     return_logits: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Compute ``(loss_sum, logits)`` from final hidden states.

    Args:
        hidden: ``[T, D]`` after the final norm.
        lm_head: bias-free linear module with ``weight [V, D]`` (called for the logits path; its
            ``weight`` feeds the fused path).
        labels: ``[T]`` int64 pre-shifted targets (``-100`` ignored) or None.
        return_logits: also return ``logits [T, V]`` (``lm_head(hidden)``).

    Returns:
        ``loss_sum``: float32 scalar sum of CE over labels != -100 (None without labels);
        ``logits``: ``[T, V]`` or None. Without logits the loss goes through the fused kernel.

    Raises:
        ValueError: (from the kernel) shape or dtype mismatches.
    """
    if labels is not None and not return_logits:
        from xt.kernels.loss import linear_cross_entropy

        return linear_cross_entropy(hidden, lm_head.weight, labels, ignore_index=IGNORE_INDEX, reduction="sum").float(), None
    logits = lm_head(hidden)
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, logits
