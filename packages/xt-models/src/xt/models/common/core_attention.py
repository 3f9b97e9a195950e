"""Core attention over packed documents: ``softmax(q k^T * scale + causal document mask) v``.

Every backend has the same interface (an ``nn.Module`` so that ``xt.parallel`` can wrap it, e.g.
for Ulysses sequence parallelism)::

    forward(q[T, Hq, hd], k[T, Hkv, hd], v[T, Hkv, hd], cu_seqlens[D+1] int32, max_seqlen: int) -> [T, Hq, hd]

Token ``t`` of document ``d`` (``cu_seqlens[d] <= t < cu_seqlens[d+1]``) attends to tokens
``cu_seqlens[d] .. t`` only: causal inside a document, nothing across documents. ``Hq`` must be
a multiple of ``Hkv`` (grouped-query attention, Ainslie et al. 2023, arXiv:2305.13245).

Backends (``CoreAttention(backend=...)``):
  * ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; few documents -> one causal
    call per document, many -> one call with a block-diagonal causal boolean mask. Any device.
  * ``"flex"``: ``torch.nn.attention.flex_attention`` with a document-causal block mask
    (compiled with ``torch.compile`` on CUDA, eager elsewhere).
  * ``"varlen"``: aten's flash varlen kernels (the ones ``torch.nn.attention.varlen.varlen_attn``
    runs) through `xt.models.common.flash_varlen`, without that wrapper's host overhead; CUDA,
    bf16/fp16, grouped-query heads native.
  * ``"cudnn"``: cuDNN's fused attention through SDPA's cuDNN backend, one 4-D causal call, for a
    micro-batch that is one document (``cu_seqlens`` of 2 entries: known from its shape, no device
    read); a micro-batch of several documents runs ``"varlen"`` (cuDNN's packed-layout path gave
    wrong gradients in torch 2.11, so it is not used). CUDA, bf16/fp16, grouped-query heads native.
  * ``"flash_attn"``: ``flash_attn.flash_attn_varlen_func`` (package ``flash-attn``, CUDA).
  * ``"auto"`` (default): per call, on CUDA with bf16/fp16 inputs ``cudnn`` for one document of
    ``_CUDNN_MIN_TOKENS`` to ``_CUDNN_MAX_TOKENS`` tokens when cuDNN attention is available, else
    ``varlen`` if this torch build has flash attention, else ``flash_attn`` if installed, else
    ``sdpa``; ``sdpa`` everywhere else.

Mixed precision: inside a ``torch.autocast`` region, float32 ``q, k, v`` are cast to the region's
dtype first, the rule autocast applies to matmuls (``xt.kernels.autocast_inputs``). Without it, q/k
leaving an fp32 RMSNorm would keep attention in fp32: off the flash kernels, on SDPA's math path
with a ``[H, T, T]`` score matrix. The output then has the autocast dtype.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from xt.kernels import autocast_inputs

__all__ = ["CoreAttention", "document_causal_mask", "BACKENDS"]

BACKENDS = ("auto", "sdpa", "flex", "varlen", "cudnn", "flash_attn")
# "auto" runs a one-document micro-batch of at least this many tokens on cuDNN's attention, which
# was 1.6x faster than the flash varlen kernels for forward + backward on the H200 at 4k tokens
# (benchmarks/results/kernels-attention-2026-12-01.json) but costs ~0.4 ms more host time per call
_CUDNN_MIN_TOKENS = 4096
# ... and at most this many: the longest one-document micro-batch measured on cuDNN (16k x 4 through
# `xt train`); longer documents (64k-256k runs, measured on flash) stay on flash until measured
_CUDNN_MAX_TOKENS = 16384
# The SDPA backend loops over documents (one ``is_causal=True`` call each) when there are at most
# this many documents or they average at least _SDPA_LOOP_MIN_AVG_LEN tokens; otherwise one call
# with a [T, T] mask beats the per-call overhead (measured on CPU, T=2048: 256 docs loop 0.27 s
# vs mask 0.72 s forward+backward; 1024 docs loop 1.0 s vs mask 0.78 s).
_SDPA_LOOP_MAX_DOCS = 32
_SDPA_LOOP_MIN_AVG_LEN = 16


def document_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean ``[T, T]`` mask, True where query ``i`` may attend key ``j`` (same document, ``j <= i``)."""
    doc = _doc_ids(cu_seqlens, total)
    idx = torch.arange(total, device=cu_seqlens.device)
    return (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])


