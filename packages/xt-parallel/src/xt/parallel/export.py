"""Exporting a laid-out model: gather the full state on every rank, let the main rank write it.

xt.parallel knows how to unshard (FSDP2 shards, EP expert slices: :mod:`xt.parallel.gather`) but
not how a file format is written; the writer comes from the caller, e.g.
``exporter(xt.models.save_pretrained, dist)`` for HF folders. So the engine's ``export_hf(model,
path)`` hook is built here without xt.parallel importing xt.models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from xt.core.distributed import DistContext
from xt.parallel.gather import full_tensor, gather_full
from xt.parallel.names import plain_name

__all__ = ["full_state_dict", "exporter"]

def full_state_dict(model: nn.Module, ep_group=None) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a laid-out `model`, on the CPU, keyed as the plain
    model's ``state_dict()``: parameters gathered over FSDP2 and `ep_group`
    (:func:`xt.parallel.gather.gather_full`), tied parameters under each of their names, and the
    persistent buffers (e.g. DeepSeek-V3's ``e_score_correction_bias``, replicated on every rank).

    Collective: every rank must call it; every rank gets the tensors.
    """
    full = gather_full(model, ep_group)
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:  # a tied parameter: gathered once, under its first name
            full[name] = full[first[id(p)]]
    persistent = set(model.state_dict().keys())
    for name, b in model.named_buffers():
        if name in persistent:
            full[name] = full_tensor(b)
    return {plain_name(k): v.to("cpu") for k, v in full.items()}


def exporter(write: Callable[..., object], dist: DistContext | None) -> Callable[[nn.Module, Path], None]:
    """The ``export(model, path)`` hook of a run with context `dist` (``Trainer(export_hf=...)``).

    Args:
        write: ``write(model, path)`` writes a plain model; ``write(model, path, state_dict=sd)``
            writes the full state dict `sd` (plain keys) with `model` giving the config, e.g.
            ``xt.models.save_pretrained``.
        dist: the run's `DistContext`. Without meshes (one process, plain parameters) the hook calls
            ``write(model, path)``. Under a layout (a `ParallelDistContext`, any world size) every
            rank must call the hook: it gathers :func:`full_state_dict`, the main rank writes, and
            all ranks wait at a barrier.

    Returns:
        ``export(model, path) -> None``; it raises what `write` raises (e.g. ``ValueError`` for
        gathered parameters that do not cover the model's HF keys).
    """
    meshes = getattr(dist, "meshes", None)

    def export(model: nn.Module, path: Path) -> None:
        if meshes is None:
            write(model, path)
            return
        full = full_state_dict(model, getattr(meshes, "ep_group", None))
        if dist.is_main:
            write(model, path, state_dict=full)
        dist.barrier()

    return export
