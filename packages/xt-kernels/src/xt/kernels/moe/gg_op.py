"""Grouped GEMM as ``torch.library`` custom ops with autograd (traceable by ``torch.compile``).

Shape legend: R routed rows sorted by expert, E experts, K reduction size, N output size.

Ops (namespace ``xt_kernels``):
* ``grouped_mm(x[R, K], w, counts[E], trans_b, backend) -> y[R, N]``: m-grouped product,
  ``w[E, K, N]`` or (``trans_b``) ``w[E, N, K]``. Its backward is
  ``dX = grouped_mm(dY, w, counts, not trans_b)`` (again m-grouped) and
  ``dW = grouped_mm_wgrad(x, dY)`` (k-grouped: ``dW[e] = x_eᵀ dY_e``, or ``dY_eᵀ x_e`` when
  ``trans_b``), zero for experts without rows.
* ``grouped_mm_wgrad(a[R, P], b[R, Q], counts[E], backend) -> c[E, P, Q]``.

``backend`` is a kernel-set name (``"triton"``, ``"torch"``, ``"npu"``, ``"loop"``) or two of them
joined by ``/``: the first computes the m-grouped products (forward, dX), the second the k-grouped
weight gradient. ``counts`` never leaves the device for ``triton``/``torch``; ``loop`` (a plain
per-expert loop, the float64-capable reference used in tests) and ``npu``'s dW read it on the host.
"""
from __future__ import annotations

import importlib

import torch

__all__ = ["grouped_mm", "KERNEL_SETS", "kernel_set", "mgrouped_impl", "kgrouped_impl"]

KERNEL_SETS = ("triton", "torch", "npu", "loop")
_MODULES = {"triton": "xt.kernels.moe.gg_triton", "torch": "xt.kernels.moe.gg_torch",
            "npu": "xt.kernels.moe.gg_npu", "loop": "xt.kernels.moe.gg_loop"}


def kernel_set(name: str):
    """The module implementing ``mgrouped``/``kgrouped`` for a kernel-set name.

    Raises:
        ValueError: unknown name.
    """
    if name not in _MODULES:
        raise ValueError(f"grouped_gemm: unknown kernel set {name!r}; expected one of {KERNEL_SETS}")
    return importlib.import_module(_MODULES[name])


def _split(backend: str) -> tuple[str, str]:
    m, _, k = backend.partition("/")
    return m, (k or m)


def mgrouped_impl(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool,
                  backend: str) -> torch.Tensor:
    """The m-grouped product of ``backend``'s first kernel set (the body of ``xt_kernels::grouped_mm``)."""
    return kernel_set(_split(backend)[0]).mgrouped(x, w, counts, trans_b)


def kgrouped_impl(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, backend: str) -> torch.Tensor:
    """The k-grouped product of ``backend``'s second kernel set (the body of
    ``xt_kernels::grouped_mm_wgrad``)."""
    return kernel_set(_split(backend)[1]).kgrouped(a, b, counts)


_grouped_mm = torch.library.custom_op("xt_kernels::grouped_mm", mgrouped_impl, mutates_args=())


@_grouped_mm.register_fake
def _(x, w, counts, trans_b, backend):
    return x.new_empty(x.shape[0], w.shape[1] if trans_b else w.shape[2])


_grouped_mm_wgrad = torch.library.custom_op("xt_kernels::grouped_mm_wgrad", kgrouped_impl, mutates_args=())


@_grouped_mm_wgrad.register_fake
def _(a, b, counts, backend):
    return a.new_empty(counts.shape[0], a.shape[1], b.shape[1])


def _setup_context(ctx, inputs, output):
    x, w, counts, trans_b, backend = inputs
    ctx.save_for_backward(x, w, counts)
    ctx.trans_b = trans_b
    ctx.backend = backend


def _backward(ctx, dy):
    x, w, counts = ctx.saved_tensors
    dy = dy.contiguous()  # torch._grouped_mm and the TMA kernels need a row-major gradient
    dx = dw = None
    if ctx.needs_input_grad[0]:
        dx = _grouped_mm(dy, w, counts, not ctx.trans_b, ctx.backend)
    if ctx.needs_input_grad[1]:
        dw = (_grouped_mm_wgrad(dy, x, counts, ctx.backend) if ctx.trans_b
              else _grouped_mm_wgrad(x, dy, counts, ctx.backend))
    return dx, dw, None, None, None


_grouped_mm.register_autograd(_backward, setup_context=_setup_context)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, tokens_per_expert: torch.Tensor, trans_b: bool,
               backend: str) -> torch.Tensor:
    """Differentiable grouped GEMM through the custom op with a concrete kernel-set ``backend``.

    Args:
        x: ``[R, K]`` rows sorted by expert (bf16/fp16/fp32; fp64 with ``"loop"``).
        w: ``[E, K, N]``, or ``[E, N, K]`` when ``trans_b``; same dtype as ``x``.
        tokens_per_expert: ``[E]`` integer counts on ``x``'s device, summing to R (not checked
            on the device: checking would synchronise).
        trans_b: layout of ``w`` (``True`` = ``nn.Linear`` layout ``[E, out, in]``).
        backend: kernel-set name or ``"m/k"`` pair, see module docstring.

    Returns:
        ``[R, N]`` in ``x.dtype`` (float32 accumulation).

    Raises:
        ValueError: shape mismatch, dtype mismatch, unknown backend.
    """
    if x.dim() != 2 or w.dim() != 3:
        raise ValueError(f"grouped_gemm: x must be [R, K] and w [E, K, N]; got {tuple(x.shape)} and {tuple(w.shape)}")
    k_w = w.shape[2] if trans_b else w.shape[1]
    if k_w != x.shape[1]:
        raise ValueError(f"grouped_gemm: inner sizes differ: x has K={x.shape[1]}, w has K={k_w} (trans_b={trans_b})")
    if tokens_per_expert.dim() != 1 or tokens_per_expert.numel() != w.shape[0]:
        raise ValueError(f"grouped_gemm: tokens_per_expert must be [E={w.shape[0]}]; got {tuple(tokens_per_expert.shape)}")
    if x.dtype != w.dtype:
        raise ValueError(f"grouped_gemm: x is {x.dtype} but w is {w.dtype}")
    for part in _split(backend):
        if part not in KERNEL_SETS:
            raise ValueError(f"grouped_gemm: unknown kernel set {part!r} in backend {backend!r}; expected {KERNEL_SETS}")
    return _grouped_mm(x, w, tokens_per_expert, trans_b, backend)
