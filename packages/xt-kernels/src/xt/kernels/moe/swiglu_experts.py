"""SwiGLU MoE experts with the activation fused into the grouped GEMMs' epilogues.

Shape legend: R routed rows sorted by expert, E experts, D hidden size, F expert intermediate size.

``y = down(silu(gate(x)) * up(x))`` per expert, with HF's stacked layout: ``w_gate_up[E, 2F, D]``
(rows ``[:F]`` gate, ``[F:]`` up) and ``w_down[E, D, F]`` (``nn.Linear`` layout). The unfused
composition (grouped GEMM, then ``F.silu(gate) * up`` in PyTorch, then grouped GEMM) reads and
writes the ``[R, 2F]`` activations several more times in the forward and backward; here:

* forward: one m-grouped kernel computes gate and up per tile (two accumulators) and writes
  ``gate_up[R, 2F]`` (saved for the backward) and ``h = silu(gate) * up`` (float32 math);
* backward: the down projection's dX kernel computes ``dh = dy @ w_down[e]`` and, in its epilogue,
  ``d_gate = dh · up · σ(g)(1 + g(1 − σ(g)))`` and ``d_up = dh · silu(g)``, writing
  ``d_gate_up[R, 2F]`` directly; the weight gradients and dX are the plain grouped GEMMs of
  :mod:`xt.kernels.moe.gg_op` (experts without rows get exactly zero weight gradient).

With bf16/fp16 compute copies of fp32 master weights (`xt.core.engine.compute_weights`) and the
m-grouped products in Triton, the two weight gradients of every micro-batch after a step's first
are added into the masters' fp32 ``.grad`` in the k-grouped kernel's epilogue instead of being
returned (``_wgrad``; docs/architecture.md, gradient accumulation fusion).

The fused epilogues exist in the Triton kernel set (:mod:`xt.kernels.moe.gg_triton`); the other
kernel sets (``torch``, ``npu``, ``loop``) run the same two custom ops with the activation in
PyTorch, so every backend gives the same function.
SwiGLU: Shazeer, "GLU Variants Improve Transformer" (2020).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xt.kernels._autocast import autocast_inputs
from xt.kernels.moe.gg_op import (KERNEL_SETS, _grouped_mm, _grouped_mm_wgrad, _split, kernel_set, kgrouped_impl,
                                  mgrouped_impl)

__all__ = ["swiglu_experts", "swiglu_experts_reference"]


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``[R, 2F] -> [R, F]``: ``silu(gate) * up`` in the input dtype, as PyTorch's own ops compute
    it (bf16/fp16 upcast per element inside the kernels)."""
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


