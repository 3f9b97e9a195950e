"""The objective a step backpropagates: the `Loss` protocol, its context, and the default loss.

`Engine.forward_backward(micro_batches, loss)` calls ``loss(out, batch, ctx)`` once per
micro-batch, right after ``out = model(**inputs)``, and backpropagates the scalar it returns.
Gradients are added up over the micro-batches and summed over ranks (docs/architecture.md, Loss
normalisation), so **the step objective is the sum of what the loss returns over all micro-batches
of all ranks**: a loss normalises with the global counts in `LossContext`, not with the
micro-batch's own, and splitting the same tokens differently then changes nothing.

A loss is any callable ``loss(out, batch, ctx) -> Tensor | (Tensor, metrics)``; two optional
methods widen what it can do (an RL policy-gradient loss on per-token log-probs needs both):

- ``totals(micro_batches) -> Mapping[str, Tensor]``: this rank's sums over the step's
  micro-batches (e.g. the number of sequences, or of tokens in a loss mask). The engine sums them
  over ranks before the first forward and passes them as ``ctx.totals``.
- ``model_inputs(batch) -> Mapping[str, Any]``: the keyword arguments of the model call, e.g. the
  batch without the keys only the loss reads (``advantages``, ``old_log_probs``), or with a flag
  the model needs. Without it the whole batch is passed (docs/contracts.md, Batches).

Metrics a loss returns are summed over micro-batches and ranks in float64 (like the objective
itself), so a metric normalised by a global count comes out as the global mean.

`TokenMeanLoss` (the default) is today's objective, `micro_batch_objective`:
``loss_sum / N_global + aux_loss / (M * world_size)``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from xt.core.engine.loss import micro_batch_objective

__all__ = ["Loss", "LossContext", "LossOutput", "TokenMeanLoss", "as_loss_output",
           "loss_totals", "model_inputs"]


@dataclass(frozen=True)
class LossContext:
    """The global normalisers of one step, the same for every micro-batch of every rank.

    Attributes:
        global_tokens: label tokens (``labels != -100``) of all micro-batches of all ranks, an
            int64 scalar tensor on the model's device (0 is possible: clamp before dividing).
        num_micro_batches: M, micro-batches of this step on each rank.
        world_size: ranks whose gradients are summed (`DistContext.world_size`).
        micro_batch: index of the current micro-batch in [0, M).
        totals: the loss's own ``totals(micro_batches)`` summed over ranks (tensors on the model's
            device, dtypes as returned); empty when the loss has no ``totals`` method.
    """

    global_tokens: torch.Tensor
    num_micro_batches: int
    world_size: int
    micro_batch: int = 0
    totals: Mapping[str, torch.Tensor] = field(default_factory=dict)


class LossOutput(NamedTuple):
    """What a loss returns for one micro-batch.

    Attributes:
        objective: scalar floating tensor with its autograd graph; `.backward()` is called on it.
        metrics: tensors (any shape, detached or not) summed over micro-batches and ranks.
    """

    objective: torch.Tensor
    metrics: Mapping[str, torch.Tensor] = {}


@runtime_checkable
class Loss(Protocol):
    """``loss(out, batch, ctx) -> Tensor | (Tensor, metrics) | LossOutput`` (module docstring).

    Args:
        out: the model's output for the micro-batch (docs/contracts.md, Model forward).
        batch: the micro-batch, its tensors on the model's device (all its keys, including those
            ``model_inputs`` kept from the model).
        ctx: the step's global normalisers.
    """

    def __call__(self, out: Any, batch: Mapping[str, Any], ctx: LossContext) -> Any: ...


class TokenMeanLoss:
    """The default objective: global token-mean cross-entropy plus the mean auxiliary loss.

    Per micro-batch ``out.loss_sum / max(N_global, 1) + out.aux_loss / (M * world_size)``
    (`xt.core.engine.loss.micro_batch_objective`, float32 or wider), no metrics: the step's
    ``loss`` and ``aux_loss`` are measured by the engine from the same outputs (`StepStats`).

    Raises:
        TypeError: (when called) if `out` has no scalar tensor ``loss_sum``.
    """

    def __call__(self, out: Any, batch: Mapping[str, Any], ctx: LossContext) -> torch.Tensor:
        return micro_batch_objective(out, ctx.global_tokens, ctx.num_micro_batches, ctx.world_size)

    def __repr__(self) -> str:
        return "TokenMeanLoss()"


def _name(loss: Callable[..., Any]) -> str:
    return getattr(loss, "__qualname__", None) or type(loss).__name__


def as_loss_output(result: Any, loss: Callable[..., Any]) -> LossOutput:
    """Normalise what `loss` returned into a `LossOutput`.

    Args:
        result: a tensor, a ``(tensor, metrics)`` pair, or a `LossOutput`.
        loss: the loss that returned it (named in errors).

    Raises:
        TypeError: `result` is none of these, the objective is not a floating scalar tensor, or
            the metrics are not a mapping of tensors.
    """
    if isinstance(result, torch.Tensor):
        objective, metrics = result, {}
    elif isinstance(result, tuple) and len(result) == 2:
        objective, metrics = result
    else:
        raise TypeError(f"loss {_name(loss)} must return a scalar tensor or (tensor, metrics); "
                        f"got {type(result).__name__}")
    if not (isinstance(objective, torch.Tensor) and objective.ndim == 0
            and objective.is_floating_point()):
        got = (f"a {objective.dtype} tensor of shape {tuple(objective.shape)}"
               if isinstance(objective, torch.Tensor) else type(objective).__name__)
        raise TypeError(f"loss {_name(loss)} must return a floating scalar tensor to "
                        f"backpropagate; got {got}")
    if not isinstance(metrics, Mapping) or not all(isinstance(v, torch.Tensor)
                                                   for v in metrics.values()):
        raise TypeError(f"loss {_name(loss)}: metrics must be a mapping of name to tensor; got "
                        f"{type(metrics).__name__}")
    return LossOutput(objective, metrics)


def loss_totals(loss: Callable[..., Any], micro_batches: Sequence[Mapping[str, Any]],
                device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's ``loss.totals(micro_batches)`` as tensors on `device` ({} without the method).

    Raises:
        TypeError: ``totals`` returned something other than a mapping of name to tensor/number.
    """
    fn = getattr(loss, "totals", None)
    if not callable(fn):
        return {}
    got = fn(micro_batches)
    if not isinstance(got, Mapping):
        raise TypeError(f"loss {_name(loss)}.totals() must return a mapping of name to tensor; "
                        f"got {type(got).__name__}")
    return {k: torch.as_tensor(got[k]).to(device) for k in sorted(got)}  # same order on all ranks


def model_inputs(loss: Callable[..., Any], batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The keyword arguments of the model call for `batch`: ``loss.model_inputs(batch)`` if the
    loss defines it, else the batch itself."""
    fn = getattr(loss, "model_inputs", None)
    return fn(batch) if callable(fn) else batch
