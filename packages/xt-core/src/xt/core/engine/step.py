"""Running one step's micro-batches through the model: `forward_backward` (gradient
accumulation) and `forward` (no grad), both under the run's autocast and compute-weight swap.

Model contract (docs/contracts.md): ``out = model(**batch)`` returns an object with
``loss_sum`` (fp32 scalar: summed CE over labels != -100), ``aux_loss`` (fp32 scalar or None,
weighted and normalised within the micro-batch), ``metrics`` (dict of tensors, optional), and the
model may define ``flops_per_token(seq_len) -> float``. The objective each micro-batch
backpropagates is a `Loss` (`xt.core.engine.objective`; default `TokenMeanLoss`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xt.core.distributed import DistContext
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.loss import count_label_tokens
from xt.core.engine.metrics import effective_seq_len
from xt.core.engine.objective import (LossContext, TokenMeanLoss, as_loss_output, loss_totals,
                                      model_inputs)

__all__ = ["StepStats", "to_device", "forward_backward", "forward", "compute_region"]


@dataclass
class StepStats:
    """What one step's forward/backward measured (all reduced over ranks).

    Attributes:
        loss: global token-mean cross-entropy ``sum(out.loss_sum) / N_global`` (fp32 scalar
            tensor, detached), whatever the objective; None when the model returned no
            ``loss_sum`` (possible with a custom loss).
        aux_loss: mean of the micro-batches' `aux_loss` over micro-batches and ranks, or None
            if the model returned none.
        loss_tokens: label tokens (!= -100) of the step over all ranks.
        num_tokens: input tokens of the step over all ranks (what throughput counts).
        seq_len: token-weighted mean document length (`effective_seq_len`, this rank).
        metrics: the model's `out.metrics`, averaged over micro-batches and ranks.
        objective: what was backpropagated, summed over micro-batches and ranks (fp32 scalar,
            reduced in float64): the step objective; for the default loss ``loss + aux_loss``.
        loss_metrics: the loss's metrics, summed over micro-batches and ranks (float64).
    """

    loss: torch.Tensor | None
    aux_loss: torch.Tensor | None
    loss_tokens: int
    num_tokens: int
    seq_len: float
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    objective: torch.Tensor | None = None
    loss_metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def check_packed_on_host(batch: Mapping[str, Any]) -> None:
    """Check a host micro-batch's ``cu_seqlens`` against its packed ``input_ids [T]`` (start at 0,
    never fall, end at T or, for a sequence-parallel shard with ``position_ids``, a multiple of T).

    Models read device-resident ``cu_seqlens`` back only when they must (that stalls the host
    every forward), so micro-batches are checked here, on the host, before they are copied.

    Raises:
        ValueError: boundaries that break this (the message names ``cu_seqlens`` and T).
    """
    cu, ids = batch.get("cu_seqlens"), batch.get("input_ids")
    if not (isinstance(cu, torch.Tensor) and isinstance(ids, torch.Tensor)) or cu.device.type != "cpu" \
            or ids.dim() != 1 or cu.dim() != 1 or cu.numel() < 2:
        return  # not packed host tensors: the model checks what it gets
    b, T = cu.tolist(), ids.shape[0]
    shard = "position_ids" in batch and T > 0 and b[-1] > T and b[-1] % T == 0
    if b[0] != 0 or (b[-1] != T and not shard) or any(y < x for x, y in zip(b[:-1], b[1:])):
        raise ValueError(f"micro-batch cu_seqlens must rise from 0 to T={T}; got {b[:8]}{'...' if len(b) > 8 else ''}")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy a micro-batch's tensors to `device` (non-blocking), after `check_packed_on_host`;
    other values pass through.

    Raises:
        ValueError: from `check_packed_on_host`.
    """
    check_packed_on_host(batch)
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _compute_context(device: torch.device, autocast_dtype: torch.dtype | None,
                     weights: ComputeWeights | None) -> tuple[contextlib.AbstractContextManager,
                                                              contextlib.AbstractContextManager]:
    """(autocast region or a null context, compute-weight swap or a null context)."""
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    return amp, weights.swapped() if weights is not None else contextlib.nullcontext()


