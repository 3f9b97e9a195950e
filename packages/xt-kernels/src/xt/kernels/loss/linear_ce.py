"""Fused linear + cross-entropy: the loss of ``hidden @ weightᵀ`` without the ``[T, V]`` logits.

Shape legend: T tokens, D hidden size, V vocabulary size, C token chunk.

Method (the chunked-gradient idea of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024,
arXiv:2410.10989; our own code): the forward walks the tokens in chunks of C rows. For each chunk
it computes the logits ``[C, V]``, the per-row log-sum-exp, loss and z-loss, and right away the
gradient of the loss w.r.t. the logits (``softmax - onehot``, plus ``2·coef·lse·softmax`` for the
z-loss), which it multiplies into ``dhidden[C, D]`` and accumulates into ``dweight[V, D]``. Only
one chunk of logits ever exists; backward just scales the stored gradients by the incoming scalar.
The per-chunk softmax/gradient step runs as one Triton kernel (in place over the logits chunk)
when the ``triton`` backend is chosen, else as torch ops.

Numerics: logits in the input dtype, or in autocast's dtype when autocast is on (like an
``nn.Linear`` head; gradients are returned in the input dtype), softmax/lse/loss in float32
(float64 for float64 inputs). ``dweight`` accumulates across chunks in the weight dtype with
``addmm_`` (float32 accumulation inside each product, one rounding per chunk).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from xt.core.labels import IGNORE_INDEX
from xt.kernels import registry
from xt.kernels._autocast import autocast_dtype

__all__ = ["linear_cross_entropy", "linear_cross_entropy_backend", "default_chunk_size"]


def default_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """Rows per chunk: at most 2^28 logits (1 GiB in float32), a multiple of 128 when > 128."""
    c = max(1, (1 << 28) // max(vocab_size, 1))
    if c > 128:
        c = c // 128 * 128
    return max(1, min(num_tokens, c))


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


def _step(kind: str):
    if kind == "triton":
        from xt.kernels.loss.ce_triton import ce_step
        return ce_step
    return _step_torch


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head product runs in: autocast's when autocast is on for ``t``'s device
    (as for an ``nn.Linear`` head under autocast), else ``t.dtype``."""
    dt = autocast_dtype(t)
    return dt if dt is not None and t.dtype == torch.float32 else t.dtype


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, z_coef, denom, chunk, kind, grad_enabled):
        T, D = hidden.shape
        acc = torch.promote_types(hidden.dtype, torch.float32)
        compute = _compute_dtype(hidden)
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        scale = 1.0 / torch.as_tensor(denom, dtype=acc, device=hidden.device)
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
                if need_h:
                    if compute == hidden.dtype:
                        torch.mm(g, w_c, out=grad_h[s:s + chunk])
                    else:
                        grad_h[s:s + chunk] = g @ w_c
                if need_w:
                    if compute == weight.dtype:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w += g.t() @ h
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
        if grad_w is not None:
            gw = grad_w * grad_total.to(grad_w.dtype)
        return gh, gw, None, None, None, None, None, None, None


def _reference(hidden, weight, labels, ignore_index, z_coef, denom):
    """Full logits + ``F.cross_entropy`` (materialises ``[T, V]``; the tests' ground truth)."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    logits = (hidden @ weight.t()).to(acc)
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    valid = (labels != ignore_index).to(acc)
    z = (torch.logsumexp(logits, dim=-1) ** 2 * valid).sum() * z_coef
    return ((ce + z) / denom).float(), (z / denom).detach().float()


def linear_cross_entropy_backend(hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction="sum",
                                 num_tokens=None, z_loss_coef=0.0, chunk_size=None, return_z_loss=False,
                                 *, backend="auto"):
    """:func:`linear_cross_entropy` with an explicit backend name (see that function)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden must be [T, D] and weight [V, D]; got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: labels must be [T={hidden.shape[0]}]; got {tuple(labels.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'sum' or 'mean'; got {reduction!r}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}")
    if reduction == "sum":
        denom = 1.0
    elif num_tokens is not None:
        denom = num_tokens
    else:  # a device tensor: no synchronisation
        denom = (labels != ignore_index).sum().clamp(min=1).to(torch.promote_types(hidden.dtype, torch.float32))
    if backend == "reference":
        total, z = _reference(hidden, weight, labels, ignore_index, z_loss_coef, denom)
    else:
        if backend == "auto":
            from xt.kernels._triton_support import triton_usable_on
            kind = "triton" if hidden.device.type == "cuda" and triton_usable_on(hidden.device) else "torch"
        else:
            kind = "triton" if backend == "triton" else "torch"
        chunk = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0])
        total, z = _LinearCE.apply(hidden, weight, labels, ignore_index, float(z_loss_coef), denom, chunk, kind,
                                  torch.is_grad_enabled())
    return (total, z) if return_z_loss else total


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "sum", num_tokens=None,
                         z_loss_coef: float = 0.0, chunk_size: int | None = None,
                         return_z_loss: bool = False, backend: str | None = None):
    """Cross-entropy of ``hidden @ weightᵀ`` against ``labels`` without materialising the logits.

    ``loss = Σ_t valid_t · (lse_t − logit_t[label_t] + z_loss_coef · lse_t²) / denom`` where
    ``lse_t = logsumexp_v logit_t[v]`` (z-loss: PaLM, Chowdhery et al. 2022, §5).

    Args:
        hidden: ``[T, D]`` final hidden states (bf16/fp16/fp32/fp64).
        weight: ``[V, D]`` LM-head weight (``nn.Linear`` layout), same dtype.
        labels: ``[T]`` int64 targets, already shifted (``xt`` batch contract); ``ignore_index``
            marks tokens without loss.
        ignore_index: label value to skip.
        reduction: ``"sum"`` (denom 1) or ``"mean"`` (denom ``num_tokens`` if given, else the
            number of non-ignored labels, counted on the device).
        num_tokens: global token count to divide by (int, float or 0-d tensor) for ``"mean"``.
        z_loss_coef: coefficient of the z-loss term (0 disables it).
        chunk_size: tokens per chunk (default :func:`default_chunk_size`).
        return_z_loss: also return the z-loss part (already multiplied by its coefficient and
            divided by denom; detached, for logging).
        backend: ``"triton"`` (fused Triton softmax-gradient step), ``"torch"`` (torch ops per
            chunk), ``"reference"`` (full logits + ``F.cross_entropy``: materialises ``[T, V]``),
            ``"npu"`` (= torch), ``"auto"`` or ``None`` (process-wide choice).

    Returns:
        Scalar float32 loss (CE + z-loss), or ``(loss, z_loss)`` with ``return_z_loss``.

    Raises:
        ValueError: mismatched shapes/dtypes, or an unknown reduction.
    """
    return registry.dispatch("loss", backend)(hidden, weight, labels, ignore_index, reduction, num_tokens,
                                              z_loss_coef, chunk_size, return_z_loss)


registry.register("loss", lambda name: functools.partial(linear_cross_entropy_backend, backend=name))
