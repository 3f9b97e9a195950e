"""Build the policy side of an RL run the way `xt train` builds its model, and save / restore it.

One function for every orchestration: `xt rl` on one process and the trainer actor under Ray
(`xt.rl.cluster`) both call `build_policy`, so both start from the same weights (the seed is set
first, then `xt.models.build_run_model`, then `Engine.from_config`) and checkpoint the same state
(`save_policy` / `load_policy`: model + optimizer with DCP, the engine's step and schedule, the
weight version, the prompt position, RNG; atomic, `xt.core.checkpoint`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xt.core.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from xt.core.engine import Engine
from xt.kernels.config import apply_kernels_config
from xt.models import build_run_model
from xt.rl.loop.trainer import PolicyTrainer

__all__ = ["PolicyParts", "RunState", "StateHolder", "build_policy", "save_policy", "load_policy"]


class RunState:
    """The loop's own checkpointed counter: the weight version (trainer and, when given, the rollout
    engine that holds the same model)."""

    def __init__(self, trainer: PolicyTrainer, rollout: Any = None) -> None:
        self.trainer, self.rollout = trainer, rollout

    def state_dict(self) -> dict[str, int]:
        """``{"weight_version": int}``."""
        return {"weight_version": self.trainer.weight_version}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Set the weight version of the trainer (and rollout)."""
        self.trainer.weight_version = int(state["weight_version"])
        if self.rollout is not None:
            self.rollout.weight_version = int(state["weight_version"])


class StateHolder:
    """A `Stateful` around a plain state dict: how a process that does not own an object (the Ray
    trainer actor and the driver's `PromptSource`) checkpoints its state. ``state`` is what
    `save_policy` writes and what `load_policy` read back."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        """The held state."""
        return dict(self.state or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep `state`."""
        self.state = dict(state)


@dataclass
class PolicyParts:
    """What `build_policy` made: the policy model, its engine, the frozen reference engine (or
    None), the `PolicyTrainer` and the `RunState`."""
    model: torch.nn.Module
    engine: Engine
    reference: Engine | None
    trainer: PolicyTrainer
    state: RunState

    def extra_state(self, **more: Any) -> dict[str, Any]:
        """The named extra states of a checkpoint: ``engine`` (step, schedule), ``rl_run`` and `more`."""
        return {"engine": self.engine, "rl_run": self.state, **more}


def build_policy(cfg: Any, device: str | torch.device) -> PolicyParts:
    """Seed, build the model of ``cfg.model`` on `device`, apply ``[kernels]`` and assemble the
    engine (``[train]``, ``[optim]``, ``[schedule]``), the reference (a frozen deep copy when
    ``rl.kl_coef > 0``) and the trainer (``[rollout]`` updates, replay; ``train.micro_batches_per_step``).

    Args:
        cfg: an `xt rl` config (anything with the sections ``model``, ``train``, ``optim``,
            ``schedule``, ``kernels``, ``rl``, ``rollout``).
        device: where the model lives.

    Raises:
        what `xt.models.build_run_model` and `Engine.from_config` raise (bad model fields, weights
        that do not load, a bad dtype).
    """
    seed_everything(cfg.train.seed)
    model = build_run_model(cfg.model, device)
    apply_kernels_config(cfg.kernels)
    reference = None
    if cfg.rl.kl_coef > 0:
        ref_model = copy.deepcopy(model).requires_grad_(False)
        reference = Engine.from_config(ref_model, cfg.train, cfg.optim, cfg.schedule)
    engine = Engine.from_config(model, cfg.train, cfg.optim, cfg.schedule)
    trainer = PolicyTrainer(engine, cfg.rl, updates_per_step=cfg.rollout.updates_per_step,
                            micro_batches=cfg.train.micro_batches_per_step,
                            routing_replay=cfg.rollout.routing_replay, reference=reference)
    return PolicyParts(model, engine, reference, trainer, RunState(trainer))


def save_policy(parts: PolicyParts, out_dir: str | Path, loader: Any, keep_last: int = 0,
                extra: dict[str, Any] | None = None) -> Path:
    """Checkpoint ``out_dir/checkpoints/step-N`` (N = the engine's optimizer step): model, optimizer,
    `loader` (the prompt position), the parts' extra states plus `extra`, RNG. Atomic. Returns the folder."""
    return save_checkpoint(out_dir, parts.engine.step, parts.model, parts.engine.optimizer, None, loader,
                           keep_last=keep_last, extra_state=parts.extra_state(**(extra or {})))


def load_policy(parts: PolicyParts, path: str | Path, loader: Any, extra: dict[str, Any] | None = None) -> int:
    """Restore a `save_policy` checkpoint into `parts`, `loader` and `extra`; returns its step.

    Raises:
        xt.core.errors.CheckpointError: a checkpoint of another model or run layout.
    """
    return load_checkpoint(path, parts.model, parts.engine.optimizer, None, loader,
                           extra_state=parts.extra_state(**(extra or {})))
