"""The ``loop`` kernel set of :mod:`xt.kernels.moe.gg_op`: a per-expert loop in the input dtype
(any dtype, float64 included, any device; reads ``counts`` on the host). The float64-capable
reference the tests use, and the NPU backend's weight gradient.

Shape legend: R rows sorted by expert, E experts, K reduction size, N output size.
"""
from __future__ import annotations

import torch

__all__ = ["mgrouped", "kgrouped"]


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """``y[rows of e] = x[rows of e] @ w[e]`` (``w[e]ᵀ`` when ``trans_b``): ``x[R, K]``,
    ``w[E, K, N]`` or ``[E, N, K]``, ``counts[E]`` -> ``y[R, N]`` in ``x.dtype``."""
    n = w.shape[1] if trans_b else w.shape[2]
    y = x.new_empty(x.shape[0], n)
    start = 0
    for e, c in enumerate(counts.tolist()):
        we = w[e].t() if trans_b else w[e]
        y[start:start + c] = x[start:start + c] @ we
        start += c
    return y


def kgrouped(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``c[e] = a[rows of e]ᵀ @ b[rows of e]``: ``a[R, P]``, ``b[R, Q]``, ``counts[E]`` ->
    ``c[E, P, Q]``, zero for experts without rows."""
    c = a.new_zeros(counts.numel(), a.shape[1], b.shape[1])
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            c[e] = a[start:start + n].t() @ b[start:start + n]
        start += n
    return c
