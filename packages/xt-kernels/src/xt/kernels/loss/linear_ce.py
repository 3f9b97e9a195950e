"""Fused linear + cross-entropy: the loss of ``hidden @ weightᵀ`` without the ``[T, V]`` logits.

Shape legend: T tokens, D hidden size, V vocabulary size, C token chunk.

Method (the chunked-gradient idea of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024,
arXiv:2410.10989; our own code): the forward walks the tokens in chunks of C rows. For each chunk
it computes the logits ``[C, V]``, the per-row log-sum-exp, loss and z-loss, and right away the
gradient of the loss w.r.t. the logits (``softmax - onehot``, plus ``2·coef·lse·softmax`` for the
z-loss), which it multiplies into ``dhidden[C, D]`` and accumulates into ``dweight[V, D]``. Only
one chunk of logits ever exists; backward just scales the stored gradients by the incoming scalar.
The per-chunk softmax/gradient step runs as one Triton kernel (in place over the logits chunk)
when the ``triton`` backend is chosen, else as torch ops. ``reduction="none"`` needs the gradient
for an arbitrary ``[T]`` upstream vector, so it goes through the per-token statistics of
:mod:`xt.kernels.loss.per_token` instead (backward recomputes the logits chunks; Triton kernels
there too).

Numerics: logits in the input dtype, or in autocast's dtype when autocast is on (like an
``nn.Linear`` head; gradients are returned in the input dtype), softmax/lse/loss in float32
(float64 for float64 inputs). ``dweight`` accumulates across chunks in float32 (float64 for
float64) and is rounded to the weight dtype once. Under autocast a float32 ``hidden`` may meet a
``weight`` already in autocast's dtype (a bf16 compute copy); both run in that dtype.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from xt.core.labels import IGNORE_INDEX
from xt.kernels import registry
from xt.kernels.loss._head import (backprop_chunk, check_head_inputs, chunk_kind, compute_dtype, default_chunk_size,
                                   resolve_chunk, weight_grad_buffer)

__all__ = ["linear_cross_entropy", "linear_cross_entropy_backend", "default_chunk_size"]


def _step_torch(logits, labels, ignore_index, z_coef, scale):
    """Rows' (loss, z) and the logits gradient (scaled by ``scale``, zero on ignored rows).

    One pass of ``exp`` over the chunk: ``e = exp(l - max)``, ``lse = max + log Σe``,
    ``softmax = e / Σe`` (the chunk buffer is reused in place).
    """
    acc = torch.promote_types(logits.dtype, torch.float32)
    lf = logits.to(acc)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0)
    tgt = lf.gather(1, safe[:, None])[:, 0]
    row_max = lf.amax(dim=-1, keepdim=True)
    g = lf.sub_(row_max).exp_()
    denom = g.sum(dim=-1)
    lse = row_max[:, 0] + denom.log()
    vf = valid.to(acc)
    loss = (lse - tgt) * vf
    z = lse * lse * vf
    g.div_(denom[:, None])  # softmax
    if z_coef:
        g.mul_((1.0 + 2.0 * z_coef * lse)[:, None])
    g.scatter_add_(1, safe[:, None], -torch.ones_like(g[:, :1]))
    g.mul_((vf * scale)[:, None])
    return loss, z, g.to(logits.dtype)


def _fp32_master(weight: torch.Tensor):
    """The fp32 master of a 16-bit compute copy (`xt.core.engine.compute_weights.grad_master`)."""
    if weight.dtype not in (torch.bfloat16, torch.float16):
        return None
    from xt.core.engine.compute_weights import grad_master
    master = grad_master(weight)
    return master if master is not None and master.dtype == torch.float32 and master.shape == weight.shape else None


def _step(kind: str):
    if kind == "triton":
        from xt.kernels.loss.ce_triton import ce_step
        return ce_step
    return _step_torch


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, z_coef, denom, chunk, kind, grad_enabled):
        T, D = hidden.shape
        acc = torch.promote_types(hidden.dtype, torch.float32)
        compute = compute_dtype(hidden, weight)
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = weight_grad_buffer(weight, T) if need_w else None
        ctx.weight_dtype = weight.dtype
        ctx.master = _fp32_master(weight) if need_w else None
        # a Python denominator becomes a device scalar by a fill, not a host-to-device copy (which
        # would synchronise the host with the GPU once per micro-batch)
        scale = (1.0 / denom.to(device=hidden.device, dtype=acc) if isinstance(denom, torch.Tensor)
                 else torch.full((), 1.0 / float(denom), dtype=acc, device=hidden.device))
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        z_sum = torch.zeros((), dtype=acc, device=hidden.device)
        step = _step(kind)
        w_c = weight.to(compute)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, T, chunk):
                h = hidden[s:s + chunk].to(compute)
                logits = h @ w_c.t()
                loss, z, g = step(logits, labels[s:s + chunk], ignore_index, z_coef, scale)
                loss_sum += loss.sum()
                z_sum += z.sum()
                backprop_chunk(g, h, w_c, slice(s, s + chunk), grad_h, grad_w, first=s == 0)
                del logits, g
        total = (loss_sum + z_coef * z_sum) * scale
        ctx.save_for_backward(grad_h, grad_w)
        z_loss = (z_coef * z_sum * scale).float()
        ctx.mark_non_differentiable(z_loss)
        return total.float(), z_loss

    @staticmethod
    def backward(ctx, grad_total, grad_z):  # noqa: ARG004 - z-loss output is for logging only
        grad_h, grad_w = ctx.saved_tensors
        gh = gw = None
        if grad_h is not None:
            gh = grad_h * grad_total.to(grad_h.dtype)
        if grad_w is not None and ctx.master is not None and grad_w.dtype == torch.float32:
            # a compute copy's fp32 master: add the fp32 gradient straight into its .grad (no
            # rounding to 16 bits, no separate hook add; xt.kernels.linear's reasoning)
            g = ctx.master.grad
            if g is None:
                ctx.master.grad = grad_w * grad_total.to(grad_w.dtype)
            else:
                g.addcmul_(grad_w, grad_total.to(grad_w.dtype))
        elif grad_w is not None:
            gw = (grad_w * grad_total.to(grad_w.dtype)).to(ctx.weight_dtype)
        return gh, gw, None, None, None, None, None, None, None


def _reference(hidden, weight, labels, ignore_index, z_coef, denom):
    """Full logits + ``F.cross_entropy`` (materialises ``[T, V]``; the tests' ground truth).
    ``denom`` None: per-token ``[T]`` results (``reduction="none"``)."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    logits = (hidden @ weight.t()).to(acc)
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).to(acc)
    z = torch.logsumexp(logits, dim=-1) ** 2 * valid * z_coef
    if denom is None:
        return (ce + z).float(), z.detach().float()
    return ((ce.sum() + z.sum()) / denom).float(), (z.sum() / denom).detach().float()


