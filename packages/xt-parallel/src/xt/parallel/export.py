"""Exporting a laid-out model: stream its full state one tensor at a time to a writer every rank runs.

xt.parallel knows how to unshard (FSDP2 shards, EP expert slices: :mod:`xt.parallel.full_state`)
but not how a file format is written; the writer comes from the caller, e.g.
``exporter(xt.models.save_pretrained, dist)`` for HF folders. So the engine's ``export_hf(model,
path)`` hook is built here without xt.parallel importing xt.models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from xt.core.distributed import DistContext
from xt.parallel.full_state import FullState

__all__ = ["full_state_dict", "exporter"]


def full_state_dict(model: nn.Module, ep_group=None) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a laid-out `model`, on the CPU, keyed as the plain
    model's ``state_dict()`` (:class:`xt.parallel.full_state.FullState` collected: every tensor at
    once, for tests and small models; an export streams instead).

    Collective: every rank must call it; every rank gets the tensors.
    """
    return dict(FullState(model, ep_group))


def exporter(write: Callable[..., object], dist: DistContext | None) -> Callable[[nn.Module, Path], None]:
    """The ``export(model, path)`` hook of a run with context `dist` (``Trainer(export_hf=...)``).

    Args:
        write: ``write(model, path)`` writes a plain model; ``write(model, path, tensors=state,
            rank=r, world=w, barrier=b)`` is called on every rank of a laid-out one, with `state` a
            :class:`~xt.parallel.full_state.FullState` (iterate it on every rank, in step) and
            `barrier` the run's barrier, e.g. ``xt.models.save_pretrained`` (each rank writes its
            share of the files; no rank holds more than one gathered tensor and its own file).
        dist: the run's `DistContext`. Without meshes (one process, plain parameters) the hook calls
            ``write(model, path)``. Under a layout (a `ParallelDistContext`, any world size) every
            rank must call the hook; all ranks wait at a barrier after `write`.

    Returns:
        ``export(model, path) -> None``; it raises what `write` raises.
    """
    meshes = getattr(dist, "meshes", None)

    def export(model: nn.Module, path: Path) -> None:
        if meshes is None:
            write(model, path)
            return
        state = FullState(model, getattr(meshes, "ep_group", None))
        write(model, path, tensors=state, rank=dist.rank, world=dist.world_size, barrier=dist.barrier)
        dist.barrier()

    return export