@contextlib.contextmanager
def compute_region(device: torch.device, autocast_dtype: torch.dtype | None,
                   weights: ComputeWeights | None) -> Iterator[None]:
    """The precision of the training forward as one block: `weights` swapped in
    (`ComputeWeights.swapped`, re-cast first if a master changed) around a `torch.autocast` region
    of `autocast_dtype`; with neither (fp32) a no-op. For code that runs the model outside
    `forward` / `forward_backward` in the same numerics, e.g. KV-cache rollouts.

    Args:
        device: the model's device (its type picks the autocast backend).
        autocast_dtype: torch.bfloat16 / torch.float16, or None (no autocast).
        weights: the compute copies to hold in the model, or None.

    Raises:
        RuntimeError: `weights` are already swapped in (a nested block).
    """
    amp, swap = _compute_context(device, autocast_dtype, weights)
    with swap, amp:
        yield


def forward_backward(model: nn.Module, micro_batches: Sequence[Mapping[str, Any]],
                     dist_ctx: DistContext, device: torch.device,
                     autocast_dtype: torch.dtype | None = None,
                     weights: ComputeWeights | None = None,
                     loss: Callable[..., Any] | None = None) -> StepStats:
    """Run forward and backward over one step's micro-batches, accumulating gradients.

    The label tokens of all micro-batches (and the loss's own ``totals``) are counted and
    all-reduced first; each micro-batch then backpropagates ``loss(out, batch, ctx)``, by default
    ``loss_sum / N_global + aux_loss / (M * world_size)`` (`TokenMeanLoss`), so splitting the same
    sequences differently into micro-batches gives the same loss and gradients. Gradients are
    added to ``param.grad`` (zero them first).

    Args:
        model: called as ``model(**model_inputs(loss, micro_batch))``; see the module docstring
            for its output.
        micro_batches: M >= 1 batches (dicts of tensors, docs/contracts.md), on any device; each
            needs ``labels`` ``[T]`` or ``[B, S]`` int64 (counted for ``ctx.global_tokens``).
        dist_ctx: reductions across ranks; gradient sync is disabled for all but the last
            micro-batch.
        device: the model's device (batches are moved there).
        autocast_dtype: e.g. torch.bfloat16 to run the forward and the loss under `torch.autocast`
            (backward outside it, as torch recommends); None = off.
        weights: bf16 compute copies to hold in the model during forward and backward
            (`ComputeWeights.swapped`; their gradients still land in the fp32 ``.grad``), or None.
        loss: the objective (`xt.core.engine.objective.Loss`); None = `TokenMeanLoss`.

    Returns:
        `StepStats` for the step.

    Raises:
        ValueError: if `micro_batches` is empty.
        KeyError / TypeError: if a batch has no labels, the model output breaks the contract, or
            the loss returns something other than a floating scalar (and metrics).
    """
    if not micro_batches:
        raise ValueError("forward_backward needs at least one micro-batch")
    loss = TokenMeanLoss() if loss is None else loss
    seq_len = effective_seq_len(micro_batches)  # from the host copies: no device read-back
    mbs = [to_device(mb, device) for mb in micro_batches]
    n = len(mbs)
    world = dist_ctx.world_size
    global_tokens = dist_ctx.all_reduce_sum(count_label_tokens(mbs, device))
    totals = {k: dist_ctx.all_reduce_sum(v) for k, v in loss_totals(loss, mbs, device).items()}
    acc = _Accumulator(device)
    amp, swap = _compute_context(device, autocast_dtype, weights)
    with swap:
        for i, mb in enumerate(mbs):
            dist_ctx.set_grad_sync(model, i == n - 1)
            with amp:  # the loss too: a loss that owns the LM head runs it in the forward's precision
                out = model(**model_inputs(loss, mb))
                ctx = LossContext(global_tokens, n, world, i, totals)
                result = as_loss_output(loss(out, mb, ctx), loss)
            result.objective.backward()
            acc.add(out, result)
    return acc.reduce(dist_ctx, mbs, global_tokens, seq_len)


