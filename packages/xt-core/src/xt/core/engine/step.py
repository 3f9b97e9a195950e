"""Forward and backward of one optimizer step over its micro-batches (gradient accumulation).

Model contract (docs/contracts.md): ``out = model(**batch)`` returns an object with
``loss_sum`` (fp32 scalar: summed CE over labels != -100), ``aux_loss`` (fp32 scalar or None,
weighted and normalised within the micro-batch), ``metrics`` (dict of tensors, optional), and the
model may define ``flops_per_token(seq_len) -> float``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xt.core.distributed import DistContext
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.loss import count_label_tokens, micro_batch_objective
from xt.core.engine.metrics import effective_seq_len

__all__ = ["StepStats", "to_device", "forward_backward"]


@dataclass
class StepStats:
    """What one step's forward/backward measured (all reduced over ranks).

    Attributes:
        loss: global token-mean cross-entropy (fp32 scalar tensor, detached).
        aux_loss: mean of the micro-batches' `aux_loss` over micro-batches and ranks, or None
            if the model returned none.
        loss_tokens: label tokens (!= -100) of the step over all ranks.
        num_tokens: input tokens of the step over all ranks (what throughput counts).
        seq_len: token-weighted mean document length (`effective_seq_len`, this rank).
        metrics: the model's `out.metrics`, averaged over micro-batches and ranks.
    """

    loss: torch.Tensor
    aux_loss: torch.Tensor | None
    loss_tokens: int
    num_tokens: int
    seq_len: float
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy a micro-batch's tensors to `device` (non-blocking); other values pass through."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def forward_backward(model: nn.Module, micro_batches: Sequence[Mapping[str, Any]],
                     dist_ctx: DistContext, device: torch.device,
                     autocast_dtype: torch.dtype | None = None,
                     weights: ComputeWeights | None = None) -> StepStats:
    """Run forward and backward over one step's micro-batches, accumulating gradients.

    The label tokens of all micro-batches are counted and all-reduced first; each micro-batch
    then backpropagates ``loss_sum / N_global + aux_loss / (M * world_size)``
    (`xt.core.engine.loss`), so splitting the same sequences differently into micro-batches
    gives the same loss and gradients. Gradients are added to ``param.grad`` (zero them first).

    Args:
        model: called as ``model(**micro_batch)``; see the module docstring for its output.
        micro_batches: M >= 1 batches (dicts of tensors, docs/contracts.md), on any device.
        dist_ctx: reductions across ranks; gradient sync is disabled for all but the last
            micro-batch.
        device: the model's device (batches are moved there).
        autocast_dtype: e.g. torch.bfloat16 to run the forward under `torch.autocast`; None = off.
        weights: bf16 compute copies to hold in the model during forward and backward
            (`ComputeWeights.swapped`; their gradients still land in the fp32 ``.grad``), or None.

    Returns:
        `StepStats` for the step.

    Raises:
        ValueError: if `micro_batches` is empty.
        KeyError / TypeError: if a batch has no labels or the model output breaks the contract.
    """
    if not micro_batches:
        raise ValueError("forward_backward needs at least one micro-batch")
    mbs = [to_device(mb, device) for mb in micro_batches]
    n = len(mbs)
    world = dist_ctx.world_size
    global_tokens = dist_ctx.all_reduce_sum(count_label_tokens(mbs, device))
    extra: dict[str, torch.Tensor] = {}
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    with weights.swapped() if weights is not None else contextlib.nullcontext():
        loss_acc, aux_acc, has_aux = _accumulate(model, mbs, dist_ctx, amp, global_tokens, extra)
    num_tokens = sum(int(mb["input_ids"].numel()) for mb in mbs)
    packed = torch.stack([loss_acc.double(), aux_acc.double(),
                          torch.tensor(float(num_tokens), dtype=torch.float64, device=device)])
    packed = dist_ctx.all_reduce_sum(packed)  # float64: token counts stay exact
    n_global = int(global_tokens.item())
    metrics = {k: dist_ctx.all_reduce_sum(v / n) / world for k, v in extra.items()}
    return StepStats(
        loss=(packed[0] / max(n_global, 1)).float(),
        aux_loss=(packed[1] / (n * world)).float() if has_aux else None,
        loss_tokens=n_global,
        num_tokens=int(packed[2].item()),
        seq_len=effective_seq_len(mbs),
        metrics=metrics,
    )


def _accumulate(model: nn.Module, mbs: list[dict[str, Any]], dist_ctx: DistContext,
                amp: contextlib.AbstractContextManager, global_tokens: torch.Tensor,
                extra: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The micro-batch loop of `forward_backward`: returns (sum of loss_sum, sum of aux_loss,
    whether any micro-batch had an aux loss) and adds the model's metrics into `extra`."""
    n, world = len(mbs), dist_ctx.world_size
    device = global_tokens.device
    loss_acc = torch.zeros((), dtype=torch.float32, device=device)
    aux_acc = torch.zeros((), dtype=torch.float32, device=device)
    has_aux = False
    for i, mb in enumerate(mbs):
        dist_ctx.set_grad_sync(model, i == n - 1)
        with amp:
            out = model(**mb)
        objective = micro_batch_objective(out, global_tokens, n, world)
        objective.backward()
        loss_acc += out.loss_sum.detach().float()
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            has_aux = True
            aux_acc += aux.detach().float()
        for k, v in (getattr(out, "metrics", None) or {}).items():
            v = torch.as_tensor(v).detach().float().to(device)
            extra[k] = extra[k] + v if k in extra else v.clone()
    return loss_acc, aux_acc, has_aux