def _per_token(hidden, weight, labels, ignore_index, z_coef, chunk, kind):
    """``reduction="none"``: per-token ``(loss [T], z [T])`` float32 from the per-token statistics
    (``loss_t = −logp_t + z_coef·lse_t²``, 0 on ignored tokens)."""
    from xt.kernels.loss.per_token import token_stats
    logp, _, lse = token_stats(hidden, weight, labels, ignore_index, 1.0, False, chunk, kind)
    z = z_coef * lse * lse
    return (z - logp).float(), z.detach().float()


def linear_cross_entropy_backend(hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction="sum",
                                 num_tokens=None, z_loss_coef=0.0, chunk_size=None, return_z_loss=False,
                                 *, backend="auto"):
    """:func:`linear_cross_entropy` with an explicit backend name (see that function)."""
    fn = "linear_cross_entropy"
    check_head_inputs(fn, hidden, weight, labels)
    labels = labels.long()
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"{fn}: reduction must be 'sum', 'mean' or 'none'; got {reduction!r}")
    chunk = resolve_chunk(fn, chunk_size, hidden.shape[0], weight.shape[0])
    if reduction == "none":
        if backend == "reference":
            total, z = _reference(hidden, weight, labels, ignore_index, z_loss_coef, None)
        else:
            total, z = _per_token(hidden, weight, labels, ignore_index, float(z_loss_coef), chunk,
                                  chunk_kind(backend, hidden.device))
        return (total, z) if return_z_loss else total
    if reduction == "sum":
        denom = 1.0
    elif num_tokens is not None:
        denom = num_tokens
    else:  # a device tensor: no synchronisation
        denom = (labels != ignore_index).sum().clamp(min=1).to(torch.promote_types(hidden.dtype, torch.float32))
    if backend == "reference":
        total, z = _reference(hidden, weight, labels, ignore_index, z_loss_coef, denom)
    else:
        total, z = _LinearCE.apply(hidden, weight, labels, ignore_index, float(z_loss_coef), denom, chunk,
                                  chunk_kind(backend, hidden.device), torch.is_grad_enabled())
    return (total, z) if return_z_loss else total


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "sum", num_tokens=None,
                         z_loss_coef: float = 0.0, chunk_size: int | None = None,
                         return_z_loss: bool = False, backend: str | None = None):
    """Cross-entropy of ``hidden @ weightᵀ`` against ``labels`` without materialising the logits.

    ``loss = Σ_t valid_t · (lse_t − logit_t[label_t] + z_loss_coef · lse_t²) / denom`` where
    ``lse_t = logsumexp_v logit_t[v]`` (z-loss: PaLM, Chowdhery et al. 2022, §5); with
    ``reduction="none"`` the ``[T]`` vector of the summands (no denom), differentiable for any
    ``[T]`` upstream gradient. Chunked as Liger-Kernel's fused linear cross-entropy (Hsu et al.
    2024); see the module docstring.

    Args:
        hidden: ``[T, D]`` final hidden states (bf16/fp16/fp32/fp64).
        weight: ``[V, D]`` LM-head weight (``nn.Linear`` layout), same dtype.
        labels: ``[T]`` integer targets in ``[0, V)``, already shifted (``xt`` batch contract);
            ``ignore_index`` marks tokens without loss.
        ignore_index: label value to skip.
        reduction: ``"sum"`` (denom 1), ``"mean"`` (denom ``num_tokens`` if given, else the
            number of non-ignored labels, counted on the device) or ``"none"`` (per-token ``[T]``,
            0 on ignored tokens).
        num_tokens: global token count to divide by (int, float or 0-d tensor) for ``"mean"``;
            ignored otherwise.
        z_loss_coef: coefficient of the z-loss term (0 disables it).
        chunk_size: tokens per chunk, a positive int (default :func:`default_chunk_size`).
        return_z_loss: also return the z-loss part (already multiplied by its coefficient and
            divided by denom, per token for ``"none"``; detached, for logging).
        backend: ``"triton"`` (fused Triton softmax-gradient step; for ``"none"`` the Triton
            per-token kernels), ``"torch"`` (torch ops per chunk), ``"reference"`` (full logits +
            ``F.cross_entropy``: materialises ``[T, V]``), ``"npu"`` (= torch), ``"auto"`` or
            ``None`` (process-wide choice).

    Returns:
        Scalar float32 loss (CE + z-loss), or for ``"none"`` a ``[T]`` float32 vector; with
        ``return_z_loss`` the pair ``(loss, z_loss)`` of the same shape.

    Raises:
        ValueError: mismatched shapes/dtypes, non-integer labels, an unknown ``reduction``, a
            ``chunk_size`` that is not a positive int, or an unknown ``backend``.
    """
    return registry.dispatch("loss", backend)(hidden, weight, labels, ignore_index, reduction, num_tokens,
                                              z_loss_coef, chunk_size, return_z_loss)


registry.register("loss", lambda name: functools.partial(linear_cross_entropy_backend, backend=name))
