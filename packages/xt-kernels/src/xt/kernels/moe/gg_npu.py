"""``npu`` backend of the grouped GEMM: ``torch_npu.npu_grouped_matmul`` (Ascend). UNTESTED ON HARDWARE.

Imported only when the backend is chosen; ``torch_npu`` must be importable. We use the
``group_list_type=1`` form (per-group counts) with ``split_item=2``/``group_type=0`` (one
m-grouped output) for the forward and dX, and a per-expert loop of ``torch.mm`` on NPU for the
weight gradient (k-grouped), with zero blocks for empty experts.
"""
from __future__ import annotations

import torch

from xt.kernels.moe import gg_loop

__all__ = ["available", "mgrouped", "kgrouped"]


def available(x: torch.Tensor) -> bool:
    """Whether ``torch_npu`` is importable and ``x`` lives on an NPU."""
    if x.device.type != "npu":
        return False
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return True


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """m-grouped GEMM through ``torch_npu.npu_grouped_matmul``; same contract as the other backends."""
    import torch_npu

    b = w.transpose(-2, -1) if trans_b else w
    if x.shape[0] == 0:
        return x.new_empty(0, b.shape[-1])
    out = torch_npu.npu_grouped_matmul([x], [b.contiguous()], group_list=counts.to(torch.int64),
                                       group_list_type=1, split_item=2, group_type=0)
    return out[0]


def kgrouped(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``c[e] = a[rows of e]ᵀ @ b[rows of e]`` (the per-expert loop of :mod:`xt.kernels.moe.gg_loop`;
    reads ``counts`` on the host)."""
    return gg_loop.kgrouped(a, b, counts)
