"""A run's ``[parallel]`` section on this process: under torchrun or alone, checked, applied, described.

The same section means different things by launch: under ``torchrun`` (:func:`under_torchrun`)
the full layout (FSDP2, EP, Ulysses SP, AC: :func:`xt.parallel.parallelize`); on one process
only what works at world size 1 (:mod:`xt.parallel.single`; sharding sizes above 1 are refused).
These functions pick the right one, so every composer of a run (``xt train``, an RL driver)
launches alike:

* :func:`check_layout` before any model is built (a bad layout then costs nothing);
* :func:`device_for_run` for where to build it;
* :func:`apply_layout` to the built model, giving it and its `DistContext`;
* :func:`describe_layout` for one banner line.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from xt.core.distributed import DistContext, LocalDistContext
from xt.parallel.api import parallelize
from xt.parallel.checkpointing import checkpointed_layer_ids
from xt.parallel.config import ParallelConfig
from xt.parallel.discover import config_sizes, plan_for
from xt.parallel.materialize import is_meta_model, materialize_
from xt.parallel.mesh import LayoutError, validate_layout
from xt.parallel.single import check_single_process_layout, describe_single, parallelize_single

__all__ = ["under_torchrun", "launch_world_size", "device_for_run", "check_layout", "apply_layout",
           "describe_layout"]


def under_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets ``WORLD_SIZE`` > 1 or ``RANK``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "RANK" in os.environ


def launch_world_size() -> int:
    """The number of processes of this launch: ``WORLD_SIZE`` under torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1


def device_for_run() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_layout(cfg: ParallelConfig, model_config: Any) -> None:
    """Validate the ``[parallel]`` section `cfg` against this launch's world size and the sizes of
    `model_config` (a model's typed config, e.g. ``xt.models.section_config(section)``: experts,
    attention and KV heads, MTP depths; :func:`xt.parallel.discover.config_sizes`). On one process,
    sizes above 1 are refused with how to launch more
    (:func:`xt.parallel.single.check_single_process_layout`).

    Raises:
        xt.parallel.LayoutError: the layout cannot work; the message says why and what is valid.
    """
    world = launch_world_size()
    if world == 1:
        check_single_process_layout(cfg)
    validate_layout(cfg, world, **config_sizes(model_config))


def apply_layout(model: nn.Module, cfg: ParallelConfig, *, device_type: str,
                 device: torch.device | None = None,
                 read: Callable[[str, int, int], torch.Tensor] | None = None) -> tuple[nn.Module, DistContext]:
    """Apply the ``[parallel]`` section `cfg` to `model` (in place); build the optimizer afterwards.

    Under torchrun: FSDP2 / EP / Ulysses / AC (:func:`xt.parallel.parallelize`, which starts the
    process group). On one process: whatever the section sets
    (:func:`xt.parallel.single.parallelize_single`: AC, capacity, FSDP2 options at world size 1);
    with the section at its defaults, the plain model. A model built on the meta device is laid
    out there and then materialised on `device`, this rank's shards only
    (:func:`xt.parallel.materialize.materialize_`).

    Args:
        model: a plain model (XT's, or an HF one adapted for xt.parallel) on its device, or an XT
            model built on ``"meta"``.
        cfg: the ``[parallel]`` section.
        device_type: ``"cuda"`` or ``"cpu"``, the device the model is (or will be) on.
        device: where a meta model is materialised (default :func:`device_for_run`).
        read: for a meta model, ``read(name, start, stop)`` gives rows of its parameters and
            persistent buffers (e.g. ``xt.models.hf_rows.hf_row_reader``): each rank loads its
            shards' rows only instead of initialising them (:func:`materialize_`).

    Returns:
        ``(model, dist)``: `dist` a `ParallelDistContext` when a layout was applied under a process
        group (it has ``dp_rank``/``dp_size``, ``sp_size``, ``shard_batch``, ``meshes``), else
        `xt.core.distributed.LocalDistContext`.

    Raises:
        xt.parallel.LayoutError / ValueError: as :func:`xt.parallel.parallelize` /
            :func:`xt.parallel.single.parallelize_single`.
    """
    meta = is_meta_model(model)
    if under_torchrun():
        model, dist = parallelize(model, cfg, device_type=device_type)
    elif cfg == ParallelConfig():
        dist = LocalDistContext()
    else:
        model, dist = parallelize_single(model, cfg, device_type=device_type)
    if meta:
        materialize_(model, device or device_for_run(), read=read)
    elif read is not None:
        raise ValueError("apply_layout: read is given but the model is not on the meta device")
    return model, dist


def describe_layout(cfg: ParallelConfig, dist: DistContext, model: nn.Module) -> str:
    """One banner line: the layout this run uses (world size, sizes, AC, FSDP2 options).

    `model` is the laid-out model; its plan's decoder layers (DeepSeek-V3's MTP depths included)
    are what activation checkpointing picks its share from.
    """
    num_layers = len(plan_for(model, quiet=True).decoder_layers)
    if not under_torchrun():
        return describe_single(cfg, num_layers)
    world = getattr(dist, "world_size", 1)
    ac = checkpointed_layer_ids(num_layers, cfg.activation_checkpointing, cfg.activation_checkpointing_every_n)
    return (f"world {world} = hsdp {cfg.hsdp_replicate} x fsdp {cfg.resolved_fsdp_size(world)}, ep {cfg.ep_size}, "
            f"sp {cfg.sp_size}; activation checkpointing on {len(ac)}/{num_layers} layers"
            + (f"; MoE routed part in {cfg.moe_token_chunks} recomputed token chunks" if cfg.moe_token_chunks > 1 else "")
            + ("; cpu offload" if cfg.cpu_offload else "")
            + (f"; param_dtype {cfg.param_dtype}" if cfg.param_dtype else ""))
