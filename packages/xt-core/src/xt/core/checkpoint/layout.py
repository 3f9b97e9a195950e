"""Checkpoint folder layout, discovery of complete checkpoints, resume resolution and pruning.

Layout of a run (``out_dir``)::

    checkpoints/
      step-200/              a complete checkpoint (renamed from step-200.tmp when done)
        model_optim/         torch.distributed.checkpoint (DCP) files: model + optimizer
        trainer.pt           step + LR scheduler state (rank 0; None when it is in extra state)
        rank-0.pt ...        per-rank loader state, RNG states, named extra states
        meta.json            written last: step, world_size, torch version, time, extra_state names
      step-300.tmp/          an unfinished save (ignored; removed by the next save)

A checkpoint is complete when its folder is named ``step-N`` and holds ``meta.json``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from xt.core.errors import CheckpointError

__all__ = ["CHECKPOINTS", "META", "checkpoint_dir", "saved_extra_state_names", "list_checkpoints", "latest_checkpoint",
           "resolve_resume", "prune_checkpoints", "is_complete"]

CHECKPOINTS = "checkpoints"
META = "meta.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    """``out_dir/checkpoints/step-{step}``."""
    return Path(out_dir) / CHECKPOINTS / f"step-{step}"


def is_complete(path: str | Path) -> bool:
    """True if `path` is a finished checkpoint folder (``step-N`` with ``meta.json``)."""
    p = Path(path)
    return bool(_NAME.match(p.name)) and (p / META).is_file()


def saved_extra_state_names(path: str | Path) -> list[str] | None:
    """The named extra states a complete checkpoint holds (from its ``meta.json``), or None when
    `path` is not a complete checkpoint (`load_checkpoint` then says why)."""
    path = Path(path)
    if not is_complete(path):
        return None
    return list(json.loads((path / META).read_text(encoding="utf-8")).get("extra_state", []))


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | Path | None, out_dir: str | Path) -> Path | None:
    """Turn a ``resume`` setting into a checkpoint folder.

    Args:
        resume: None (fresh start), ``"auto"`` (latest complete checkpoint of `out_dir`, or None
            when there is none), or a checkpoint folder.
        out_dir: the run folder.

    Returns:
        The folder, or None for a fresh start.

    Raises:
        FileNotFoundError: if an explicit path does not exist.
        xt.core.errors.CheckpointError: (a ValueError) if an explicit path is not a complete
            checkpoint (e.g. an unfinished ``.tmp`` save, or a run folder instead of one of its
            checkpoints).
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        return latest_checkpoint(out_dir)
    p = Path(resume)
    if not p.exists():
        raise FileNotFoundError(f"resume: checkpoint folder {p} does not exist")
    if not is_complete(p):
        hint = ""
        if latest_checkpoint(p) is not None:
            hint = f"; it looks like a run folder: use --resume auto with train.out_dir = {str(p)!r}, " \
                   f"or {latest_checkpoint(p)}"
        raise CheckpointError(f"resume: {p} is not a complete checkpoint (expected a folder named "
                              f"step-N containing {META}){hint}")
    return p


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all) and any
    unfinished ``step-N.tmp`` / ``step-N.old`` folders.

    Returns:
        The deleted folders.
    """
    root = Path(out_dir) / CHECKPOINTS
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        if p.is_dir() and re.match(r"^step-\d+\.(tmp|old)$", p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if keep_last > 0:
        for _, p in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
