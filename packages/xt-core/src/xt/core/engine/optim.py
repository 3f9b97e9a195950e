"""AdamW and the warmup + cosine/linear/constant learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from xt.core.config import ConfigError, OptimConfig, ScheduleConfig

__all__ = ["build_optimizer", "build_scheduler", "clip_divisor", "lr_factor", "register_adamw_impl",
           "takes_grad_scale"]

CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_ and xt.parallel.clip

# optim.impl values whose optimizer lives in a package above xt.core (xt.kernels registers
# "fused_bf16_refresh" when imported); factory(groups, lr=, betas=, eps=) -> Optimizer
_REGISTERED: dict[str, Callable[..., torch.optim.Optimizer]] = {}
_PROVIDERS = {"fused_bf16_refresh": "xt.kernels.optim (xt-kernels)"}


def register_adamw_impl(name: str, factory: Callable[..., torch.optim.Optimizer]) -> None:
    """Make ``optim.impl = name`` build ``factory(groups, lr=, betas=, eps=)``.

    For AdamW implementations of packages above xt.core (which cannot import them); the name
    must be one that `OptimConfig.impl` allows.

    Raises:
        ValueError: `name` is not a registrable ``optim.impl`` value.
    """
    if name not in _PROVIDERS:
        raise ValueError(f"register_adamw_impl: {name!r} is not one of {sorted(_PROVIDERS)}")
    _REGISTERED[name] = factory


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters (torch.optim.AdamW; Loshchilov & Hutter 2019).

    Parameters with `ndim >= 2` (matrices, embeddings, expert weights) get `cfg.weight_decay`;
    1-D ones (norm weights, biases) get 0 unless `cfg.decay_1d_params`. Tied parameters appear
    once. Group order is [decayed, not decayed] (empty groups are left out); with
    `cfg.part_lr`, those two hold the parameters outside the named parts and are followed by the
    same pair for each named part (sorted by name), with that part's ``lr``. The parts are the
    model's ``xt_param_parts`` (``{part: qualified-name prefixes}``).

    Args:
        model: the (possibly already sharded) model; parameters with requires_grad=False are left
            out.
        cfg: hyper-parameters and implementation choice (`OptimConfig.impl`).

    Returns:
        A `torch.optim.AdamW` with `lr = cfg.lr` (the schedule scales it); for
        ``impl = "fused_bf16_refresh"`` XT's `xt.kernels.optim.AdamWRefresh` (same update and
        state keys, compute copies written in the step).

    Raises:
        ValueError: if the model has no trainable parameters.
        xt.core.config.ConfigError: ``optim.part_lr`` names a part the model does not have;
            ``optim.impl`` names an implementation whose package is not imported, or that refuses
            these parameters.
    """
    parts = _lr_parts(model, cfg.part_lr)
    split: dict[str | None, tuple[list, list]] = {None: ([], [])} | {n: ([], []) for n in sorted(cfg.part_lr)}
    for name, p in model.named_parameters():  # named_parameters() already yields tied parameters once
        if not p.requires_grad:
            continue
        part = next((n for n, prefixes in parts.items() if name.startswith(prefixes)), None)
        split[part][0 if p.ndim >= 2 or cfg.decay_1d_params else 1].append(p)
    if not any(ps for pair in split.values() for ps in pair):
        raise ValueError("build_optimizer: the model has no parameters with requires_grad=True")
    groups = []
    for part, (decay, no_decay) in split.items():
        lr = {} if part is None else {"lr": cfg.part_lr[part]}
        groups += [{"params": ps, "weight_decay": wd, **lr}
                   for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps]
    if cfg.impl in _PROVIDERS:
        factory = _REGISTERED.get(cfg.impl)
        if factory is None:
            raise ConfigError(f"optim.impl: {cfg.impl!r} is provided by {_PROVIDERS[cfg.impl]}, which is not "
                              "imported; import it first or use 'auto'")
        return factory(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    kwargs: dict = {}
    impl = cfg.impl
    if impl == "auto":
        impl = "fused" if all(p.is_cuda for g in groups for p in g["params"]) else "foreach"
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def takes_grad_scale(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` divides every gradient by an ``optimizer.grad_scale`` tensor.

    True for torch's fused Adam / AdamW over plain (non-DTensor) parameters: their kernel reads
    ``grad_scale`` (a float32 scalar tensor, read on the device, no host sync) and divides each
    gradient element by it before the update (the hook `torch.amp.GradScaler` uses; torch/optim/
    adam.py passes ``getattr(self, "grad_scale", None)`` to ``torch._fused_adamw_``, torch 2.11 as
    2.13). Also true for an optimizer with ``xt_takes_grad_scale = True`` (XT's own fused AdamW,
    `xt.kernels.optim`). DTensor (FSDP2) parameters are left to the separate clip pass: the
    sharded fused op's handling of a plain scale tensor is not tested here.
    """
    if getattr(optimizer, "xt_takes_grad_scale", False):
        return True
    if not isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam
        return False
    groups = optimizer.param_groups
    return bool(groups) and all(g.get("fused") for g in groups) and all(
        type(p.data) is torch.Tensor for g in groups for p in g["params"])


def clip_divisor(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The scale that clips when gradients are divided by it: ``max(1, (norm + eps) / max_norm)``.

    Dividing by it is clipping to `max_norm` (``g · min(1, max_norm / (norm + eps))``, the rule of
    ``torch.nn.utils.clip_grad_norm_``, eps = 1e-6), rounded once instead of twice: per element
    within one float32 rounding of the multiplied gradient, and exactly 1 (no change) when the
    norm is under the threshold.

    Args:
        norm: the global gradient L2 norm, a scalar tensor (any float dtype, on the device).
        max_norm: the threshold, > 0.

    Returns:
        A float32 scalar tensor on `norm`'s device (no host synchronisation).
    """
    return ((norm.double() + CLIP_EPS) / max_norm).clamp(min=1.0).float()


def _lr_parts(model: nn.Module, part_lr: dict[str, float]) -> dict[str, tuple[str, ...]]:
    """The parameter-name prefixes of each part named in `part_lr` (the model's ``xt_param_parts``)."""
    if not part_lr:
        return {}
    known = getattr(model, "xt_param_parts", None) or {}
    bad = sorted(set(part_lr) - set(known))
    if bad:
        allowed = f"its parts are {sorted(known)}" if known else "it has no named parts (only one learning rate)"
        raise ConfigError(f"optim.part_lr: {type(model).__name__} has no part {', '.join(map(repr, bad))}; {allowed}")
    return {n: tuple(known[n]) for n in part_lr}


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based) of `total_steps`.

    With W = warmup_steps, r = min_lr_ratio, p = clamp((step - W) / max(1, total_steps - W), 0, 1):
    warmup (step < W): (step + 1) / W; then cosine r + (1 - r)(1 + cos(pi p)) / 2
    (Loshchilov & Hutter 2017, SGDR without restarts), linear r + (1 - r)(1 - p), or constant 1.

    Returns:
        The factor in [0, 1] (a python float).
    """
    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    if cfg.decay == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - w) / max(1, total_steps - w)))
    r = cfg.min_lr_ratio
    if cfg.decay == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))
    return r + (1.0 - r) * (1.0 - p)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                    total_steps: int) -> LambdaLR:
    """A `LambdaLR` applying `lr_factor`: after k calls to `.step()` the LR is
    ``peak * lr_factor(k, total_steps, cfg)``, i.e. the LR used by optimizer step k (0-based).

    Its `state_dict()` holds only counters (the lambda is rebuilt from the config), so it
    checkpoints and restores with the run.
    """
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
