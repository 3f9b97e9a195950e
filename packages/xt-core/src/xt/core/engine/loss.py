"""Loss normalisation over the global batch (docs/architecture.md, Loss normalisation; docs/contracts.md).

The training objective of one optimizer step is

    L = (sum over all micro-batches m and ranks r of loss_sum[m, r]) / N_global
        + mean over (m, r) of aux_loss[m, r]

where N_global counts the labels != -100 of all micro-batches of all data-parallel ranks. Each
micro-batch backpropagates ``loss_sum / N_global + aux_loss / (M * world_size)`` and gradients are
summed over micro-batches (accumulation) and ranks (see `xt.core.distributed`). Hence the loss and
gradients do not depend on how the same sequences are split into micro-batches or ranks (the mean
of per-micro-batch means would weight tokens of short micro-batches more).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from xt.core.labels import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "count_label_tokens", "micro_batch_objective", "check_model_output"]


def count_label_tokens(micro_batches: Sequence[dict[str, Any]], device: torch.device) -> torch.Tensor:
    """Number of labels != -100 over all `micro_batches` (this rank only).

    Args:
        micro_batches: batches with a ``labels`` int64 tensor (``[T]`` packed or ``[B, S]``).
        device: where to put the count (the model's device, for the all-reduce).

    Returns:
        int64 scalar tensor on `device`.

    Raises:
        KeyError: if a micro-batch has no ``labels``.
    """
    total = torch.zeros((), dtype=torch.int64, device=device)
    for i, mb in enumerate(micro_batches):
        if "labels" not in mb:
            raise KeyError(f"micro-batch {i} has no 'labels' (keys: {sorted(mb)}); "
                           "see docs/contracts.md")
        total += (mb["labels"] != IGNORE_INDEX).sum().to(device)
    return total


def check_model_output(out: Any) -> None:
    """Check that a model output follows the contract (docs/contracts.md, "Model forward").

    Raises:
        TypeError: if `out` has no tensor `loss_sum` attribute, or `loss_sum` is not a scalar.
    """
    loss_sum = getattr(out, "loss_sum", None)
    if isinstance(loss_sum, torch.Tensor) and loss_sum.ndim == 0:
        return
    got = (f"a tensor of shape {tuple(loss_sum.shape)}" if isinstance(loss_sum, torch.Tensor)
           else type(loss_sum).__name__)
    raise TypeError(f"model output {type(out).__name__} must have a scalar tensor `loss_sum` (sum "
                    f"of the token cross-entropies over labels != -100); got {got}")


def micro_batch_objective(out: Any, global_tokens: torch.Tensor, num_micro_batches: int,
                          world_size: int) -> torch.Tensor:
    """The part of the step objective that one micro-batch backpropagates.

    Args:
        out: model output with `loss_sum` (scalar, summed CE) and optional `aux_loss` (scalar,
            already weighted and normalised within the micro-batch, or None).
        global_tokens: label-token count of the whole step over all ranks (int scalar tensor);
            a count of 0 is treated as 1 (then `loss_sum` is 0 too).
        num_micro_batches: micro-batches per step on each rank (M).
        world_size: ranks whose gradients are summed.

    Returns:
        scalar ``loss_sum / N_global + aux_loss / (M * world_size)`` with autograd graph, in
        float32 (float64 when the model computes its loss in float64, e.g. a numerics check).
    """
    check_model_output(out)
    acc = torch.promote_types(out.loss_sum.dtype, torch.float32)  # never below fp32; f64 stays f64
    denom = global_tokens.clamp(min=1).to(acc)
    obj = out.loss_sum.to(acc) / denom
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        obj = obj + aux.to(acc) / (num_micro_batches * world_size)
    return obj
