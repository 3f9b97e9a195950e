"""The precision XT's rollout computes in (``rollout.dtype``), as a block entered around generation.

``"train"`` (the default) runs the KV-cache generation in the numerics of the trainer's forward:
``train.dtype`` resolved for the device (`xt.core.engine.precision.resolve_precision`), i.e. on
GPUs (and CPUs with native bf16) bf16 autocast with the bf16 compute copies of the matmul weights
(`xt.core.engine.compute_weights.ComputeWeights`), fp32 where the trainer is fp32. ``"fp32"``
runs the fp32 master weights without autocast, whatever the trainer does.

- On the trained model itself (one process, Ray colocated), `policy_precision` uses the policy
  engine's own `Engine.compute_context`: the copies the optimizer step just refreshed, no second set.
- On a model copy of its own (Ray disaggregated rollout actors), `copy_precision` builds compute
  copies over that copy with the trainer's ``train.weight_cast``; a weight load writes the fp32
  masters in place (``copy_`` / ``load_state_dict`` bump their version counters), so the next
  generation re-casts the copies first. Same weights and the same round-to-nearest casts: the
  samples and log-probs equal the colocated rollout's.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xt.core.engine import compute_region
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.precision import resolve_precision

__all__ = ["RolloutPrecision", "FP32_ROLLOUT", "policy_precision", "copy_precision"]


@dataclass(frozen=True)
class RolloutPrecision:
    """How a rollout engine runs its model.

    Attributes:
        context: called once per request; the returned context manager is entered around the
            generation (`xt.core.engine.compute_region`, or a null context for fp32).
        summary: one line for the run banner (the precision, and why).
        weights: the compute copies this rollout owns (disaggregated), or None.
    """

    context: Callable[[], contextlib.AbstractContextManager]
    summary: str
    weights: ComputeWeights | None = None


#: fp32 master weights, no autocast (``rollout.dtype = "fp32"``, and the default of `XTRolloutEngine`)
FP32_ROLLOUT = RolloutPrecision(contextlib.nullcontext, "fp32 (rollout.dtype = 'fp32')")


def _as_trainer_fp32(reason: str) -> RolloutPrecision:
    return RolloutPrecision(contextlib.nullcontext, f"fp32 as the trainer (rollout.dtype = 'train'; {reason})")


def policy_precision(engine: Any, dtype: str) -> RolloutPrecision:
    """The precision of a rollout on the policy engine's own model (colocated).

    Args:
        engine: the policy's `xt.core.engine.Engine`.
        dtype: ``rollout.dtype``, "train" or "fp32".

    Raises:
        ValueError: another `dtype`.
    """
    if dtype == "fp32":
        return FP32_ROLLOUT
    if dtype != "train":
        raise ValueError(f"rollout.dtype must be 'train' or 'fp32', got {dtype!r}")
    if engine.autocast_dtype is None:
        return _as_trainer_fp32(engine.precision.reason)
    how = ("the trainer's bf16 compute copies" if engine.compute_weights is not None
           else "weights cast on every use")
    return RolloutPrecision(engine.compute_context,
                            f"{engine.precision.name} autocast with {how}, as the trainer (rollout.dtype = 'train')")


def copy_precision(model: nn.Module, train: Any, dtype: str, device: torch.device) -> RolloutPrecision:
    """The precision of a rollout on a model copy of its own (disaggregated rollout actors):
    ``train.dtype`` resolved for `device` as the trainer resolves it, with compute copies of
    `model`'s weights when ``train.weight_cast = "per_step"`` (module docstring).

    Args:
        model: the rollout's fp32 model, on `device`.
        train: the ``[train]`` section (``dtype``, ``weight_cast``).
        dtype: ``rollout.dtype``, "train" or "fp32".
        device: the model's device.

    Raises:
        ValueError: another `dtype`, or an unknown ``train.dtype``.
    """
    if dtype == "fp32":
        return FP32_ROLLOUT
    if dtype != "train":
        raise ValueError(f"rollout.dtype must be 'train' or 'fp32', got {dtype!r}")
    precision = resolve_precision(train.dtype, device)
    if precision.autocast_dtype is None:
        return _as_trainer_fp32(precision.reason)
    weights = None
    if train.weight_cast == "per_step":
        weights = ComputeWeights(model, precision.autocast_dtype)
        weights = weights if weights.num_tensors else None
    how = (f"bf16 copies of {weights.num_tensors} weight tensors of its own model copy" if weights is not None
           else "weights cast on every use")
    return RolloutPrecision(functools.partial(compute_region, device, precision.autocast_dtype, weights),
                            f"{precision.name} autocast with {how}, as the trainer (rollout.dtype = 'train')",
                            weights)
