"""The ``[parallel]`` section on one process (no torchrun): every key works or is refused.

On a single process the sharding sizes can only be 1, but the rest of the section still means
something and is applied:

* ``activation_checkpointing`` / ``activation_checkpointing_every_n``: recompute in backward
  (:mod:`xt.parallel.checkpointing`), no process group needed;
* ``capacity_factor``: capped expert capacity through the all-to-all dispatcher with no group;
* ``param_dtype``, ``reduce_dtype``, ``cpu_offload``, ``reshard_after_forward``: FSDP2 features, so
  FSDP2 is applied on a world-size-1 process group (gloo on CPU, NCCL on CUDA) created here. That
  costs ~25% step time on a small model (``benchmarks/results/parallel-fsdp-world1-*.json``), so
  it is used only when one of these keys asks for it.

Sizes above 1 (``fsdp_size``, ``hsdp_replicate``, ``ep_size``, ``sp_size``) raise `LayoutError`
before anything is built (:func:`check_single_process_layout`).
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn

from xt.core.distributed import DistContext, LocalDistContext
from xt.parallel.api import parallelize
from xt.parallel.checkpointing import apply_activation_checkpointing, checkpointed_layer_ids
from xt.parallel.moe_chunks import apply_moe_token_chunks
from xt.parallel.config import ParallelConfig
from xt.parallel.discover import plan_for
from xt.parallel.dispatch_swap import swap_dispatchers
from xt.parallel.mesh import LayoutError
from xt.parallel.plan import ParallelPlan

__all__ = ["fsdp_keys_set", "check_single_process_layout", "init_single_process_group",
           "parallelize_single", "describe_single"]

_SIZES = ("fsdp_size", "hsdp_replicate", "ep_size", "sp_size")


def fsdp_keys_set(cfg: ParallelConfig) -> list[str]:
    """The keys of `cfg` set away from their defaults that only FSDP2 implements (in field order)."""
    default = ParallelConfig()
    return [k for k in ("param_dtype", "reduce_dtype", "cpu_offload", "reshard_after_forward")
            if getattr(cfg, k) != getattr(default, k)]


def check_single_process_layout(cfg: ParallelConfig) -> None:
    """Refuse sharding sizes above 1 on one process.

    Raises:
        LayoutError: naming the key, its value and how to launch N processes.
    """
    for key in _SIZES:
        value = getattr(cfg, key)
        if value is not None and value > 1:
            raise LayoutError(f"parallel.{key} = {value} needs at least {value} processes, but this run is a "
                              f"single process; launch with `torchrun --nproc-per-node N -m xt.cli.main train ...` "
                              f"or set parallel.{key} = 1")


def init_single_process_group(device_type: str) -> None:
    """Initialise a world-size-1 default process group (NCCL on CUDA, gloo on CPU) if none exists.

    Uses an in-memory ``HashStore``: no port, no environment variables.
    """
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)


def parallelize_single(model: nn.Module, cfg: ParallelConfig, *, device_type: str,
                       layers=None, plan: ParallelPlan | dict | None = None) -> tuple[nn.Module, DistContext]:
    """Apply `cfg` to `model` on one process (module docstring); build the optimizer afterwards.

    Args:
        model: an XT (or adapted HF) model, see :func:`xt.parallel.parallelize`.
        cfg: the ``[parallel]`` section.
        device_type: "cuda" or "cpu".
        layers: decoder layers for discovery, for a model without ``parallel_plan()``.
        plan: a plan instead of the model's (as in :func:`xt.parallel.parallelize`).

    Returns:
        ``(model, dist_ctx)``: a `ParallelDistContext` at world size 1 when FSDP2 is applied, else
        `xt.core.distributed.LocalDistContext`.

    Raises:
        LayoutError: a sharding size above 1, or ``capacity_factor`` / ``moe_token_chunks`` on a
            model without (XT) MoE blocks.
        ValueError: a plan that does not fit the model.
    """
    check_single_process_layout(cfg)
    if fsdp_keys_set(cfg):
        init_single_process_group(device_type)
        return parallelize(model, cfg, device_type=device_type, layers=layers, plan=plan)
    plan = plan_for(model, plan, layers)
    if cfg.capacity_factor is not None:
        if not plan.moe_blocks:
            raise LayoutError("parallel.capacity_factor is set but the model has no MoE dispatcher to cap")
        swap_dispatchers(model, plan, None, cfg.capacity_factor)
    if cfg.moe_token_chunks > 1:
        apply_moe_token_chunks(model, plan, cfg.moe_token_chunks)
    if cfg.activation_checkpointing or cfg.activation_checkpointing_every_n:
        layer_modules = plan.layer_modules(model)
        apply_activation_checkpointing(layer_modules, cfg.activation_checkpointing,
                                       cfg.activation_checkpointing_every_n)
    return model, LocalDistContext()


def describe_single(cfg: ParallelConfig, num_layers: int) -> str:
    """One line for the run banner: what the ``[parallel]`` section does on this single process."""
    parts = []
    ac = checkpointed_layer_ids(num_layers, cfg.activation_checkpointing, cfg.activation_checkpointing_every_n)
    if ac:
        parts.append(f"activation checkpointing on {len(ac)}/{num_layers} layers {ac}")
    if cfg.capacity_factor is not None:
        parts.append(f"expert capacity factor {cfg.capacity_factor}")
    if cfg.moe_token_chunks > 1:
        parts.append(f"MoE routed part in {cfg.moe_token_chunks} recomputed token chunks")
    fsdp = fsdp_keys_set(cfg)
    if fsdp:
        parts.append("FSDP2 at world size 1 for " + ", ".join(f"{k}={getattr(cfg, k)}" for k in fsdp))
    return "single process" + ("; " + "; ".join(parts) if parts else "")
