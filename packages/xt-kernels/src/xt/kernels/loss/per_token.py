"""Per-token statistics of ``softmax(hidden @ weightᵀ / τ)`` without the ``[T, V]`` logits.

Shape legend: T tokens, D hidden size, V vocabulary size, C token chunk.

For each token t with logits ``x_t = hidden_t @ weightᵀ`` and ``y_t = x_t / τ`` (τ: temperature)
the forward returns, as ``[T]`` vectors (zero where ``labels == ignore_index``):

* ``logp_t = y_t[label_t] − lse_t``, the target's log-probability;
* ``H_t = −Σ_v p_tv · log p_tv`` (optional), the entropy, computed as ``log S − Σ e·(y − m) / S``
  with ``m = max y``, ``e = exp(y − m)``, ``S = Σ e`` (no cancellation against large logits);
* ``lse_t = logsumexp_v y_tv`` (the cross-entropy's z-loss uses it).

Method (the chunking of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024,
arXiv:2410.10989, with the backward recomputation of Cut Cross-Entropy, Wijmans et al. 2024,
arXiv:2411.09009; our own code): the forward walks the tokens in chunks of C rows, builds one
``[C, V]`` logits block, reduces it to the three row statistics and frees it. The upstream
gradient is an arbitrary ``[T]`` vector per output, so unlike the scalar loss the gradient cannot
be formed in the forward; the backward recomputes each chunk's logits and turns them, in place,
into ``dL/dx = (1/τ)·(a·onehot + p·(b + c·(y − lse)))`` with per-row coefficients from the
upstream gradients ``g_logp``, ``g_H``, ``g_lse`` (``dlogp/dy = onehot − p``,
``dH/dy = −p·(log p + H)``, ``dlse/dy = p``)::

    a = g_logp,   b = −g_logp − g_H·H + g_lse,   c = −g_H      (all · valid)

then ``dhidden[C] = dx @ weight`` and ``dweight += dxᵀ @ hidden[C]``. The row steps run as Triton
kernels (``per_token_triton``) or as the torch ops below. At most one logits block is alive; the
torch steps add up to two float32 ``[C, V]`` temporaries (one without the entropy, one fewer for
float32 logits), the Triton steps none (the backward writes the gradient over the logits).

Numerics as :mod:`xt.kernels.loss.linear_ce`: logits in the input dtype (autocast's under
autocast), row statistics and outputs in float32 (float64 for float64 inputs), gradients in the
input dtypes, ``dweight`` accumulated in float32 and rounded to the weight dtype once.
"""
from __future__ import annotations

import torch

from xt.kernels.loss._head import backprop_chunk, compute_dtype, weight_grad_buffer

__all__ = ["token_stats"]


def _stats_torch(logits, labels, ignore_index, inv_temp, with_entropy):
    """Rows' ``(logp, H or None, lse)`` of one chunk, logp and H zero on ignored rows, lse every
    row's (the chunk buffer may be overwritten)."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    y = logits.to(acc)
    if inv_temp != 1.0:
        y = y.mul_(inv_temp)
    valid = labels != ignore_index
    tgt = y.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]
    m = y.amax(dim=-1, keepdim=True)
    ym = y.sub_(m)
    e = ym.exp() if with_entropy else ym.exp_()  # y − m is needed again only for the entropy
    s = e.sum(dim=-1)
    log_s = s.log()
    vf = valid.to(acc)
    lse = m[:, 0] + log_s
    ent = None
    if with_entropy:  # row dot products e·(y − m) without a third [C, V] buffer
        ent = (log_s - torch.bmm(e[:, None, :], ym[:, :, None])[:, 0, 0] / s) * vf
    return (tgt - lse) * vf, ent, lse


def _grad_torch(logits, labels, ignore_index, inv_temp, lse, a, b, c):
    """``dL/dx`` of one chunk (logits dtype); ``a, b, c`` are ``[C]`` (``c`` may be None = 0)."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    ym = logits.to(acc)
    if inv_temp != 1.0:
        ym = ym.mul_(inv_temp)
    ym = ym.sub_(lse[:, None])
    if c is None:
        g = ym.exp_().mul_(b[:, None])
    else:
        g = ym.exp().mul_(ym.mul_(c[:, None]).add_(b[:, None]))
    safe = torch.where(labels != ignore_index, labels, 0)
    g.scatter_add_(1, safe[:, None], a[:, None])
    if inv_temp != 1.0:
        g.mul_(inv_temp)
    return g.to(logits.dtype)