def _doc_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``[T]`` int64 document index of every token."""
    idx = torch.arange(total, device=cu_seqlens.device)
    return torch.bucketize(idx, cu_seqlens[1:].to(torch.int64), right=True)


@lru_cache(maxsize=None)
def _has_aten_flash() -> bool:
    return bool(getattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)())


@lru_cache(maxsize=None)
def _has_cudnn_attention() -> bool:
    return bool(getattr(torch.backends.cuda, "is_cudnn_attention_available", lambda: False)()) or (
        torch.backends.cudnn.is_available() and torch.backends.cudnn.version() is not None
        and torch.backends.cudnn.version() >= 90000)


@lru_cache(maxsize=None)
def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[T, Hkv, hd] -> [T, Hkv*groups, hd]`` (each kv head repeated for its query group)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


class CoreAttention(nn.Module):
    """Document-causal attention over a packed batch; see the module docstring for backends.

    Args:
        backend: one of :data:`BACKENDS`.
        softmax_scale: multiplier of ``q k^T``; None means ``head_dim ** -0.5``.

    Raises:
        ValueError: unknown backend; shape mismatches; a backend that is not available here.
    """

    def __init__(self, backend: str = "auto", softmax_scale: float | None = None) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"attention backend {backend!r} unknown; allowed: {list(BACKENDS)}")
        self.backend = backend
        self.softmax_scale = softmax_scale

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, softmax_scale={self.softmax_scale}"

    def resolve_backend(self, q: torch.Tensor) -> str:
        """The concrete backend ``"auto"`` picks for tensors like ``q`` (device and dtype)."""
        if self.backend != "auto":
            return self.backend
        if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
            if _has_aten_flash():
                return "varlen"
            if _has_flash_attn():
                return "flash_attn"
        return "sdpa"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """Attend; shapes in the module docstring. Output has ``q``'s dtype, or the autocast dtype
        for float32 inputs inside an autocast region."""
        if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(f"core attention expects q[T,Hq,hd], k/v[T,Hkv,hd]; got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"num_attention_heads={q.shape[1]} is not a multiple of num_key_value_heads={k.shape[1]}")
        scale = self.softmax_scale if self.softmax_scale is not None else q.shape[-1] ** -0.5
        q, k, v = autocast_inputs(q, k, v)  # module docstring: attention is a matmul under autocast
        backend = self.resolve_backend(q)
        if backend == "sdpa":
            return _sdpa(q, k, v, cu_seqlens, scale)
        if backend == "flex":
            return _flex(q, k, v, cu_seqlens, scale)
        one_doc = cu_seqlens.numel() == 2
        if backend == "cudnn" or (backend == "varlen" and self.backend == "auto" and one_doc
                                  and _CUDNN_MIN_TOKENS <= q.shape[0] <= _CUDNN_MAX_TOKENS
                                  and _has_cudnn_attention()):
            if one_doc:
                return _cudnn(q, k, v, scale, strict=backend == "cudnn")
            backend = "varlen"
        if backend == "varlen":
            return _varlen(q, k, v, cu_seqlens, max_seqlen, scale)
        return _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale)


def _sdpa(q, k, v, cu_seqlens, scale):
    T, Hq, _ = q.shape
    groups = Hq // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    bounds = cu_seqlens.tolist()
    num_docs = len(bounds) - 1
    if num_docs <= _SDPA_LOOP_MAX_DOCS or T >= _SDPA_LOOP_MIN_AVG_LEN * num_docs:
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            if e == s:
                continue
            qd, kd, vd = (t[s:e].transpose(0, 1) for t in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale).transpose(0, 1))
        return torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)
    mask = document_causal_mask(cu_seqlens, T)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


@lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, cu_seqlens, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T, Hq, _ = q.shape
    groups = Hq // k.shape[1]
    doc = _doc_ids(cu_seqlens, T)

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                         block_mask=block_mask, scale=scale, enable_gqa=groups > 1)
    return out[0].transpose(0, 1)


def _varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    from xt.models.common.flash_varlen import flash_varlen
    if not q.is_cuda:
        raise ValueError("attention backend 'varlen' runs flash attention kernels: CUDA tensors only")
    return flash_varlen(q, k, v, cu_seqlens, max_seqlen, scale)


def _cudnn(q, k, v, scale, strict: bool):
    """One causal document ``q[T, H, D]``, ``k/v[T, G, D]`` on SDPA's cuDNN backend -> ``[T, H, D]``;
    not `strict` (``"auto"``): SDPA's flash backend where cuDNN rejects the inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if not q.is_cuda:
        raise ValueError("attention backend 'cudnn' runs cuDNN kernels: CUDA tensors only")
    allowed = [SDPBackend.CUDNN_ATTENTION] if strict else [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
    with sdpa_kernel(allowed, set_priority=True):
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                             is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)


def _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale):
    if not _has_flash_attn():
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package")
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, int(max_seqlen), int(max_seqlen),
                                  softmax_scale=scale, causal=True)
