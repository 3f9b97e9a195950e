"""`parallelize(model, cfg)`: apply EP, Ulysses SP, activation checkpointing and FSDP2 to a plain model.

Which modules are touched comes from the model's :class:`~xt.parallel.plan.ParallelPlan`
(:func:`xt.parallel.discover.plan_for`): XT's models state it with ``parallel_plan()`` (plain
data: decoder layers, MoE blocks with their router, experts and dispatcher, core attentions,
sizes); a model without one, e.g. an HF transformers decoder, is read by attribute names inside
``model.model.layers`` (:mod:`xt.parallel.discover`, which logs that it did so). The swap points:

* each MoE block's ``dispatcher`` (docs/contracts.md) -> :class:`AllToAllDispatcher`, and its
  ``experts`` (weights stacked over E in dim 0) sliced to this EP rank;
* each core attention ``(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, max_seqlen) -> [T,Hq,d]``
  -> :class:`UlyssesAttention` around it;
* each decoder layer: activation checkpointing (chosen share), one FSDP2 unit.

Launch under ``torchrun`` (NCCL on GPUs, gloo on CPUs); the process group is initialised here if
needed.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from xt.parallel.checkpointing import apply_activation_checkpointing
from xt.parallel.moe_chunks import apply_moe_token_chunks
from xt.parallel.config import ParallelConfig
from xt.parallel.context import ParallelDistContext
from xt.parallel.discover import find_layers, model_sizes, plan_for
from xt.parallel.dispatch_swap import swap_dispatchers
from xt.parallel.fsdp import apply_fsdp, shard_experts_
from xt.parallel.mesh import ParallelMeshes, build_meshes
from xt.parallel.plan import ParallelPlan, resolve
from xt.parallel.ulysses import UlyssesAttention

# find_layers and model_sizes live in xt.parallel.discover; importable from here as before.
__all__ = ["init_distributed", "find_layers", "model_sizes", "parallelize"]


def init_distributed(device_type: str | None = None) -> str:
    """Initialise the default process group from torchrun's environment if not done yet.

    Uses NCCL (and ``cuda:LOCAL_RANK``) when CUDA is available, else gloo.

    Returns:
        The device type, ``"cuda"`` or ``"cpu"``.

    Raises:
        RuntimeError: not initialised and no ``WORLD_SIZE``/``RANK`` in the environment.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("xt.parallel needs torch.distributed: launch with torchrun (RANK/WORLD_SIZE unset)")
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return device_type


def _wrap_attention_cores(model: nn.Module, plan: ParallelPlan, sp_group) -> None:
    missing = plan.layers_without_attention_core()
    if missing:
        raise ValueError(f"sequence parallelism needs a core attention in every decoder layer; the plan of "
                         f"{type(model).__name__} has none in {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                         "for HF models call xt.parallel.hf_qwen3_moe.enable_varlen_attention(model) first")
    for i, path in enumerate(plan.attention_cores):
        core = resolve(model, path, f"attention_cores[{i}]")
        if not isinstance(core, UlyssesAttention):
            model.set_submodule(path, UlyssesAttention(core, sp_group))


def parallelize(model: nn.Module, cfg: ParallelConfig, *, device_type: str | None = None,
                layers=None, meshes: ParallelMeshes | None = None,
                plan: ParallelPlan | dict | None = None) -> tuple[nn.Module, ParallelDistContext]:
    """Apply the layout `cfg` to `model` in place and return it with its `DistContext`.

    Order: slice experts to this EP rank and swap in the all-to-all dispatcher; wrap core attention
    in Ulysses; activation checkpointing; FSDP2 (experts, layers, root). Build the optimizer *after*
    this call (parameters are replaced by sharded ones).

    Args:
        model: see the module docstring; on CPU or already on its device (FSDP moves it to the
            mesh device).
        cfg: the layout.
        device_type: ``"cuda"``/``"cpu"`` (default: cuda if available).
        layers: decoder layers for discovery, for a model without ``parallel_plan()`` (default
            :func:`~xt.parallel.discover.find_layers`).
        meshes: reuse meshes built earlier by :func:`xt.parallel.mesh.build_meshes` (tests).
        plan: a :class:`~xt.parallel.plan.ParallelPlan` (or its dict form) instead of the model's.

    Returns:
        ``(model, dist_ctx)``; shard the loader with ``dist_ctx.dp_rank / dp_size`` and pass each
        micro-batch through ``dist_ctx.shard_batch``.

    Raises:
        LayoutError: invalid layout for this world/model (before anything is changed).
        ValueError: a plan that does not fit the model (names the field and path), or a model
            without a plan that lacks the structure discovery looks for.
    """
    device_type = init_distributed(device_type)
    plan = plan_for(model, plan, layers)
    meshes = meshes or build_meshes(cfg, device_type, **plan.sizes())
    layer_modules = plan.layer_modules(model)
    expert_modules = []
    if cfg.ep_size > 1 or cfg.capacity_factor is not None:
        swap_dispatchers(model, plan, meshes.ep_group if cfg.ep_size > 1 else None, cfg.capacity_factor,
                         overlap=cfg.ep_overlap)
        if cfg.ep_size > 1:
            for i, block in enumerate(plan.moe_blocks):
                experts = resolve(model, block.experts, f"moe_blocks[{i}].experts")
                shard_experts_(experts, plan.num_experts, meshes.expert["ep"])
                expert_modules.append(experts)
    if cfg.moe_token_chunks > 1:
        apply_moe_token_chunks(model, plan, cfg.moe_token_chunks)
    if cfg.sp_size > 1:
        _wrap_attention_cores(model, plan, meshes.sp_group)
    if cfg.activation_checkpointing or cfg.activation_checkpointing_every_n:
        apply_activation_checkpointing(layer_modules, cfg.activation_checkpointing,
                                       cfg.activation_checkpointing_every_n)
    apply_fsdp(model, layer_modules, meshes, expert_modules)
    return model, ParallelDistContext(meshes, getattr(model, "xt_image_token_id", None))
