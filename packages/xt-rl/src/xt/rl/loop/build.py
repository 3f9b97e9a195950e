"""Build the policy side of an RL run the way `xt train` builds its model, and save / restore it.

One function for every orchestration: `xt rl` on one process and the trainer actors under Ray
(`xt.rl.cluster`) both call `build_policy`, so both start from the same weights and checkpoint the
same state. The model is assembled as `xt train` assembles it (`build_laid_out`, the library calls
of docs/architecture.md, Where a run is assembled): built on the meta device
(`xt.models.run_model_source`), laid out by ``[parallel]`` and materialised with this rank's shards
only (`xt.parallel.apply_layout`; an ``init_from`` HF folder is read row by row, each rank its
shards'), XT weights loaded after the layout (`xt.models.finish_run_model`); then
`Engine.from_config` with the layout's `DistContext`. The state is saved
(`save_policy` / `load_policy`: model + optimizer with DCP, the engine's step and schedule, the
weight version, the prompt position, RNG; atomic, `xt.core.checkpoint`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xt.core.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from xt.core.engine import Engine
from xt.kernels.config import apply_kernels_config
from xt.core.distributed import DistContext
from xt.models import finish_run_model, run_model_source
from xt.parallel.config import ParallelConfig
from xt.parallel.discover import config_sizes
from xt.parallel.layout import apply_layout, check_layout
from xt.parallel.mesh import validate_layout
from xt.rl.loop.trainer import PolicyTrainer

__all__ = ["PolicyParts", "RunState", "StateHolder", "build_laid_out", "check_trainer_layout", "build_policy", "save_policy",
           "load_policy"]


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
    None), the `PolicyTrainer`, the `RunState` and the layout's `DistContext`."""
    model: torch.nn.Module
    engine: Engine
    reference: Engine | None
    trainer: PolicyTrainer
    state: RunState
    dist: DistContext | None = None

    def extra_state(self, **more: Any) -> dict[str, Any]:
        """The named extra states of a checkpoint: ``engine`` (step, schedule), ``rl_run`` and `more`."""
        return {"engine": self.engine, "rl_run": self.state, **more}


def check_trainer_layout(parallel: ParallelConfig, workers: int, model_config: Any) -> None:
    """Validate ``[parallel]`` for a trainer of `workers` ranks (``orchestrator.trainer_workers``)
    before anything is built: at 1 as `xt train` on one process (`xt.parallel.check_layout`), else
    against a world of `workers` ranks and the model's sizes (`xt.parallel.mesh.validate_layout`).

    Raises:
        xt.parallel.LayoutError: the layout cannot work (why, and what is valid).
    """
    if workers == 1:
        check_layout(parallel, model_config)
    else:
        validate_layout(parallel, workers, **config_sizes(model_config))


def build_laid_out(model_section: Any, kernels: Any, parallel: ParallelConfig,
                   device: torch.device) -> tuple[torch.nn.Module, DistContext]:
    """The model of `model_section` as `xt train` builds it (module docstring): on meta, ``[kernels]``
    applied, laid out by `parallel` (FSDP2 / EP under a process group from torchrun's environment,
    e.g. set by a Ray trainer actor; the plain model on one process with the defaults) and
    materialised on `device` with this rank's shards; seed beforehand. Returns ``(model, dist)``.

    Raises:
        what `xt.models.run_model_source`, `xt.parallel.apply_layout` and
        `xt.models.finish_run_model` raise (bad model fields, a checkpoint that does not fit, a bad layout).
    """
    model, read = run_model_source(model_section, device)
    apply_kernels_config(kernels)
    model, dist = apply_layout(model, parallel, device_type=torch.device(device).type, device=device, read=read)
    return finish_run_model(model_section, model), dist


def build_policy(cfg: Any, device: str | torch.device) -> PolicyParts:
    """Seed, build the model of ``cfg.model`` on `device` laid out by ``cfg.parallel`` (`build_laid_out`;
    a config without ``[parallel]`` gets its defaults) and assemble the engine (``[train]``,
    ``[optim]``, ``[schedule]``), the reference (``rl.kl_coef > 0``: the same build again from the
    same seed, frozen) and the trainer (``[rollout]`` updates, replay; ``train.micro_batches_per_step``).

    Args:
        cfg: an `xt rl` config (anything with the sections ``model``, ``train``, ``optim``,
            ``schedule``, ``kernels``, ``rl``, ``rollout`` and optionally ``parallel``).
        device: where the model lives.

    Raises:
        what `build_laid_out` and `Engine.from_config` raise (bad model fields, weights that do not
        load, a bad layout, a bad dtype).
    """
    parallel = getattr(cfg, "parallel", None) or ParallelConfig()
    device = torch.device(device)
    seed_everything(cfg.train.seed)
    model, dist = build_laid_out(cfg.model, cfg.kernels, parallel, device)
    reference = None
    if cfg.rl.kl_coef > 0:  # the same seed and build: the same weights (and the same RNG state after)
        seed_everything(cfg.train.seed)
        ref_model = build_laid_out(cfg.model, cfg.kernels, parallel, device)[0]
        reference = Engine.from_config(ref_model, cfg.train, cfg.optim, cfg.schedule, dist=dist)
        ref_model.requires_grad_(False)  # after the engine: its optimizer needs trainable parameters, and never steps
    engine = Engine.from_config(model, cfg.train, cfg.optim, cfg.schedule, dist=dist)
    trainer = PolicyTrainer(engine, cfg.rl, updates_per_step=cfg.rollout.updates_per_step,
                            micro_batches=cfg.train.micro_batches_per_step,
                            routing_replay=cfg.rollout.routing_replay, reference=reference, dist=dist)
    return PolicyParts(model, engine, reference, trainer, RunState(trainer), dist)


def save_policy(parts: PolicyParts, out_dir: str | Path, loader: Any, keep_last: int = 0,
                extra: dict[str, Any] | None = None) -> Path:
    """Checkpoint ``out_dir/checkpoints/step-N`` (N = the engine's optimizer step): model, optimizer,
    `loader` (the prompt position), the parts' extra states plus `extra`, RNG. Atomic; collective
    over the ranks of a laid-out policy (each writes its shards). Returns the folder."""
    return save_checkpoint(out_dir, parts.engine.step, parts.model, parts.engine.optimizer, None, loader,
                           parts.dist, keep_last=keep_last, extra_state=parts.extra_state(**(extra or {})))


def load_policy(parts: PolicyParts, path: str | Path, loader: Any, extra: dict[str, Any] | None = None) -> int:
    """Restore a `save_policy` checkpoint into `parts`, `loader` and `extra`; returns its step.

    Raises:
        xt.core.errors.CheckpointError: a checkpoint of another model or run layout.
    """
    return load_checkpoint(path, parts.model, parts.engine.optimizer, None, loader, parts.dist,
                           extra_state=parts.extra_state(**(extra or {})))