@torch.no_grad()
def forward(model: nn.Module, micro_batches: Sequence[Mapping[str, Any]], device: torch.device,
            autocast_dtype: torch.dtype | None = None, weights: ComputeWeights | None = None,
            training: bool | None = None) -> list[Any]:
    """Run the model on each micro-batch without autograd, as `forward_backward` runs it.

    Same device move, autocast region and compute-weight swap as training, so the outputs are the
    training forward's values (for reference or old-policy log-probs). No gradient is recorded or
    accumulated and no collective is issued by the engine (a sharded model still gathers its own
    parameters).

    Args:
        model: called as ``model(**micro_batch)`` (pass batches holding only the model's inputs).
        micro_batches: batches (dicts of tensors, docs/contracts.md), on any device.
        device, autocast_dtype, weights: as for `forward_backward`.
        training: None keeps the model's mode; False runs it in eval mode (dropout off; routers
            then keep no load statistics) and True in train mode, restoring the mode afterwards.

    Returns:
        The model outputs, one per micro-batch in order, tensors on `device` without grad.
    """
    was_training = model.training
    if training is not None:
        model.train(training)
    amp, swap = _compute_context(device, autocast_dtype, weights)
    try:
        with swap:
            outs = []
            for mb in micro_batches:
                with amp:
                    outs.append(model(**to_device(mb, device)))
            return outs
    finally:
        if training is not None:
            model.train(was_training)


class _Accumulator:
    """Sums of one step's micro-batch results on this rank, reduced over ranks by `reduce`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.aux = torch.zeros((), dtype=torch.float32, device=device)
        self.objective = torch.zeros((), dtype=torch.float64, device=device)
        self.has_loss = self.has_aux = False
        self.model_metrics: dict[str, torch.Tensor] = {}
        self.loss_metrics: dict[str, torch.Tensor] = {}

    def add(self, out: Any, result: Any) -> None:
        loss_sum = getattr(out, "loss_sum", None)
        if isinstance(loss_sum, torch.Tensor):
            self.has_loss = True
            self.loss += loss_sum.detach().float()
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            self.has_aux = True
            self.aux += aux.detach().float()
        self.objective += result.objective.detach().double()
        _add_into(self.model_metrics, getattr(out, "metrics", None) or {}, torch.float32, self.device)
        _add_into(self.loss_metrics, result.metrics, torch.float64, self.device)

    def reduce(self, dist_ctx: DistContext, mbs: list[dict[str, Any]],
               global_tokens: torch.Tensor, seq_len: float) -> StepStats:
        n, world = len(mbs), dist_ctx.world_size
        num_tokens = sum(int(mb["input_ids"].numel()) for mb in mbs)
        packed = torch.stack([self.loss.double(), self.aux.double(),
                              torch.tensor(float(num_tokens), dtype=torch.float64, device=self.device),
                              self.objective])
        packed = dist_ctx.all_reduce_sum(packed)  # float64: token counts stay exact
        n_global = int(global_tokens.item())
        metrics = {k: dist_ctx.all_reduce_sum(v / n) / world for k, v in self.model_metrics.items()}
        loss_metrics = {k: dist_ctx.all_reduce_sum(self.loss_metrics[k])
                        for k in sorted(self.loss_metrics)}
        return StepStats(
            loss=(packed[0] / max(n_global, 1)).float() if self.has_loss else None,
            aux_loss=(packed[1] / (n * world)).float() if self.has_aux else None,
            loss_tokens=n_global,
            num_tokens=int(packed[2].item()),
            seq_len=seq_len,
            metrics=metrics,
            objective=packed[3].float(),
            loss_metrics=loss_metrics,
        )


def _add_into(acc: dict[str, torch.Tensor], new: Mapping[str, Any], dtype: torch.dtype,
              device: torch.device) -> None:
    for k, v in new.items():
        v = torch.as_tensor(v).detach().to(device=device, dtype=dtype)
        acc[k] = acc[k] + v if k in acc else v.clone()
