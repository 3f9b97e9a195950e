"""`Engine`: one training step of any model, as calls that a loop or an RL driver makes.

A step is ``zero_grad()`` → ``forward_backward(micro_batches, loss)`` (any number of calls; their
gradients add up) → ``optim_step()``. ``forward(micro_batches)`` runs the model without autograd
under the same precision, e.g. for reference or old-policy log-probs. The engine holds the model,
optimizer, LR scheduler, precision, bf16 compute weights and the `DistContext`; it knows nothing
of data, metrics files or checkpoint folders (that is `Trainer`'s loop).

``state_dict()`` is the engine's own small state (step counters and the LR scheduler); the model
and optimizer tensors are saved by `xt.core.checkpoint` through DCP, sharded. Pass the engine
as a named extra state to `save_checkpoint` / `load_checkpoint` to keep both together.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xt.core.config import OptimConfig, ScheduleConfig, TrainConfig
from xt.core.distributed import DistContext, LocalDistContext
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.optim import build_optimizer, build_scheduler, clip_divisor, takes_grad_scale
from xt.core.engine.precision import Precision, resolve_precision
from xt.core.engine.step import StepStats, compute_region, forward, forward_backward

__all__ = ["Engine", "OptimStats", "NONFINITE_GRAD_POLICIES"]

NONFINITE_GRAD_POLICIES = ("raise", "skip")
_FP32 = Precision(name="fp32", autocast_dtype=None, reason="fp32")


@dataclass
class OptimStats:
    """What one `Engine.optim_step` did.

    Attributes:
        grad_norm: global L2 norm of all gradients before clipping (python float; NaN or inf
            when the step was skipped for it).
        lr: learning rate of the first parameter group for this step (the one used, or the one
            that would have been used by a skipped step).
        skipped: True when the update was skipped for a non-finite gradient norm.
        metrics: what the model's ``post_optimizer_step`` returned (python numbers / nested
            lists); empty when the model has no hook or the step was skipped.
    """

    grad_norm: float
    lr: float
    skipped: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Forward/backward, no-grad forward and the optimizer step of one model (module docstring).

    Args:
        model: the model, on its device (wrapped/sharded by xt.parallel if wanted); model
            contract in docs/contracts.md.
        optimizer: over the model's parameters (e.g. `build_optimizer`).
        scheduler: an LR scheduler stepped after each applied update, or None.
        dist: the parallel layout (default `LocalDistContext`).
        precision: the resolved compute precision (`resolve_precision`); None = fp32.
        weight_cast: under an autocast precision, "per_step" holds bf16 copies of the matmul
            weights during forward and backward (`ComputeWeights`, refreshed after each update)
            and "per_use" lets autocast cast on every use (``train.weight_cast``).
        max_grad_norm: clip the global gradient norm to this; 0 = measure only.
        nonfinite_grad: "raise" or "skip" on a NaN/inf gradient norm (see `optim_step`).

    Attributes:
        step: `optim_step` calls so far (applied and skipped updates).
        skipped_steps: of those, the ones skipped for a non-finite gradient norm.
        compute_weights: the `ComputeWeights`, or None (fp32, "per_use", or nothing to copy).
            An optimizer with ``attach_compute_copies`` (`xt.kernels.optim.AdamWRefresh`) is given
            the copies and writes them in its step, so the separate re-cast pass is skipped.

    Raises:
        TypeError: if the model has no parameters.
        ValueError: an unknown `nonfinite_grad` or `weight_cast`, or a negative `max_grad_norm`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None, *,
                 dist: DistContext | None = None, precision: Precision | None = None,
                 weight_cast: str = "per_step", max_grad_norm: float = 0.0,
                 nonfinite_grad: str = "raise") -> None:
        params = list(model.parameters())
        if not params:
            raise TypeError("model has no parameters")
        if nonfinite_grad not in NONFINITE_GRAD_POLICIES:
            raise ValueError(f"Engine: nonfinite_grad must be one of {list(NONFINITE_GRAD_POLICIES)}, "
                             f"got {nonfinite_grad!r}")
        if weight_cast not in ("per_step", "per_use"):
            raise ValueError(f"Engine: weight_cast must be 'per_step' or 'per_use', got {weight_cast!r}")
        if not max_grad_norm >= 0:
            raise ValueError(f"Engine: max_grad_norm must be >= 0 (0 = no clipping), got {max_grad_norm!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.dist = dist or LocalDistContext()
        self.device = params[0].device
        self.precision = precision or _FP32
        self.weight_cast = weight_cast
        self.max_grad_norm = float(max_grad_norm)
        self.nonfinite_grad = nonfinite_grad
        self.compute_weights = self._compute_weights()
        # an optimizer that writes the compute copies in its step (optim.impl = "fused_bf16_refresh")
        attach = getattr(optimizer, "attach_compute_copies", None)
        self._optimizer_refreshes = callable(attach) and self.compute_weights is not None
        if self._optimizer_refreshes:
            attach(self.compute_weights.pairs)
        self.step = 0
        self.skipped_steps = 0
        self._last: StepStats | None = None

    @classmethod
    def from_config(cls, model: nn.Module, train: TrainConfig, optim: OptimConfig = OptimConfig(),
                    schedule: ScheduleConfig = ScheduleConfig(), *,
                    dist: DistContext | None = None) -> Engine:
        """The engine of a config: `train.dtype` resolved for the model's device, AdamW
        (`build_optimizer`), the schedule over `train.steps` (`build_scheduler`), and
        `train.weight_cast`, `train.max_grad_norm`, `train.nonfinite_grad`.

        Raises:
            TypeError: if the model has no parameters.
            ValueError: if `train.dtype` is unknown or the model has no trainable parameters.
        """
        params = list(model.parameters())
        if not params:
            raise TypeError("model has no parameters")
        precision = resolve_precision(train.dtype, params[0].device)
        optimizer = build_optimizer(model, optim)
        return cls(model, optimizer, build_scheduler(optimizer, schedule, train.steps), dist=dist,
                   precision=precision, weight_cast=train.weight_cast,
                   max_grad_norm=train.max_grad_norm, nonfinite_grad=train.nonfinite_grad)

    def _compute_weights(self) -> ComputeWeights | None:
        if self.autocast_dtype is None or self.weight_cast != "per_step":
            return None
        weights = ComputeWeights(self.model, self.autocast_dtype)
        return weights if weights.num_tensors else None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of forward passes (torch.bfloat16), or None for fp32."""
        return self.precision.autocast_dtype

    @property
    def precision_summary(self) -> str:
        """One line for the banner: the resolved precision, why, and how weights are cast."""
        if self.autocast_dtype is None:
            return f"{self.precision.reason} (train.weight_cast not used in fp32)"
        w = self.compute_weights
        if w is None:
            how = ("weights cast on every use (train.weight_cast = 'per_use')"
                   if self.weight_cast == "per_use" else
                   "weights cast on every use: no plain fp32 matrix to copy (FSDP2 casts its own)")
        else:
            how = (f"bf16 copies of {w.num_tensors} weight tensors ({w.num_params / 1e6:.1f}M "
                   "parameters) cast once per step (train.weight_cast = 'per_step')")
            if self._optimizer_refreshes:
                how += ", written by the optimizer's own pass"
        return f"{self.precision.reason}; {how}"

    # -- the step -----------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Drop every gradient (``.grad = None``)."""
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, micro_batches: Sequence[Mapping[str, Any]],
                         loss: Callable[..., Any] | None = None) -> StepStats:
        """Forward and backward over `micro_batches`, adding into ``.grad`` (gradient accumulation).

        Each micro-batch backpropagates ``loss(out, batch, ctx)`` (`xt.core.engine.objective`),
        by default `TokenMeanLoss`: ``loss_sum / N_global + aux_loss / (M * world_size)`` with
        N_global the label tokens of all micro-batches of all ranks. Runs under the engine's
        autocast with the compute weights swapped in; gradient sync is on for the last
        micro-batch only. Gradients add to what is there: call `zero_grad` first for a new step.

        Args:
            micro_batches: M >= 1 batches (docs/contracts.md, Batches), on any device.
            loss: the objective, or None for the default.

        Returns:
            `StepStats` (reduced over ranks).

        Raises:
            ValueError / KeyError / TypeError: see `xt.core.engine.step.forward_backward`.
        """
        self._last = forward_backward(self.model, micro_batches, self.dist, self.device,
                                      self.autocast_dtype, self.compute_weights, loss)
        return self._last

    def forward(self, micro_batches: Sequence[Mapping[str, Any]], *,
                training: bool | None = None) -> list[Any]:
        """The model's outputs on `micro_batches`, without autograd, as training computes them.

        Args:
            micro_batches: batches holding the model's keyword arguments (docs/contracts.md).
            training: None keeps the model's mode; False/True run it in eval/train mode and
                restore the mode afterwards.

        Returns:
            One model output per micro-batch (tensors on the model's device, no grad).
        """
        return forward(self.model, micro_batches, self.device, self.autocast_dtype,
                       self.compute_weights, training)

    def compute_context(self) -> contextlib.AbstractContextManager:
        """A block in which the model computes as the engine's own forward does: the compute
        weights swapped in (re-cast first if a master changed) and autocast at `autocast_dtype`;
        a no-op in fp32. For running the model outside `forward` in the training precision, e.g.
        the KV-cache rollout of `xt rl` on the trained model itself.

        Returns:
            A context manager (`xt.core.engine.step.compute_region`); not re-entrant, and not to be
            used around `forward` / `forward_backward`, which enter it themselves.

        Raises:
            RuntimeError: (on entry) the compute weights are already swapped in.
        """
        return compute_region(self.device, self.autocast_dtype, self.compute_weights)

    def optim_step(self) -> OptimStats:
        """Clip, update, refresh the compute weights, step the schedule, run the model's hook.

        The global gradient norm is measured (and clipped to `max_grad_norm` unless that is 0)
        by `DistContext.clip_grad_norm_`, so every rank sees the same norm and takes the same
        branch. With an optimizer that divides gradients by a ``grad_scale`` tensor itself
        (`takes_grad_scale`: torch's fused AdamW), the norm is only measured and the clip factor
        goes to the optimizer as ``grad_scale = clip_divisor(norm)`` (on the device), so the
        gradients are not scaled in a pass of their own. A finite norm: ``optimizer.step()``, compute-weights refresh, ``scheduler.step()``,
        ``model.post_optimizer_step(expert_load summed over ranks)`` if the model has it, then the
        gradients are dropped. A NaN/inf norm with ``nonfinite_grad="skip"``: the gradients are
        dropped and nothing else changes (weights, optimizer state, schedule and the model's
        hook statistics, which then carry into the next step); `skipped_steps` counts it.

        Returns:
            `OptimStats`.

        Raises:
            FloatingPointError: a NaN/inf norm with ``nonfinite_grad="raise"``; the optimizer
                step is not taken (the weights stay as after the previous step) and the
                gradients are left in place.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        # a fused AdamW divides the gradients by the clip factor as it reads them: no separate
        # read-and-write pass over every gradient (`takes_grad_scale`)
        fold = self.max_grad_norm > 0 and takes_grad_scale(self.optimizer)
        norm = self.dist.clip_grad_norm_(params, math.inf if fold else self.max_grad_norm or math.inf)
        grad_norm = float(norm)
        lr = self.optimizer.param_groups[0]["lr"]
        if not math.isfinite(grad_norm):
            if self.nonfinite_grad == "raise":
                raise FloatingPointError(
                    f"step {self.step + 1}: gradient norm is {grad_norm} (loss {self._last_loss()}); "
                    "optimizer step skipped. Lower optim.lr, check the data, or use train.dtype=fp32")
            self.zero_grad()
            self.step += 1
            self.skipped_steps += 1
            return OptimStats(grad_norm, lr, skipped=True)
        if fold:
            self.optimizer.grad_scale = clip_divisor(norm, self.max_grad_norm)
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale
        else:
            self.optimizer.step()
        if self._optimizer_refreshes:  # the step wrote every updated master's copy itself
            self.compute_weights.mark_fresh()
        else:
            self.refresh_compute_weights()
        if self.scheduler is not None:
            self.scheduler.step()
        hook_metrics = self._post_optimizer_step()
        self.zero_grad()
        self.step += 1
        return OptimStats(grad_norm, lr, skipped=False, metrics=hook_metrics)

    def _last_loss(self) -> float | None:
        last = self._last
        if last is None:
            return None
        value = last.loss if last.loss is not None else last.objective
        return None if value is None else float(value)

    def _post_optimizer_step(self) -> dict[str, Any]:
        """Call the model's optional ``post_optimizer_step(expert_load)`` after an update.

        Models with a rule that updates state from the step's routing (DeepSeek-V3's
        auxiliary-loss-free balancing bias) expose ``expert_load() -> Tensor`` (local routed-slot
        counts) and ``post_optimizer_step(load) -> dict[str, Tensor]``. The engine sums the load
        over all ranks first, so the rule sees the global batch. Returned tensors are logged.
        """
        hook = getattr(self.model, "post_optimizer_step", None)
        if not callable(hook):
            return {}
        load_fn = getattr(self.model, "expert_load", None)
        load = self.dist.all_reduce_sum(load_fn().detach().clone()) if callable(load_fn) else None
        out = hook(load) or {}
        return {k: (v.detach().cpu().tolist() if torch.is_tensor(v) and v.ndim else float(v))
                for k, v in out.items()}

    def refresh_compute_weights(self) -> None:
        """Re-cast the bf16 compute copies from the fp32 masters (after the masters were written,
        e.g. by a checkpoint load); nothing without compute weights."""
        if self.compute_weights is not None:
            self.compute_weights.refresh()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The engine's own state: ``{"step": int, "skipped_steps": int, "scheduler": dict | None}``
        (python primitives; model and optimizer tensors are not in it, see the module docstring)."""
        return {"step": self.step, "skipped_steps": self.skipped_steps,
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()` output, and re-cast the compute copies from the masters (which
        `load_checkpoint` has just loaded when it restores the engine as an extra state).

        Raises:
            ValueError: a key is missing, or the state has a scheduler state and this engine has
                no scheduler (or the reverse).
        """
        missing = [k for k in ("step", "skipped_steps", "scheduler") if k not in state]
        if missing:
            raise ValueError(f"Engine.load_state_dict: the state has no {', '.join(missing)} "
                             f"(keys: {sorted(state)})")
        if (state["scheduler"] is None) != (self.scheduler is None):
            have = "has no" if self.scheduler is None else "has an"
            raise ValueError(f"Engine.load_state_dict: this engine {have} LR scheduler but the state "
                             f"{'has' if state['scheduler'] is not None else 'has no'} scheduler state")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.refresh_compute_weights()
