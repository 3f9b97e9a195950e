"""``nn.Linear``'s product with the weight gradient added into an fp32 master gradient by the GEMM.

Shape legend: T rows (tokens; any leading dims flatten into them), K in features, N out features.

Under ``train.weight_cast = "per_step"`` (`xt.core.engine.compute_weights`) each weight the model
multiplies is a bf16 copy of an fp32 master. Through plain ``F.linear`` its gradient is a bf16
``dW[N, K]`` that a post-accumulate-grad hook adds into ``master.grad``: the GEMM writes ``dW``, the
hook reads it back and reads and writes the fp32 ``.grad``, and the hook's add costs ~0.1 ms of host
time per weight and micro-batch. Here the backward hands the product to cuBLAS with the fp32
``master.grad`` as its output and beta = 1 (``torch.addmm(..., out_dtype=float32, out=grad)``): the
fp32 accumulators are added straight into the master gradient, no bf16 ``dW`` exists, and the sum
is not rounded to bf16 first (Megatron-LM's "gradient accumulation fusion" into ``main_grad``; H200
numbers in ``benchmarks/results/kernels-dense-wgrad-*.json``). The first micro-batch of a step
creates ``master.grad`` with an fp32-output GEMM.

Off CUDA (no fp32-output bf16 GEMM there) the same sum is formed by an fp32 matmul of the upcast
operands (exact products, fp32 accumulation). Anything that is not a 16-bit compute copy, a
weight with a bias, a call being traced by ``torch.compile`` or one without autograd (``torch.no_grad``:
reference forwards, KV-cache rollouts; the same product without the autograd function's host
overhead) takes ``F.linear`` unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xt.kernels._autocast import autocast_inputs

__all__ = ["linear"]


def _master_of(weight: torch.Tensor):
    from xt.core.engine.compute_weights import grad_master
    master = grad_master(weight)
    if master is None or master.dtype != torch.float32 or master.shape != weight.shape:
        return None
    return master


def _accumulate_wgrad(master: torch.nn.Parameter, dy: torch.Tensor, x: torch.Tensor) -> None:
    """``master.grad += dyᵀ x`` in fp32 (created on first use): ``dy[T, N]``, ``x[T, K]`` 16-bit."""
    g = master.grad
    if dy.is_cuda:
        if g is None:
            master.grad = torch.mm(dy.t(), x, out_dtype=torch.float32)
        elif g.dtype == torch.float32 and g.is_contiguous():
            torch.addmm(g, dy.t(), x, out_dtype=torch.float32, out=g)
        else:
            g.add_(torch.mm(dy.t(), x, out_dtype=torch.float32))
        return
    prod = dy.t().float() @ x.float()
    if g is None:
        master.grad = prod
    else:
        g.add_(prod)


class _LinearGradAccum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, master):
        ctx.save_for_backward(x, weight)
        ctx.master = master
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            _accumulate_wgrad(ctx.master, dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1]))
        # the weight's gradient went into master.grad: none for the copy (its hook has nothing to add)
        return dx, None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x Wᵀ (+ b)`` like ``F.linear``; for a 16-bit compute copy of an fp32 master, the
    weight gradient is added into the master's fp32 ``.grad`` by the GEMM (module docstring).

    Args:
        x: ``[..., K]``; float32 inputs are cast to the autocast dtype inside an autocast region
            (as ``nn.Linear`` would).
        weight: ``[N, K]``.
        bias: ``[N]`` or None.

    Returns:
        ``[..., N]`` in the compute dtype (as ``F.linear``, autocast included).

    Raises:
        RuntimeError: as ``F.linear`` for shapes or dtypes that disagree.
    """
    if bias is not None or not weight.requires_grad or weight.dtype not in (torch.bfloat16, torch.float16) \
            or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    master = _master_of(weight)
    if master is None:
        return F.linear(x, weight, bias)
    (x,) = autocast_inputs(x)
    if x.dtype != weight.dtype or not torch.is_grad_enabled():  # no autograd (a rollout): nothing to add
        return F.linear(x, weight, bias)
    return _LinearGradAccum.apply(x, weight, master)
