"""Grouped GEMM for MoE experts (m-grouped forward).

``y[R, N] = x[R, K] @ w[e(r), K, N]`` where rows of ``x`` are sorted by expert and
``tokens_per_expert[E]`` says how many consecutive rows belong to each expert.

This module holds the public entry point and the plain-PyTorch reference backend (a loop over
experts, differentiable by autograd), and registers the op's backends with
:mod:`xt.kernels.registry`. The fast backends (``torch`` via ``torch._grouped_mm``, ``triton``,
``npu``) live in ``gg_torch``/``gg_triton``/``gg_npu`` behind the custom op of
:mod:`xt.kernels.moe.gg_op`; ``auto`` asks :func:`xt.kernels.moe.backends.choose_grouped_gemm`.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from xt.kernels import registry
from xt.kernels._autocast import autocast_inputs
from xt.kernels.moe import gg_op
from xt.kernels.moe.backends import choose_grouped_gemm

__all__ = ["grouped_gemm", "grouped_gemm_reference"]


def grouped_gemm_reference(x: torch.Tensor, w: torch.Tensor, tokens_per_expert: torch.Tensor,
                           trans_b: bool = False) -> torch.Tensor:
    """Plain PyTorch grouped GEMM (a loop over experts); any device, differentiable by autograd.

    Args:
        x: ``[R, K]`` rows sorted by expert (float32/bf16/fp16).
        w: ``[E, K, N]`` (or ``[E, N, K]`` with ``trans_b=True``), same dtype as ``x``.
        tokens_per_expert: ``[E]`` integer counts summing to ``R`` (any device).
        trans_b: whether ``w`` is stored as ``[E, N, K]`` (the ``nn.Linear`` layout).

    Returns:
        ``[R, N]`` in ``x.dtype``; products accumulated in float32 for low-precision inputs.

    Raises:
        ValueError: if shapes disagree or counts do not sum to ``R``.
    """
    if x.dim() != 2 or w.dim() != 3:
        raise ValueError(f"grouped_gemm: x must be [R, K] and w [E, K, N]; got {tuple(x.shape)} and {tuple(w.shape)}")
    E = w.shape[0]
    k_w = w.shape[2] if trans_b else w.shape[1]
    if k_w != x.shape[1]:
        raise ValueError(f"grouped_gemm: inner sizes differ: x has K={x.shape[1]}, w has K={k_w} (trans_b={trans_b})")
    if tokens_per_expert.numel() != E:
        raise ValueError(f"grouped_gemm: tokens_per_expert has {tokens_per_expert.numel()} entries, w has {E} experts")
    counts = tokens_per_expert.tolist()
    if sum(counts) != x.shape[0]:
        raise ValueError(f"grouped_gemm: tokens_per_expert sums to {sum(counts)}, x has {x.shape[0]} rows")
    n = w.shape[1] if trans_b else w.shape[2]
    outs = []
    start = 0
    acc = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    for e, c in enumerate(counts):
        we = w[e].t() if trans_b else w[e]
        xe = x[start:start + c]
        outs.append((xe.to(acc) @ we.to(acc)).to(x.dtype))
        start += c
    if not outs:
        return x.new_zeros(0, n)
    return torch.cat(outs, dim=0)


def grouped_gemm(x: torch.Tensor, w: torch.Tensor, tokens_per_expert: torch.Tensor,
                 trans_b: bool = False, backend: str | None = None) -> torch.Tensor:
    """Grouped GEMM with backend dispatch; same contract as :func:`grouped_gemm_reference`.

    Differentiable (forward m-grouped, dX m-grouped, dW k-grouped; experts without rows get exact
    zero weight gradient). Inside a ``torch.autocast`` region float32 ``x``/``w`` are cast to its
    dtype first, as for ``nn.Linear``. The ``torch``/``triton``/``npu`` backends run as the custom op
    ``torch.ops.xt_kernels.grouped_mm`` (traceable by ``torch.compile``) and keep
    ``tokens_per_expert`` on the device (no host synchronisation).

    Args:
        x: ``[R, K]`` rows sorted by expert.
        w: ``[E, K, N]`` (or ``[E, N, K]`` with ``trans_b=True``), same dtype as ``x``.
        tokens_per_expert: ``[E]`` integer counts summing to ``R``, on ``x``'s device.
        trans_b: layout of ``w``.
        backend: ``"reference"``, ``"torch"``, ``"triton"``, ``"npu"``, ``"auto"`` or ``None``
            (the process-wide choice set by :func:`xt.kernels.registry.set_backend`).

    Returns:
        ``[R, N]`` in ``x.dtype``.

    Raises:
        ValueError: unknown backend name, bad shapes, or a dtype/alignment the backend lacks.
    """
    x, w = autocast_inputs(x, w)
    return registry.dispatch("grouped_gemm", backend)(x, w, tokens_per_expert, trans_b)


def _auto(x, w, tokens_per_expert, trans_b=False):
    return gg_op.grouped_mm(x, w, tokens_per_expert, trans_b, choose_grouped_gemm(x, w, tokens_per_expert, trans_b))


def _fixed(x, w, tokens_per_expert, trans_b=False, *, name):
    return gg_op.grouped_mm(x, w, tokens_per_expert, trans_b, name)


def _implementation(name: str) -> Callable:
    """The grouped GEMM of backend ``name`` (registry factory)."""
    if name == "reference":
        return grouped_gemm_reference
    if name == "auto":
        return _auto
    return functools.partial(_fixed, name=name)


registry.register("grouped_gemm", _implementation)
