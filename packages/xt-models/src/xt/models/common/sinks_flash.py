"""Attention with sinks (GPT-OSS) on a flash-style kernel that returns the log-sum-exp: no ``[T, T]``.

Shape legend: T packed tokens, H query heads, G key/value heads, Dq / Dv head dims.

With a learned sink logit ``k_h`` per head, ``p'_j = exp(s_j) / (Z + exp(k_h))`` where
``Z = sum_j exp(s_j) = exp(lse)``. So the sink output is the plain attention output scaled per
row: ``O' = c * O`` with ``c = Z / (Z + e^k) = sigmoid(lse - k)``, and the probabilities are
``p'_j = exp(s_j - lse')`` with the sink-augmented ``lse' = logaddexp(lse, k)``.

Backward (our derivation): with ``D' = rowsum(dO' * O')``, the true score gradient is
``dS_j = p'_j (dO' . v_j - D')``. A flash backward computes ``P_j (dO . v_j - rowsum(dO * O))``
with ``P_j = exp(s_j - lse_saved)``; called with ``(dO', O', lse')`` it therefore returns exactly
the sink attention's dq/dk/dv. The sink's own gradient is ``dk_h = -sum_t exp(k_h - lse'_t) D'_t``.

Inner kernels (``forward(q, k, v, cu, max_seqlen, scale, window) -> (O [T, H, Dv], lse [H, T], aux)``
and ``backward(dO', q, k, v, O', lse', ..., aux) -> (dq, dk, dv)``, ``aux`` being what the kernel's
backward needs back, e.g. its RNG state):
- ``"reference"``: exact masked attention per document in float32/float64, any device (tests,
  CPU); it materialises each document's ``[n, n]`` scores.
- ``"varlen"``: aten's flash varlen ops (``torch.ops.aten._flash_attention_forward`` and
  ``_flash_attention_backward``, CUDA, bf16/fp16) with ``window_size_left = W - 1``: memory linear in T.
  `SinksCoreAttention` uses it for ``"auto"`` on CUDA; tests/models_zoo/test_zoo_sinks_flash.py
  checks it against the reference on the GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xt.models.common.flash_varlen import flash_varlen_backward, flash_varlen_forward

__all__ = ["sinks_attention_lse"]


def _ref_forward(q, k, v, cu, max_seqlen, scale, window):
    T, H, _ = q.shape
    G = k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    out = q.new_zeros(T, H, v.shape[-1], dtype=acc)
    lse = q.new_full((H, T), float("-inf"), dtype=acc)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        qd = q[s:e].to(acc).transpose(0, 1)  # [H, n, Dq]
        kd = k[s:e].to(acc).transpose(0, 1).repeat_interleave(H // G, 0)
        vd = v[s:e].to(acc).transpose(0, 1).repeat_interleave(H // G, 0)
        scores = qd @ kd.transpose(-1, -2) * scale
        scores = scores.masked_fill(~_mask(e - s, window, q.device), float("-inf"))
        row_lse = torch.logsumexp(scores, -1)  # [H, n]
        out[s:e] = (torch.exp(scores - row_lse[..., None]) @ vd).transpose(0, 1)
        lse[:, s:e] = row_lse
    return out.to(q.dtype), lse, None


def _mask(n: int, window: int | None, device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    m = i[None, :] <= i[:, None]
    if window is not None:
        m = m & (i[:, None] - i[None, :] < window)
    return m


def _ref_backward(dout, q, k, v, out, lse, cu, max_seqlen, scale, window, aux=None):
    """The flash backward's formula from (O, lse), per document (module docstring)."""
    T, H, _ = q.shape
    G = k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        qd = q[s:e].to(acc).transpose(0, 1)
        kd = k[s:e].to(acc).transpose(0, 1).repeat_interleave(H // G, 0)
        vd = v[s:e].to(acc).transpose(0, 1).repeat_interleave(H // G, 0)
        od, dod = out[s:e].to(acc).transpose(0, 1), dout[s:e].to(acc).transpose(0, 1)
        scores = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~_mask(e - s, window, q.device), float("-inf"))
        p = torch.exp(scores - lse[:, s:e, None].to(acc))
        d_row = (dod * od).sum(-1, keepdim=True)
        ds = p * (dod @ vd.transpose(-1, -2) - d_row)
        dq[s:e] = (ds @ kd * scale).transpose(0, 1)
        dkh, dvh = ds.transpose(-1, -2) @ qd * scale, p.transpose(-1, -2) @ dod  # [H, n, D]
        dk[s:e] = dkh.view(G, H // G, e - s, -1).sum(1).transpose(0, 1)
        dv[s:e] = dvh.view(G, H // G, e - s, -1).sum(1).transpose(0, 1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _varlen_forward(q, k, v, cu, max_seqlen, scale, window):
    return flash_varlen_forward(q, k, v, cu, max_seqlen, scale, window)


def _varlen_backward(dout, q, k, v, out, lse, cu, max_seqlen, scale, window, aux):
    return flash_varlen_backward(dout, q, k, v, out, lse, cu, max_seqlen, scale, window, aux)


_KERNELS = {"reference": (_ref_forward, _ref_backward), "varlen": (_varlen_forward, _varlen_backward)}


class _SinksAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, cu, max_seqlen, scale, window, kind):
        fwd, _ = _KERNELS[kind]
        out, lse, aux = fwd(q, k, v, cu, max_seqlen, scale, window)  # out [T, H, Dv], lse [H, T]
        acc = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
        lse_aug = torch.logaddexp(lse.to(acc), sinks.to(acc)[:, None])  # [H, T]
        c = torch.exp(lse.to(acc) - lse_aug).transpose(0, 1)[..., None]  # sigmoid(lse - k), [T, H, 1]
        out_s = (out.to(acc) * c).to(out.dtype)
        ctx.save_for_backward(q, k, v, sinks, cu, out_s, lse_aug)
        ctx.cfg = (max_seqlen, scale, window, kind)
        ctx.aux = aux
        return out_s

    @staticmethod
    def backward(ctx, dout):
        q, k, v, sinks, cu, out_s, lse_aug = ctx.saved_tensors
        max_seqlen, scale, window, kind = ctx.cfg
        _, bwd = _KERNELS[kind]
        # the flash kernels keep lse in float32; the reference follows the inputs (float64 tests)
        lse_in = lse_aug if kind == "reference" else lse_aug.to(torch.float32)
        dq, dk, dv = bwd(dout, q, k, v, out_s, lse_in, cu, max_seqlen, scale, window, ctx.aux)
        acc = lse_aug.dtype
        d_row = (dout.to(acc) * out_s.to(acc)).sum(-1)  # [T, H]
        p_sink = torch.exp(sinks.to(acc)[None, :] - lse_aug.transpose(0, 1))  # [T, H]
        dsinks = -(p_sink * d_row).sum(0).to(sinks.dtype)
        return dq, dk, dv, dsinks, None, None, None, None, None


def sinks_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                        cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
                        sliding_window: int | None = None, kernel: str = "reference") -> torch.Tensor:
    """Packed document-causal attention with sinks and an optional sliding window, through a
    kernel that returns the log-sum-exp (module docstring).

    Args:
        q: ``[T, H, Dq]``; k: ``[T, G, Dq]``; v: ``[T, G, Dv]`` (H % G == 0), same dtype.
        sinks: ``[H]`` sink logits (any float dtype; its gradient comes back in that dtype).
        cu_seqlens: ``[D+1]`` int32 document boundaries.
        max_seqlen: longest document.
        scale: softmax scale.
        sliding_window: W keys including the query's own, or None.
        kernel: ``"reference"`` or ``"varlen"``.

    Returns:
        ``[T, H, Dv]`` in ``q.dtype``, differentiable w.r.t. q, k, v and sinks.

    Raises:
        ValueError: unknown kernel, or shapes that disagree.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"sinks attention: unknown kernel {kernel!r}; expected one of {sorted(_KERNELS)}")
    if q.dim() != 3 or k.dim() != 3 or v.shape[:2] != k.shape[:2] or q.shape[1] % k.shape[1] or sinks.shape != (q.shape[1],):
        raise ValueError(f"sinks attention expects q[T,H,D], k/v[T,G,D] with H % G == 0 and sinks[H]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, {tuple(sinks.shape)}")
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return _SinksAttention.apply(q, k, v, sinks, cu, int(max_seqlen), float(scale), sliding_window, kernel)