def _dswiglu(dh: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """``[R, F], [R, 2F] -> [R, 2F]``: ``[dh · up · silu'(gate) | dh · silu(gate)]``, written into
    the two halves of one buffer (PyTorch's ``silu_backward`` kernel for the gate half)."""
    g, u = gate_up.chunk(2, dim=-1)
    out = torch.empty_like(gate_up)
    n = g.shape[-1]
    torch.ops.aten.silu_backward.grad_input(dh * u, g, grad_input=out[:, :n])
    torch.mul(dh, F.silu(g), out=out[:, n:])
    return out


def _gate_up_swiglu_impl(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = _split(backend)[0]
    if m == "triton":
        return kernel_set("triton").mgrouped_swiglu(x, w, counts)
    gate_up = kernel_set(m).mgrouped(x, w, counts, True)
    return gate_up, _swiglu(gate_up)


def _down_dswiglu_impl(dy: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor, counts: torch.Tensor,
                       backend: str) -> torch.Tensor:
    m = _split(backend)[0]
    if m == "triton":
        return kernel_set("triton").mgrouped_dswiglu(dy, w, gate_up, counts, False)
    return _dswiglu(kernel_set(m).mgrouped(dy, w, counts, False), gate_up)


_gate_up_swiglu = torch.library.custom_op("xt_kernels::gate_up_swiglu", _gate_up_swiglu_impl, mutates_args=())
_down_dswiglu = torch.library.custom_op("xt_kernels::down_dswiglu", _down_dswiglu_impl, mutates_args=())


@_gate_up_swiglu.register_fake
def _(x, w, counts, backend):
    return x.new_empty(x.shape[0], w.shape[1]), x.new_empty(x.shape[0], w.shape[1] // 2)


@_down_dswiglu.register_fake
def _(dy, w, gate_up, counts, backend):
    return gate_up.new_empty(gate_up.shape)


def _kernels():
    """The four products as custom ops while ``torch.compile`` traces (opaque to it), and as direct
    calls in eager mode (saves the dispatcher's round trip of a Python custom op, ~20 µs each)."""
    if torch.compiler.is_compiling():
        return _gate_up_swiglu, _down_dswiglu, _grouped_mm, _grouped_mm_wgrad
    return _gate_up_swiglu_impl, _down_dswiglu_impl, mgrouped_impl, kgrouped_impl


class _SwiGLUExperts(torch.autograd.Function):
    """Forward: fused gate/up + SwiGLU, then the down grouped GEMM. Backward: fused dX + dSwiGLU
    of the down projection, the two k-grouped weight gradients, and the gate/up dX."""

    @staticmethod
    def forward(ctx, x, w_gate_up, w_down, counts, backend_gate_up: str, backend_down: str, fuse_wgrad: bool):
        gate_up_swiglu, _, mgrouped, _ = _kernels()
        gate_up, h = gate_up_swiglu(x, w_gate_up, counts, backend_gate_up)
        y = mgrouped(h, w_down, counts, True, backend_down)
        ctx.save_for_backward(x, w_gate_up, w_down, counts, gate_up, h)
        ctx.backends = (backend_gate_up, backend_down)
        # fp32 master weights whose .grad the weight gradients may be added into (see _wgrad)
        ctx.masters = (_fusable_master(w_gate_up, x, fuse_wgrad), _fusable_master(w_down, x, fuse_wgrad))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_gate_up, w_down, counts, gate_up, h = ctx.saved_tensors
        b1, b2 = ctx.backends
        m1, m2 = ctx.masters
        _, down_dswiglu, mgrouped, kgrouped = _kernels()
        dy = dy.contiguous()
        d_gate_up = down_dswiglu(dy, w_down, gate_up, counts, b2)
        dx = dw1 = dw2 = None
        if ctx.needs_input_grad[2]:
            dw2 = _wgrad(kgrouped, dy, h, counts, b2, m2)
        if ctx.needs_input_grad[1]:
            dw1 = _wgrad(kgrouped, d_gate_up, x, counts, b1, m1)
        if ctx.needs_input_grad[0]:
            dx = mgrouped(d_gate_up, w_gate_up, counts, False, b1)
        return dx, dw1, dw2, None, None, None, None


def _fusable_master(w: torch.Tensor, x: torch.Tensor, fuse: bool):
    """``w``'s fp32 master (`xt.core.engine.compute_weights.grad_master`) when its weight gradient
    can be added into the master's ``.grad`` by the Triton k-grouped kernel: eager mode (the
    custom ops used under torch.compile do not mutate), 16-bit operands, Triton usable for them."""
    if not fuse or torch.compiler.is_compiling() or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    from xt.core.engine.compute_weights import grad_master
    master = grad_master(w)
    if master is None or master.dtype != torch.float32 or master.shape != w.shape:
        return None
    return master


def _wgrad(kgrouped, a, b, counts, backend, master):
    """The k-grouped weight gradient ``[E, P, Q]``, or None when it was added into ``master.grad``
    (which exists from a step's second micro-batch on; the first one goes through the hook)."""
    g = None if master is None else master.grad
    if g is not None and g.dtype == torch.float32 and g.is_contiguous() and g.shape == master.shape:
        kernel_set("triton").kgrouped(a, b, counts, out=g)
        return None
    return kgrouped(a, b, counts, backend)


def swiglu_experts_reference(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                             tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch composition (per-expert loop GEMMs, ``F.silu(gate) * up``); any dtype/device,
    differentiable by autograd. Same contract as :func:`swiglu_experts`."""
    from xt.kernels.moe.grouped_gemm import grouped_gemm_reference
    gate_up = grouped_gemm_reference(x, w_gate_up, tokens_per_expert, trans_b=True)
    g, u = gate_up.chunk(2, dim=-1)
    return grouped_gemm_reference(F.silu(g) * u, w_down, tokens_per_expert, trans_b=True)


def _auto_backends(x, w_gate_up, w_down, counts) -> tuple[str, str]:
    """``auto``: the m-grouped products run in Triton wherever it is usable (the fused epilogues
    are its reason to exist); the weight gradients use the k-grouped kernel set that
    :func:`~xt.kernels.moe.backends.choose_grouped_gemm` measured fastest for each projection."""
    from xt.kernels.moe import backends
    c1 = backends.choose_grouped_gemm(x, w_gate_up, counts, True)
    h_like = x.new_empty(x.shape[0], w_down.shape[2])
    c2 = backends.choose_grouped_gemm(h_like, w_down, counts, True)
    if x.device.type == "cuda" and c1 != "loop" and c2 != "loop" and "triton" in (
            backends._candidates(x, w_gate_up, True)):
        return f"triton/{_split(c1)[1]}", f"triton/{_split(c2)[1]}"
    return c1, c2


def swiglu_experts(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                   tokens_per_expert: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """E SwiGLU experts over expert-sorted rows: ``y = (silu(x Wg_eᵀ) * (x Wu_eᵀ)) W_down_eᵀ``.

    Differentiable; see the module docstring for what is fused. Inside a ``torch.autocast`` region
    float32 inputs are cast to its dtype first (as for ``nn.Linear``). Experts without rows get exactly
    zero weight gradients; ``tokens_per_expert`` stays on the device for ``triton``/``torch``.

    Args:
        x: ``[R, D]`` rows sorted by expert (bf16/fp16/fp32; any dtype with ``"reference"``).
        w_gate_up: ``[E, 2F, D]``, rows ``[:F]`` the gate and ``[F:]`` the up projection.
        w_down: ``[E, D, F]``.
        tokens_per_expert: ``[E]`` integer counts summing to R, on ``x``'s device.
        backend: as :func:`xt.kernels.moe.grouped_gemm` (``None``: the process-wide grouped-GEMM
            choice); ``"auto"`` on CUDA fuses in Triton and picks each weight gradient's kernel
            set by measurement.

    Returns:
        ``[R, D]`` in ``x.dtype``.

    Raises:
        ValueError: shapes or dtypes that disagree, an unknown backend.
    """
    from xt.kernels.moe import backends
    x, w_gate_up, w_down = autocast_inputs(x, w_gate_up, w_down)
    if x.dim() != 2 or w_gate_up.dim() != 3 or w_down.dim() != 3:
        raise ValueError(f"swiglu_experts: x must be [R, D], w_gate_up [E, 2F, D], w_down [E, D, F]; got "
                         f"{tuple(x.shape)}, {tuple(w_gate_up.shape)}, {tuple(w_down.shape)}")
    E, two_f, D = w_gate_up.shape
    if two_f % 2 or D != x.shape[1] or tuple(w_down.shape) != (E, D, two_f // 2):
        raise ValueError(f"swiglu_experts: expected w_gate_up [E, 2F, D={x.shape[1]}] and w_down [E, D, F]; got "
                         f"{tuple(w_gate_up.shape)} and {tuple(w_down.shape)}")
    if tokens_per_expert.dim() != 1 or tokens_per_expert.numel() != E:
        raise ValueError(f"swiglu_experts: tokens_per_expert must be [E={E}]; got {tuple(tokens_per_expert.shape)}")
    if not (x.dtype == w_gate_up.dtype == w_down.dtype):
        raise ValueError(f"swiglu_experts: dtypes differ: x {x.dtype}, w_gate_up {w_gate_up.dtype}, "
                         f"w_down {w_down.dtype}")
    name = backend or backends.get_backend("grouped_gemm")
    if name not in backends.BACKENDS and any(p not in KERNEL_SETS for p in _split(name)):
        raise ValueError(f"swiglu_experts: unknown backend {name!r}; expected one of {backends.BACKENDS}")
    if name == "reference":
        return swiglu_experts_reference(x, w_gate_up, w_down, tokens_per_expert)
    if name == "auto":
        b1, b2 = _auto_backends(x, w_gate_up, w_down, tokens_per_expert)
    else:
        b1 = b2 = name
    # the weight gradients go into fp32 master gradients through Triton under "auto" (where Triton
    # runs the m-grouped products) or when Triton was asked for them
    fuse = _split(b1)[0] == "triton" and (name == "auto" or _split(b1)[1] == _split(b2)[1] == "triton")
    if x.device.type == "cuda":  # once here rather than in each of the six kernel launches
        tokens_per_expert = tokens_per_expert.to(torch.int32)
    return _SwiGLUExperts.apply(x, w_gate_up, w_down, tokens_per_expert, b1, b2, fuse)