def _steps(kind: str):
    if kind == "triton":
        from xt.kernels.loss import per_token_triton
        return per_token_triton.stats_step, per_token_triton.grad_step
    return _stats_torch, _grad_torch


def _logits(hidden, w_c, s, chunk, compute):
    """Rows ``s:s+chunk`` of hidden in the compute dtype and their logits ``[C, V]``."""
    h = hidden[s:s + chunk].to(compute)
    return h, h @ w_c.t()


class _TokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, inv_temp, with_entropy, chunk, kind):
        T = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        compute = compute_dtype(hidden, weight)
        logp = torch.empty(T, dtype=acc, device=hidden.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else logp.new_zeros(0)
        stats, _ = _steps(kind)
        w_c = weight.to(compute)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, T, chunk):
                _, logits = _logits(hidden, w_c, s, chunk, compute)
                lp, h_, ls = stats(logits, labels[s:s + chunk], ignore_index, inv_temp, with_entropy)
                logp[s:s + chunk] = lp
                lse[s:s + chunk] = ls
                if with_entropy:
                    ent[s:s + chunk] = h_
                del logits
        ctx.save_for_backward(hidden, weight, labels, lse, ent)
        ctx.cfg = (ignore_index, inv_temp, chunk, kind, compute)
        valid = labels != ignore_index
        out = (logp, ent, lse * valid)
        if not with_entropy:
            ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_lse):
        hidden, weight, labels, lse, ent = ctx.saved_tensors
        ignore_index, inv_temp, chunk, kind, compute = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[:2]
        valid = (labels != ignore_index).to(lse.dtype)
        a = g_logp.to(lse.dtype) * valid if g_logp is not None else torch.zeros_like(lse)
        b = -a
        if g_lse is not None:
            b = b + g_lse.to(lse.dtype) * valid
        c = None
        if g_ent is not None and ent.numel():
            c = -g_ent.to(lse.dtype) * valid
            b = b + c * ent
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = weight_grad_buffer(weight, hidden.shape[0]) if need_w else None
        _, grad_step = _steps(kind)
        w_c = weight.to(compute)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                e = s + chunk
                h, logits = _logits(hidden, w_c, s, chunk, compute)
                g = grad_step(logits, labels[s:e], ignore_index, inv_temp, lse[s:e], a[s:e], b[s:e],
                              None if c is None else c[s:e])
                backprop_chunk(g, h, w_c, slice(s, e), grad_h, grad_w, first=s == 0)
                del logits, g
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def token_stats(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                inv_temp: float, with_entropy: bool, chunk: int, kind: str):
    """``(logp [T], entropy [T] or [0], lse [T])`` in float32 (float64 for float64 inputs; the public
    functions cast to float32), differentiable w.r.t. hidden and weight; all three are 0 on ignored rows.

    Internal: the public entry points (:func:`xt.kernels.loss.linear_log_probs`,
    ``linear_cross_entropy(reduction="none")``) validate the arguments first.

    Args:
        hidden: ``[T, D]``; weight: ``[V, D]`` (same dtype); labels: ``[T]`` int64.
        ignore_index: label whose rows get zero outputs and zero gradient.
        inv_temp: ``1 / temperature`` (> 0).
        with_entropy: compute the entropy (else the second output is empty and not differentiable).
        chunk: rows per logits block.
        kind: ``"triton"`` or ``"torch"`` row steps.
    """
    return _TokenStats.apply(hidden, weight, labels, ignore_index, float(inv_temp), bool(with_entropy),
                             int(chunk), kind)
