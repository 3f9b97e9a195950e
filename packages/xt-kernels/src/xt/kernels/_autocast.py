"""Autocast for the kernels' custom ops, which the autocast dispatch key does not reach.

``torch.autocast`` casts the inputs of ``nn.Linear``/``matmul``; our grouped GEMMs and the fused
loss are custom ops and autograd functions, so without this they would run in float32 inside a
bf16 autocast region (and reject a bf16 activation against float32 master weights). The rule is
the one autocast applies to matmuls: float32 inputs are cast to the region's dtype (through
``Tensor.to``, so gradients reach the float32 originals in float32); other dtypes are left alone.
"""
from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "autocast_inputs"]


def autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype active for ``t``'s device type (``"cpu"``/``"cuda"``), or None."""
    dev = t.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` with float32 ones cast to the active autocast dtype (unchanged when autocast is
    off for the first tensor's device)."""
    dt = autocast_dtype(tensors[0])
    if dt is None:
        return tensors
    return tuple(t.to(dt) if t.dtype == torch.float32 else t for t in tensors)
