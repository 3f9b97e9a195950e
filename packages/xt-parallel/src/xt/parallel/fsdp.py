"""FSDP2 (`fully_shard`) for decoder layers, the root, and expert-parallel expert weights.

Expert weights (stacked over E in dim 0) are first sliced to this EP rank's ``E // ep_size``
experts (:func:`shard_experts_`), then FSDP-sharded over the expert mesh's ``edp_shard`` ranks (with
``dp_replicate`` for HSDP). Everything else is FSDP-sharded over the dense mesh. Gradients are summed
over ranks (divide factor 1): the engine already divides by the global token count
(:mod:`xt.core.distributed`).

Reference: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``); the EP-inside-FSDP layout follows
XTuner V1 / torchtitan.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from xt.core.config.dtypes import TORCH_DTYPE_NAMES
from xt.parallel.config import ParallelConfig
from xt.parallel.mesh import ParallelMeshes

__all__ = ["mixed_precision_policy", "shard_experts_", "apply_fsdp", "EP_ATTR"]

#: attribute set on an expert module after :func:`shard_experts_`: ``(ep_rank, ep_size, num_experts)``.
EP_ATTR = "xt_expert_parallel"


def _dtype(name: str | None) -> torch.dtype | None:
    """The `torch.dtype` of a config dtype name (``"bf16"`` -> `torch.bfloat16`), None kept."""
    return None if name is None else getattr(torch, TORCH_DTYPE_NAMES[name])


def mixed_precision_policy(cfg: ParallelConfig) -> MixedPrecisionPolicy:
    """``MixedPrecisionPolicy(param_dtype, reduce_dtype)`` from the config's dtype names (None = keep)."""
    return MixedPrecisionPolicy(param_dtype=_dtype(cfg.param_dtype), reduce_dtype=_dtype(cfg.reduce_dtype))


def shard_experts_(experts: nn.Module, num_experts: int, ep_mesh: DeviceMesh) -> list[str]:
    """Keep only this EP rank's experts, as DTensors ``Shard(0)`` over `ep_mesh` (global shape ``[E, ...]``).

    Every direct parameter whose dim 0 is `num_experts` becomes a DTensor parameter whose local
    tensor is rank ``p``'s experts ``[p * El, (p + 1) * El)`` (``El = num_experts // ep_size``). Its
    global shape stays ``[E, ...]``, so distributed checkpoints (DCP), ``full_tensor()`` and the
    gradient norm see every expert exactly once; `fully_shard` on the expert mesh then adds FSDP over
    ``edp_shard`` (a 2-D spec, as for FSDP + tensor parallel). The module's ``forward`` sees plain local
    tensors (:class:`_LocalExpertViews`). Must run before `fully_shard` and before the optimizer is built.

    Returns:
        Names of the sliced parameters.

    Raises:
        ValueError: `num_experts` not divisible by the EP size, or no parameter has dim 0 == num_experts.
    """
    ep_size, ep_rank = ep_mesh.size(), ep_mesh.get_local_rank()
    if num_experts % ep_size:
        raise ValueError(f"num_experts ({num_experts}) is not divisible by ep_size ({ep_size})")
    n_local = num_experts // ep_size
    sliced = []
    for name, p in list(experts.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[0] == num_experts and not isinstance(p, DTensor):
            local = p.detach()[ep_rank * n_local:(ep_rank + 1) * n_local].clone()
            dt = DTensor.from_local(local, ep_mesh, [Shard(0)], run_check=False, shape=p.shape, stride=p.stride())
            setattr(experts, name, nn.Parameter(dt, requires_grad=p.requires_grad))
            sliced.append(name)
    if not sliced:
        raise ValueError(f"{type(experts).__name__} has no parameter with dim 0 == num_experts ({num_experts})")
    setattr(experts, EP_ATTR, (ep_rank, ep_size, num_experts))
    views = _LocalExpertViews(sliced)
    experts.register_forward_pre_hook(views.pre)
    experts.register_forward_hook(views.post, prepend=True)
    return sliced


class _LocalExpertViews:
    """Forward hooks: expose the EP rank's local expert tensors (``DTensor.to_local()``, differentiable)
    to the module's ``forward`` and put the DTensor parameters back afterwards. When the module got no
    rows, its output is tied to the weights with a zero factor so every rank produces a (zero)
    gradient and FSDP's reduce-scatter stays collective."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def pre(self, module: nn.Module, args) -> None:
        saved = {}
        for name in self.names:
            p = module._parameters[name]
            if isinstance(p, DTensor):
                saved[name] = p
                module._parameters[name] = p.to_local()
        module._xt_saved_params = saved

    def post(self, module: nn.Module, args, output):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.shape[0] == 0 and torch.is_grad_enabled():
            tie = sum(module._parameters[n].reshape(-1)[:1].sum() for n in self.names
                      if module._parameters[n].requires_grad)
            output = output + 0.0 * tie
        for name, p in getattr(module, "_xt_saved_params", {}).items():
            module._parameters[name] = p
        module._xt_saved_params = {}
        return output


def _sum_gradients(module: FSDPModule) -> None:
    """Reduce gradients with SUM, no division (gloo has no PREMUL_SUM: force plain sums)."""
    if hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)
    if hasattr(module, "set_gradient_divide_factor"):
        module.set_gradient_divide_factor(1.0)
    else:  # older torch
        module.set_reduce_scatter_divide_factor(1.0)


def apply_fsdp(model: nn.Module, layers: Sequence[nn.Module], meshes: ParallelMeshes,
               expert_modules: Iterable[nn.Module] = ()) -> nn.Module:
    """`fully_shard` every expert module, every layer and then the root, in that order.

    Args:
        model: the root module (its remaining parameters, e.g. embeddings and LM head, are sharded
            with the root).
        layers: the decoder layers (one FSDP unit each: one all-gather per layer).
        meshes: from :func:`xt.parallel.mesh.build_meshes`; ``meshes.cfg`` gives mixed precision,
            CPU offload and ``reshard_after_forward``.
        expert_modules: modules holding already-sliced expert weights (their own FSDP unit on the
            expert mesh, so the layer's unit leaves them out).

    Returns:
        `model` (now an ``FSDPModule``), with gradient reduction set to *sum*.
    """
    cfg = meshes.cfg
    kwargs = dict(mp_policy=mixed_precision_policy(cfg), reshard_after_forward=cfg.reshard_after_forward,
                  offload_policy=CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.cpu_offload
                  else OffloadPolicy())
    for ex in expert_modules:
        fully_shard(ex, mesh=meshes.expert_fsdp_mesh, **kwargs)
    for layer in layers:
        fully_shard(layer, mesh=meshes.dense_fsdp_mesh, **kwargs)
    # The root keeps its parameters gathered from forward to the end of backward: its output (a model
    # output object) need not be a pytree FSDP can hook, and its embedding / LM head are used first
    # in backward anyway.
    fully_shard(model, mesh=meshes.dense_fsdp_mesh, **{**kwargs, "reshard_after_forward": False})
    for m in model.modules():
        if isinstance(m, FSDPModule):
            _sum_gradients(m)
    return model
