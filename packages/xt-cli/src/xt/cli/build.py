"""Build the pieces of a run from an :class:`~xt.cli.config.XTConfig`: model, loader, layout."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from xt.cli.config import XTConfig
from xt.core.distributed import DistContext, LocalDistContext
from xt.data import build_loader
from xt.kernels.config import apply_kernels_config
from xt.models import section_config

__all__ = ["check_layout", "build_run_loader", "under_torchrun", "apply_layout", "describe_layout", "device_for_run"]


def device_for_run() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build_run_loader(cfg: XTConfig, dist: DistContext):
    """The packed, resumable loader of `cfg.data`, sharded over data-parallel ranks."""
    dp_rank = getattr(dist, "dp_rank", 0)
    dp_size = getattr(dist, "dp_size", 1)
    loader = build_loader(cfg.data, dp_rank=dp_rank, dp_size=dp_size)
    if getattr(dist, "sp_size", 1) > 1:
        return SequenceShardedLoader(loader, dist)
    return loader


class SequenceShardedLoader:
    """Wraps a loader so each micro-batch is cut to this rank's Ulysses slice (`dist.shard_batch`).

    The state is the wrapped loader's: all SP ranks of one data-parallel group read the same
    micro-batches and keep only their slice.
    """

    def __init__(self, loader, dist) -> None:
        self.loader, self.dist = loader, dist

    def __iter__(self):
        for batch in self.loader:
            yield self.dist.shard_batch(batch)

    def state_dict(self) -> dict:
        """The wrapped loader's state."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the wrapped loader's state."""
        self.loader.load_state_dict(state)


def under_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets ``WORLD_SIZE`` > 1 or ``RANK``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "RANK" in os.environ


def check_layout(cfg: XTConfig) -> None:
    """Validate the ``[parallel]`` layout against the world size and the model's sizes before any
    model is built (a bad layout then costs nothing). On one process, sizes above 1 are refused
    with how to launch more (:func:`xt.parallel.single.check_single_process_layout`).

    Raises:
        xt.parallel.LayoutError: the layout cannot work; the message says why and what is valid.
    """
    from types import SimpleNamespace

    from xt.parallel import validate_layout
    from xt.parallel.discover import model_sizes
    from xt.parallel.single import check_single_process_layout
    world = int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1
    if world == 1:
        check_single_process_layout(cfg.parallel)
    sizes = model_sizes(SimpleNamespace(config=section_config(cfg.model)))
    validate_layout(cfg.parallel, world, **sizes)


def apply_layout(model: nn.Module, cfg: XTConfig, device: torch.device) -> tuple[nn.Module, DistContext]:
    """Apply kernel backends, then the ``[parallel]`` section: under torchrun FSDP2 / EP / Ulysses /
    AC (:func:`xt.parallel.parallelize`); on one process whatever the section sets
    (:func:`xt.parallel.single.parallelize_single`: AC, capacity, FSDP2 options at world size 1);
    with the section at its defaults, the plain model."""
    from xt.parallel import ParallelConfig
    apply_kernels_config(cfg.kernels)
    if under_torchrun():
        from xt.parallel import parallelize
        return parallelize(model, cfg.parallel, device_type=device.type)
    if cfg.parallel == ParallelConfig():
        return model, LocalDistContext()
    from xt.parallel.single import parallelize_single
    return parallelize_single(model, cfg.parallel, device_type=device.type)


def describe_layout(cfg: XTConfig, dist: DistContext, num_layers: int) -> str:
    """One banner line: the layout this run uses (world size, sizes, AC, FSDP2 options)."""
    from xt.parallel.single import describe_single
    p = cfg.parallel
    if not under_torchrun():
        return describe_single(p, num_layers)
    from xt.parallel.checkpointing import checkpointed_layer_ids
    world = getattr(dist, "world_size", 1)
    ac = checkpointed_layer_ids(num_layers, p.activation_checkpointing, p.activation_checkpointing_every_n)
    return (f"world {world} = hsdp {p.hsdp_replicate} x fsdp {p.resolved_fsdp_size(world)}, ep {p.ep_size}, "
            f"sp {p.sp_size}; activation checkpointing on {len(ac)}/{num_layers} layers"
            + ("; cpu offload" if p.cpu_offload else "")
            + (f"; param_dtype {p.param_dtype}" if p.param_dtype else ""))
