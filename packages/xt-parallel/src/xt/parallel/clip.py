"""Gradient norm and clipping over parameters that live on different meshes (dense FSDP, EP experts).

Each rank holds shards: a dense DTensor gradient is split over its FSDP mesh and replicated over
HSDP replicas; an expert gradient is a DTensor split over ``edp_shard`` (FSDP) *and* ``ep`` (each EP
rank owns different experts). Every local shard's squared norm is weighted by ``1 / (number of ranks
holding an identical copy)`` (ranks outside the tensor's mesh, and its Replicate dimensions) and one
``all_reduce`` over the world sums them: the squared norm of the full, unsharded gradient, each
element counted once. Plain tensors are taken as replicated on every rank, except those listed in
``expert_params`` (one EP rank's slice, for EP applied without DTensors).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["global_grad_norm", "clip_grad_norm_"]


def _copies(g: torch.Tensor, world: int, ep_size: int) -> int:
    """How many ranks hold exactly this rank's local shard of `g`."""
    if not isinstance(g, DTensor):
        return max(world // ep_size, 1)
    mesh = g.device_mesh
    copies = world // mesh.size() // ep_size
    for dim, placement in enumerate(g.placements):
        if placement.is_replicate():
            copies *= mesh.size(dim)
        elif placement.is_partial():
            raise ValueError("global_grad_norm: gradients with Partial placements are not reduced yet")
    return max(copies, 1)


def global_grad_norm(params: Iterable[nn.Parameter], expert_params: set[int] = frozenset(),
                     ep_size: int = 1) -> torch.Tensor:
    """L2 norm of all gradients of the full (unsharded) model, identical on every rank.

    Args:
        params: parameters (plain tensors, or FSDP2 DTensors); those without ``.grad`` are skipped.
        expert_params: ``id()`` of parameters sliced over the EP group (each EP rank has other experts).
        ep_size: size of that EP group.

    Returns:
        Scalar float32 tensor on the gradients' device (CPU if there are none); float64 when any
        gradient is float64, so a float64 run is not clipped by an fp32-rounded factor.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    by_copies: dict[int, list[torch.Tensor]] = {}
    device = None
    for p in params:
        g = p.grad
        if g is None:
            continue
        n = _copies(g, world, ep_size if id(p) in expert_params else 1)
        local = g.to_local() if isinstance(g, DTensor) else g
        device = local.device
        by_copies.setdefault(n, []).append(local)
    acc = torch.float64 if any(t.dtype == torch.float64 for ts in by_copies.values() for t in ts) else torch.float32
    total = torch.zeros((), dtype=acc, device=device or "cpu")
    for n, grads in by_copies.items():
        sq = torch.stack([t.to(acc).square().sum() for t in grads]).sum() if grads else 0.0
        total = total + sq / n
    if world > 1:
        dist.all_reduce(total)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, expert_params: set[int] = frozenset(),
                    ep_size: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients by ``min(1, max_norm / (norm + eps))`` using the true global norm.

    Same rule as ``torch.nn.utils.clip_grad_norm_`` (L2), but over every rank's shards.

    Args:
        max_norm: threshold; ``inf`` measures only.

    Returns:
        The norm before clipping (scalar float32, float64 for float64 gradients; a plain tensor).

    Raises:
        ValueError: ``max_norm <= 0``.
    """
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be > 0 (inf = measure only), got {max_norm}")
    params = [p for p in params if p.grad is not None]
    norm = global_grad_norm(params, expert_params, ep_size)
    if math.isinf(max_norm) or not params:
        return norm
    coef = (max_norm / (norm + eps)).clamp(max=1.0)
    locals_by_dev: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        locals_by_dev.setdefault((g.device, g.dtype), []).append(g)
    for (dev, dtype), grads in locals_by_dev.items():
        torch._foreach_mul_(grads, coef.to(device=dev, dtype=dtype))
    return norm
