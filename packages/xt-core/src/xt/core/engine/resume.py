"""What a resume does with settings that changed since the checkpoint: apply them and say so, or
refuse with the reason.

Every checkpoint of a `Trainer` holds its ``[train]``, ``[optim]`` and ``[schedule]`` sections
(the named extra state ``settings``, a `RunSettings`). On resume the Trainer reads them before
anything is loaded and compares them with the current ones (`changed_settings`):

- ``optim.decay_1d_params`` changes which parameters share an AdamW group, so the saved optimizer
  state no longer fits: refused (`refuse_changes`).
- Every other optimizer setting (lr, betas, eps, weight_decay, impl) is applied: the freshly built
  optimizer's group hyper-parameters and the scheduler's base LRs replace the saved ones after the
  load (`apply_fresh_hyperparameters`); AdamW's moments and step counts stay.
- ``[schedule]`` and ``train.steps``: the LR factor is a function of the step, rebuilt from the
  current config, so from the next step on it follows the new schedule.
- ``train.seed`` has no effect (the checkpoint's RNG state is restored); ``train.out_dir`` is
  where the run is now. Everything else in ``[train]`` simply applies from the next step.

`describe_changes` renders the summary the Trainer prints.
"""
from __future__ import annotations

from typing import Any

import msgspec
import torch

from xt.core.errors import CheckpointError

__all__ = ["RUN_SETTINGS", "RunSettings", "changed_settings", "refuse_changes", "describe_changes",
           "snapshot_hyperparameters", "apply_fresh_hyperparameters", "resume_report"]

#: the extra-state name under which a Trainer checkpoints its sections
RUN_SETTINGS = "settings"

_NOTES = {
    "train.seed": "no effect: the checkpoint's RNG state is restored",
    "train.steps": "the LR schedule now spans the new total",
    "train.out_dir": "the run's folder now",
}
_REFUSED = {
    "optim.decay_1d_params": "it regroups the parameters, and the saved AdamW state belongs to the "
                             "old groups; resume with the old value or start a fresh run",
    "optim.part_lr": "it regroups the parameters, and the saved AdamW state belongs to the "
                     "old groups; resume with the old value or start a fresh run",
}


class RunSettings:
    """The ``train`` / ``optim`` / ``schedule`` sections as a checkpointable `Stateful`.

    ``state_dict()`` is the current sections as python builtins; ``load_state_dict`` keeps what a
    checkpoint held in ``saved`` (nothing is applied by loading).
    """

    def __init__(self, **sections: msgspec.Struct) -> None:
        self.current = {name: msgspec.to_builtins(s) for name, s in sections.items()}
        self.saved: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The current sections (dicts of python values)."""
        return self.current

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Remember the checkpoint's sections in `saved`."""
        self.saved = dict(state)


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, saved value, current value)]`` for every key that differs (keys missing on
    one side count as None; a field the checkpoint predates is no change while it holds an empty
    default, e.g. ``optim.part_lr = {}``), in section then field order."""
    out = []
    for section, fields in current.items():
        old = saved.get(section, {}) or {}
        for key in dict.fromkeys([*fields, *old]):
            a, b = old.get(key), fields.get(key)
            if a != b and not (key not in old and b in ({}, [], ())):
                out.append((f"{section}.{key}", a, b))
    return out


def refuse_changes(changes: list[tuple[str, Any, Any]], path: Any) -> None:
    """Raise for a change a resume cannot apply.

    Raises:
        xt.core.errors.CheckpointError: naming the key, both values and the reason.
    """
    for key, old, new in changes:
        if key in _REFUSED:
            raise CheckpointError(f"resume from {path}: {key} changed from {old!r} to {new!r}; "
                                  f"{_REFUSED[key]}")


def describe_changes(changes: list[tuple[str, Any, Any]]) -> list[str]:
    """One line per change: ``optim.lr: 0.001 -> 0.01 (applied from the next step)``."""
    return [f"{key}: {old!r} -> {new!r} ({_NOTES.get(key, 'applied from the next step')})"
            for key, old, new in changes]


def snapshot_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[list[dict], list[float] | None]:
    """The optimizer's group hyper-parameters (all but ``params``) and the scheduler's base LRs,
    taken from freshly built objects before a checkpoint overwrites them."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base = None if scheduler is None else list(scheduler.base_lrs)
    return groups, base


def apply_fresh_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any,
                                snapshot: tuple[list[dict], list[float] | None]) -> None:
    """Put `snapshot`'s hyper-parameters back after a load, and set each group's current LR to the
    new base LR times the schedule factor of the restored step (what the next step uses).

    Raises:
        xt.core.errors.CheckpointError: the optimizer's number of parameter groups changed.
    """
    groups, base = snapshot
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"resume: the checkpoint's optimizer has {len(optimizer.param_groups)} "
                              f"parameter groups, this run's has {len(groups)}")
    for g, fresh in zip(optimizer.param_groups, groups):
        g.update(fresh)
    if scheduler is not None and base is not None:
        scheduler.base_lrs = base
        lrs = [b * lam(scheduler.last_epoch) for b, lam in zip(base, scheduler.lr_lambdas)]
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
        scheduler._last_lr = lrs


def resume_report(path: Any, step: int, saved_world: int, world: int,
                  changes: list[tuple[str, Any, Any]] | None) -> list[str]:
    """The lines a Trainer prints after a resume: from where and which step, a change of the rank
    count, and the settings that changed (`describe_changes`; None = not recorded)."""
    lines = [f"resumed from {path} at step {step}"]
    if saved_world != world:
        ranks = "rank" if saved_world == 1 else "ranks"
        lines.append(f"  saved on {saved_world} {ranks}, resumed on {world}: model and optimizer resharded (DCP), "
                     "the data stream re-split at the same position")
    if changes is None:
        lines.append("  the checkpoint does not record its settings; the current [train], [optim] and "
                     "[schedule] apply")
    elif changes:
        lines.append("  settings changed since the checkpoint:")
        lines += [f"    {line}" for line in describe_changes(changes)]
    return lines
