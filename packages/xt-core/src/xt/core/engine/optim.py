"""AdamW and the warmup + cosine/linear/constant learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from xt.core.config import OptimConfig, ScheduleConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (torch.optim.AdamW; Loshchilov & Hutter 2019).

    Parameters with `ndim >= 2` (matrices, embeddings, expert weights) get `cfg.weight_decay`;
    1-D ones (norm weights, biases) get 0 unless `cfg.decay_1d_params`. Tied parameters appear
    once. Group order is [decayed, not decayed] (empty groups are left out).

    Args:
        model: the (possibly already sharded) model; parameters with requires_grad=False are left
            out.
        cfg: hyper-parameters and implementation choice (`OptimConfig.impl`).

    Returns:
        A `torch.optim.AdamW` with `lr = cfg.lr` (the schedule scales it).

    Raises:
        ValueError: if the model has no trainable parameters.
    """
    decay, no_decay = [], []
    for p in model.parameters():  # nn.Module.parameters() already yields tied parameters once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 or cfg.decay_1d_params else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("build_optimizer: the model has no parameters with requires_grad=True")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
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
