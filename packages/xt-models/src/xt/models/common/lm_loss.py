"""LM head + token cross-entropy: either materialised logits, or the fused chunked
``xt.kernels.loss.linear_cross_entropy`` that never builds the ``[T, V]`` logits; and the summed
cross-entropy of given logits (:func:`lm_loss_sum`) that every family uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.labels import IGNORE_INDEX

__all__ = ["lm_head_and_loss", "lm_loss_sum", "head_loss_sum", "head_outputs"]


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
        return head_loss_sum(hidden, lm_head.weight, labels), None
    logits = lm_head(hidden)
    return (None if labels is None else lm_loss_sum(logits, labels)), logits


def head_loss_sum(hidden: torch.Tensor, head_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropy of ``hidden[T, D] @ head_weight[V, D]ᵀ`` over ``labels[T] !=
    -100``, float32 scalar, through the fused chunked kernel (never ``[T, V]`` logits;
    `xt.kernels.loss.linear_cross_entropy`).

    Raises:
        ValueError: (from the kernel) shape or dtype mismatches.
    """
    from xt.kernels.loss import linear_cross_entropy

    return linear_cross_entropy(hidden, head_weight, labels, ignore_index=IGNORE_INDEX, reduction="sum").float()


def head_outputs(out, hidden: torch.Tensor, lm_head: nn.Module, p, return_logits: bool | None,
                 return_hidden: bool):
    """Fill the head part of a family's `CausalLMOutput` from the final-normed ``hidden[T, D]``.

    The one place every family turns hidden states into ``loss_sum`` / ``logits`` / ``hidden``:

    - ``return_hidden``: ``out.hidden = hidden`` and ``out.head_weight = lm_head.weight``; no loss
      (the caller's loss object owns the head and the reduction, `xt.models.common.head_loss`);
      logits only if ``return_logits`` is True.
    - else with labels: ``loss_sum`` through the fused kernel, unless ``return_logits`` (then the
      loss comes from the logits, as HF computes it).
    - ``return_logits`` None means: logits only when there are no labels.

    Args:
        out: the `CausalLMOutput` to fill (returned).
        hidden: ``[T, D]`` packed tokens after the final norm.
        lm_head: bias-free linear module, ``weight [V, D]``.
        p: the forward's `PackedInput` (labels and the layout to unpack logits to).
        return_logits, return_hidden: see above.
    """
    if return_hidden:
        out.hidden, out.head_weight = hidden, lm_head.weight
        if return_logits:
            out.logits = p.unpack(lm_head(hidden))
        return out
    if return_logits is None:
        return_logits = p.labels is None
    loss_sum, logits = lm_head_and_loss(hidden, lm_head, p.labels, return_logits)
    out.loss_sum = loss_sum
    out.logits = None if logits is None else p.unpack(logits)
    return out
