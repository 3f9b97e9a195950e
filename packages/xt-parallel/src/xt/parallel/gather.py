"""Gather sharded parameters (FSDP2 DTensors, EP expert slices) back to full tensors.

Used to compare with single-process runs and to export a full state dict (e.g. HF
``save_pretrained``). Collective: every rank must call it; every rank gets the full tensors.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from xt.parallel.fsdp import EP_ATTR

__all__ = ["full_tensor", "gather_full"]


def full_tensor(t: torch.Tensor, ep_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Unshard `t`: a DTensor becomes its full tensor (FSDP shards and, for experts distributed by
    :func:`xt.parallel.fsdp.shard_experts_`, all EP ranks' experts). A plain tensor holding one EP
    rank's slice is concatenated over `ep_group` on dim 0.

    Returns:
        A plain tensor (detached).
    """
    if isinstance(t, DTensor):
        quiet = logging.getLogger("torch.distributed.tensor._redistribute")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # 2-D expert specs gather in two steps: expected, not a problem here
        try:
            full = t.full_tensor().detach()
        finally:
            quiet.setLevel(level)
        local = t.to_local()
        shares = local.numel() and full.untyped_storage().data_ptr() == local.untyped_storage().data_ptr()
        return full.clone() if shares else full  # a replicated DTensor's full tensor is its local one
    full = t.detach().clone()  # never alias live parameters or gradients
    if ep_group is not None and dist.get_world_size(ep_group) > 1:
        n = dist.get_world_size(ep_group)
        out = full.new_empty((n * full.shape[0], *full.shape[1:]))
        dist.all_gather_into_tensor(out, full.contiguous(), group=ep_group)
        full = out
    return full


def gather_full(model: nn.Module, ep_group: dist.ProcessGroup | None = None, grads: bool = False) -> dict[str, torch.Tensor]:
    """Full parameters (or their gradients, with `grads=True`) keyed by ``named_parameters`` names.

    Parameters of modules marked by :func:`xt.parallel.fsdp.shard_experts_` are also gathered over
    `ep_group`. A missing gradient is returned as zeros of the full shape. Tied parameters appear once,
    under their first name (as in ``named_parameters()``).
    """
    out = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        group = ep_group if hasattr(module, EP_ATTR) else None
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights: first name only, like named_parameters()
                continue
            seen.add(id(p))
            key = f"{mod_name}.{name}" if mod_name else name
            if grads:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                out[key] = full_tensor(g, group)
            else:
                out[key] = full_tensor(p, group)
    return out
