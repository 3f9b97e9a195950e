"""`parallelize(model, cfg)`: apply EP, Ulysses SP, activation checkpointing and FSDP2 to a plain model.

The model is an ordinary ``nn.Module`` laid out like HF decoder models:

* decoder layers at ``model.model.layers`` (or ``model.layers``, or passed as ``layers=``);
* MoE layers: ``layer.mlp.experts`` holds weights stacked over E in dim 0, and a ``dispatcher``
  (docs/contracts.md) sits on ``layer.mlp`` (XT models) or ``layer.mlp.experts`` (the HF adapter,
  :mod:`xt.parallel.hf_qwen3_moe`);
* attention: ``layer.self_attn.core_attention`` (XT) or ``layer.self_attn.xt_core_attention`` (HF
  adapter) with signature ``(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, max_seqlen) -> [T,Hq,d]``;
* sizes from ``model.config`` (``num_experts``, ``num_attention_heads``, ``num_key_value_heads``).

Launch under ``torchrun`` (NCCL on GPUs, gloo on CPUs); the process group is initialised here if
needed.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from xt.parallel.checkpointing import apply_activation_checkpointing
from xt.parallel.config import ParallelConfig
from xt.parallel.context import ParallelDistContext
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.fsdp import apply_fsdp, shard_experts_
from xt.parallel.mesh import ParallelMeshes, build_meshes
from xt.parallel.ulysses import UlyssesAttention

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


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers: ``model.model.layers`` or ``model.layers``.

    Raises:
        ValueError: neither exists (pass ``layers=`` to :func:`parallelize`).
    """
    for path in ("model.layers", "layers"):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, (nn.ModuleList, list, tuple)):
            return layers
    raise ValueError(f"{type(model).__name__} has neither `model.layers` nor `layers`; pass layers= explicitly")


def model_sizes(model: nn.Module) -> dict:
    """``num_experts``, ``num_attention_heads``, ``num_key_value_heads``, ``mtp_layers`` from ``model.config``.

    E is read from ``num_experts``, ``n_routed_experts`` (DeepSeek) or ``num_local_experts`` (GPT-OSS,
    Mixtral).
    """
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    experts = None
    for name in ("num_experts", "n_routed_experts", "num_local_experts"):
        experts = experts or getattr(cfg, name, None)
    return {"num_experts": experts, "num_attention_heads": heads,
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or heads,
            "mtp_layers": getattr(cfg, "mtp_layers", 0) or 0}


def _moe_parts(layer: nn.Module):
    mlp = getattr(layer, "mlp", None)
    experts = getattr(mlp, "experts", None)
    if experts is None:
        return None
    for owner in (mlp, experts):
        if hasattr(owner, "dispatcher"):
            return experts, owner
    raise ValueError(f"{type(mlp).__name__}.experts has no `dispatcher` on the MoE block or the experts; for HF "
                     "models call xt.parallel.hf_qwen3_moe.adapt_hf_moe_experts(model) first")


def _wrap_attention(layer: nn.Module, sp_group) -> None:
    attn = getattr(layer, "self_attn", None)
    for name in ("core_attention", "xt_core_attention"):
        core = getattr(attn, name, None)
        if core is not None:
            if not isinstance(core, UlyssesAttention):
                setattr(attn, name, UlyssesAttention(core, sp_group))
            return
    raise ValueError(f"{type(layer).__name__}.self_attn has no `core_attention` to wrap for sequence parallelism; "
                     "for HF models call xt.parallel.hf_qwen3_moe.enable_varlen_attention(model) first")


def parallelize(model: nn.Module, cfg: ParallelConfig, *, device_type: str | None = None,
                layers=None, meshes: ParallelMeshes | None = None) -> tuple[nn.Module, ParallelDistContext]:
    """Apply the layout `cfg` to `model` in place and return it with its `DistContext`.

    Order: slice experts to this EP rank and swap in the all-to-all dispatcher; wrap core attention
    in Ulysses; activation checkpointing; FSDP2 (experts, layers, root). Build the optimizer *after*
    this call (parameters are replaced by sharded ones).

    Args:
        model: see the module docstring; on CPU or already on its device (FSDP moves it to the
            mesh device).
        cfg: the layout.
        device_type: ``"cuda"``/``"cpu"`` (default: cuda if available).
        layers: decoder layers, default :func:`find_layers`.
        meshes: reuse meshes built earlier by :func:`xt.parallel.mesh.build_meshes` (tests).

    Returns:
        ``(model, dist_ctx)``; shard the loader with ``dist_ctx.dp_rank / dp_size`` and pass each
        micro-batch through ``dist_ctx.shard_batch``.

    Raises:
        LayoutError: invalid layout for this world/model (before anything is changed).
        ValueError: the model lacks the structure described above.
    """
    device_type = init_distributed(device_type)
    sizes = model_sizes(model)
    meshes = meshes or build_meshes(cfg, device_type, **sizes)
    layers = list(layers if layers is not None else find_layers(model))
    expert_modules = []
    use_ep = cfg.ep_size > 1 or cfg.capacity_factor is not None
    for layer in layers:
        parts = _moe_parts(layer)
        if parts is None or not use_ep:
            continue
        experts, owner = parts
        num_experts = sizes["num_experts"]
        owner.dispatcher = AllToAllDispatcher(num_experts, meshes.ep_group if cfg.ep_size > 1 else None,
                                              cfg.capacity_factor)
        if cfg.ep_size > 1:
            shard_experts_(experts, num_experts, meshes.expert["ep"])
            expert_modules.append(experts)
    if cfg.sp_size > 1:
        for layer in layers:
            _wrap_attention(layer, meshes.sp_group)
    if cfg.activation_checkpointing or cfg.activation_checkpointing_every_n:
        apply_activation_checkpointing(layers, cfg.activation_checkpointing, cfg.activation_checkpointing_every_n)
    apply_fsdp(model, layers, meshes, expert_modules)
    return model, ParallelDistContext(meshes)
